// The S4 block (SPECS section 4): a linear time-invariant SSM per channel, run as a long
// convolution for training and as a recurrence for generation, followed by the position-wise
// output stage of the S4 paper:
//
//   K      = kernel(log_dt, A, B, [P,] C)          (H, L)  Vandermonde (diag) or Cauchy (dplr)
//   y      = fft_conv(x, K) + D * x                (B, L, H)
//   y      = dropout(gelu(y))
//   out    = GLU(output_linear(y))                 Linear(H -> 2H), a * sigmoid(b)
//
// One class serves S4 (kernel "dplr": A = Lambda - P P^*, bilinear discretization) and S4D
// (kernel "diag": A = Lambda, ZOH or bilinear). Each channel has N2 = d_state / 2 complex
// modes, one of each conjugate pair; complex parameters are real tensors (.., 2) = (re, im).
//
// Parameters (names relative to the mixer; "ssm" = tagged param_tag::ssm: own lr, no weight
// decay, SPECS 4):
//   log_dt      (H)          ssm   dt = exp(log_dt), init U(log dt_min, log dt_max)
//   log_A_real  (H, N2)      ssm   Re A = -exp(log_A_real)
//   A_imag      (H, N2)      ssm   Im A
//   B           (H, N2, 2)   ssm
//   P           (H, N2, 2)   ssm   dplr only: the low-rank term
//   C           (H, N2, 2)         dplr: stores Ct = C (I - Abar^Lk) for the kernel length Lk
//   D           (H)                skip (no decay: rank 1)
//   output_linear.weight (2H, H), output_linear.bias (2H)
//
// Inits (SPECS 4): legs (HiPPO-LegS; dplr keeps the rank-one term, diag gives S4D-LegS),
// lin, inv, real (S4D; with the dplr kernel they start with P = 0, which then stays 0 since
// the kernel is quadratic in P).
//
// DPLR kernel length: the Ct parametrisation belongs to one kernel length Lk (options.l_max,
// or the first forward's L when 0). Shorter inputs use the first L taps of the length-Lk
// kernel; a longer input doubles Lk (Ct <- Ct (I + Abar^Lk), exact, under no-grad) until it
// fits. Lk is layer state outside the checkpointed tensors: set l_max for runs that resume.
//
// Generation: init_state() snapshots the discretised system (f64 on the host, then the
// compute dtype on the layer's device); step() advances h <- Abar h + Bbar x_t and reads
// y = C h (S4D: diagonal Abar and 2 Re over the kept modes; S4: the dense N x N Abar of the
// full conjugate-symmetric state and C = Ct (I - Abar^Lk)^{-1}).
#pragma once

#include <complex>
#include <memory>
#include <string>
#include <vector>

#include "core/random.h"
#include "nn/dropout.h"
#include "nn/linear.h"
#include "nn/mixer.h"
#include "ssm/kernels/s4_kernel.h"
#include "ssm/mixer_registry.h"

namespace ssmtrain {

// The options of the registered mixers s4 and s4d: their config keys sit in the section
// model.s4; d_model and d_state come from the model, and s4d always uses the diag kernel.
struct S4Options {
  int64_t d_model = 0;                      // H
  int64_t d_state = 64;                     // N (even): N / 2 complex modes per channel
  std::string kernel = "dplr";              // dplr | diag
  std::string init = "legs";                // legs | lin | inv | real
  std::string discretization = "bilinear";  // zoh | bilinear (dplr requires bilinear)
  double lr = 1e-3;                         // learning rate of the ssm-tagged parameters (ssm_lr())
  double dt_min = 1e-3, dt_max = 1e-1;
  double dropout = 0.0;
  int64_t l_max = 0;  // dplr kernel length Lk; 0 = the first forward's L

  template <class V>
  void visit(V& v) {
    v.field("kernel", kernel,
            "convolution kernel of the s4 mixer: dplr (Cauchy kernel + Woodbury) or diag (Vandermonde); "
            "s4d is always diag",
            one_of({"dplr", "diag"}));
    v.field("init", init, "state matrix init: HiPPO-LegS, or S4D-Lin / S4D-Inv / S4D-Real",
            one_of({"legs", "lin", "inv", "real"}));
    v.field("discretization", discretization, "zero-order hold or bilinear", one_of({"zoh", "bilinear"}));
    v.field("lr", lr,
            "learning rate of the SSM parameters of s4/s4d layers (A, B, log dt), without weight decay; "
            "0 = optim.lr; optim.ssm_lr overrides it when set",
            ge(0));
    v.field("dt_min", dt_min, "log dt is initialised uniform in [log dt_min, log dt_max]", gt(0));
    v.field("dt_max", dt_max, "upper end of the dt init range", gt(0));
    v.field("l_max", l_max,
            "dplr kernel: the length Lk its C is parametrised for (longer inputs extend it exactly); "
            "0 = train.seq_len",
            ge(0));
  }
  void validate(const MixerContext& context) const;  // dt_min <= dt_max
  // The registry's hook (ssm/mixer_registry.h): s4.lr for the ssm-tagged parameters.
  double ssm_lr() const { return lr; }
  bool operator==(const S4Options&) const = default;
};

// The registration of s4 and s4d (ssm/mixer_registry.h).
MixerEntry s4_mixer_entry();

// The initial modes of one channel (N2 = N / 2 of them): Lambda, P (zero unless legs) and B.
struct S4InitModes {
  std::vector<std::complex<double>> Lambda, P, B;
};
// legs: the HiPPO-LegS matrix in DPLR form. Its normal part A + P P^T = -1/2 I + S (S skew)
// is diagonalised once in f64 as a complex Hermitian eigenproblem of -i S; the modes with
// positive imaginary part are kept, with P~ = V^* P and B~ = V^* B.
// lin / inv / real: S4D-Lin, S4D-Inv, S4D-Real with B = 1, P = 0.
S4InitModes s4_init_modes(const std::string& init, int64_t N);

// The diagonal parameters' initial values for H channels with the same `modes` each, shared
// by S4/S4D and H3: log_dt ~ U(log dt_min, log dt_max) per channel (H draws from `gen`,
// before anything else), then per (channel, mode) log(-Re Lambda), Im Lambda, and B and P as
// (re, im) pairs, laid out (H, N2[, 2]).
struct S4DiagInit {
  std::vector<float> log_dt, log_A_real, A_imag, B, P;
};
S4DiagInit s4_diag_init(const S4InitModes& modes, int64_t H, double dt_min, double dt_max, Generator& gen);
// A = -exp(log_A_real) + i A_imag as (..., N2, 2) (re, im) pairs.
Tensor s4_diag_A(const Tensor& log_A_real, const Tensor& A_imag);

class S4 : public Mixer {
 public:
  S4(const S4Options& options, Generator& gen);

  Tensor forward(const Tensor& x) override;  // (B, L, H) -> (B, L, H)
  // Packed documents are refused (Mixer's default): the convolution over the whole row
  // cannot restart at a document boundary.
  using Mixer::forward;

  bool supports_step() const override { return true; }
  std::unique_ptr<MixerState> init_state(int64_t batch, Device device, DType dtype) override;
  Tensor step(const Tensor& x_t, MixerState& state) override;  // (B, H) -> (B, H)

  // The SSM convolution kernel for length L (H, L), in the parameters' dtype (differentiable).
  Tensor kernel(int64_t L);

  const S4Options& options() const { return opt_; }
  bool is_dplr() const { return dplr_; }
  int64_t kernel_length() const { return kernel_len_; }  // dplr: Lk (0 until the first forward)

 private:
  Tensor A_complex() const;  // (H, N2, 2)
  // dplr: make Lk >= L (first use or doubling).
  void ensure_kernel_length(int64_t L);
  // The position-wise tail: (.., H) SSM output + skip -> (.., H).
  Tensor output_stage(const Tensor& y, DType out_dtype);

  S4Options opt_;
  bool dplr_;
  S4Discretization disc_;
  int64_t H_, N2_;
  int64_t kernel_len_ = 0;
  Tensor log_dt_, log_A_real_, A_imag_, B_, P_, C_, D_;
  std::shared_ptr<Linear> output_linear_;
  std::shared_ptr<Dropout> dropout_;
};

}  // namespace ssmtrain
