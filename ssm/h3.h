// The H3 layer (Fu et al. 2023, "Hungry Hungry Hippos"; SPECS section 10): two SSMs and two
// multiplicative interactions between three projections of the input, a linear attention
// whose "keys x values" memory is kept by a diagonal SSM.
//
//   q, k, v = split(in_proj(u))                          (B, L, D) each, D = H * P
//   k       = shift_conv(k)                              the shift SSM: a learned causal filter
//                                                         of shift_width taps per channel
//   S       = k (x) v   per head: S[h, i, j] = k[h, i] v[h, j]       (B, L, H, P, P)
//   S       = fft_conv(S, K_h) + Dskip_h * S             the diagonal SSM (S4D kernel K_h of
//                                                         head h, shared by its P x P entries)
//   y[h, j] = sum_i q[h, i] S[h, i, j]                   (B, L, H, P)
//   out     = out_proj(y)
//
// With head_dim P = 1 (the default, the paper's main configuration) there are H = D heads
// and the middle is y = q * (K * (shift(k) * v) + Dskip * shift(k) * v), elementwise.
//
// The shift SSM of the paper has A = shift matrix and B = e_1, so its convolution kernel is
// C itself: a length-N FIR filter. It is kept per channel here (the paper shares one per head;
// with P = 1 the two are the same) and runs on the depthwise causal_conv1d op when
// shift_width <= 4 (the width its CUDA kernel takes), else by fft_conv of the filter padded
// to L. The diagonal SSM reuses the S4D machinery: s4d_vandermonde_kernel for K and
// fft_conv (Eigen FFT / cuFFT) for the long convolution; the init of its modes is
// s4_init_modes (S4D-Lin by default, as H3's reference code).
//
// Generation runs the same layer as a recurrence (step()): a window of the last W keys for
// the shift SSM and the diagonal SSM's state per memory entry.
//
// Every step is an existing differentiable op with CPU and CUDA kernels, so the layer needs no
// kernel of its own. The SSM part runs in the parameters' dtype (f32 master weights, f64 in
// gradient checks), like S4; the projections in the input's.
//
// Parameters (names relative to the mixer; "ssm" = param_tag::ssm: own lr, no weight decay):
//   in_proj.weight (3D, D), in_proj.bias (3D)       rows [q, k, v]
//   shift_weight   (D, W)                           W = shift_width; tap W-1 is the current step
//   log_dt         (H)         ssm
//   log_A_real     (H, N2)     ssm   Re A = -exp(log_A_real)
//   A_imag         (H, N2)     ssm
//   B, C           (H, N2, 2)  ssm (B), plain (C)   N2 = d_state / 2 complex modes
//   D              (H)         no_decay
//   out_proj.weight (D, D), out_proj.bias (D)
#pragma once

#include <memory>
#include <string>

#include "core/random.h"
#include "nn/linear.h"
#include "nn/mixer.h"
#include "ssm/kernels/s4_kernel.h"
#include "ssm/mixer_registry.h"

namespace ssmtrain {

// The options of the registered mixer h3: keys in the section model.h3; d_model and d_state
// (the diagonal SSM's state size N) come from the model.
struct H3Options {
  int64_t d_model = 0;
  int64_t d_state = 64;
  int64_t head_dim = 1;     // P
  int64_t shift_width = 4;  // W: taps of the shift SSM
  std::string init = "lin";
  std::string discretization = "zoh";
  double dt_min = 1e-3, dt_max = 1e-1;

  template <class V>
  void visit(V& v) {
    v.field("head_dim", head_dim,
            "h3: head dimension P (heads = d_model / P); each head keeps a P x P memory of k v^T; 1 = the "
            "paper's elementwise form",
            ge(1));
    v.field("shift_width", shift_width,
            "h3: taps of the shift SSM (a learned causal filter on k); <= 4 runs the depthwise causal conv, "
            "longer ones an FFT convolution",
            ge(1));
    v.field("init", init, "h3: init of the diagonal SSM's modes (S4D-Lin, S4D-Inv, S4D-Real or LegS)",
            one_of({"lin", "inv", "real", "legs"}));
    v.field("discretization", discretization, "h3: discretization of the diagonal SSM", one_of({"zoh", "bilinear"}));
    v.field("dt_min", dt_min, "h3: log dt of the diagonal SSM is initialised uniform in [log dt_min, log dt_max]",
            gt(0));
    v.field("dt_max", dt_max, "h3: upper end of the dt init range", gt(0));
  }
  // head_dim divides d_model; dt_min <= dt_max; d_state even.
  void validate(const MixerContext& context) const;
  bool operator==(const H3Options&) const = default;
};

// The registration of h3 (ssm/mixer_registry.h).
MixerEntry h3_mixer_entry();

class H3 : public Mixer {
 public:
  H3(const H3Options& options, Generator& gen);

  Tensor forward(const Tensor& x) override;  // (B, L, D) -> (B, L, D)

  // Generation: the shift SSM keeps its last shift_width inputs, the diagonal SSM the
  // complex state (B, H, P * P, N2) of every memory entry, h <- Abar h + Bbar (k v^T)_t,
  // read as 2 Re(C h) (the recurrence whose impulse response is the convolution kernel).
  bool supports_step() const override { return true; }
  std::unique_ptr<MixerState> init_state(int64_t batch, Device device, DType dtype) override;
  Tensor step(const Tensor& x_t, MixerState& state) override;  // (B, D) -> (B, D)

  // The diagonal SSM's kernel for length L: (H, L) in the parameters' dtype (differentiable).
  Tensor ssm_kernel(int64_t L);
  // The shift SSM alone: k (B, L, D) -> (B, L, D), in k's dtype.
  Tensor shift(const Tensor& k);

  const H3Options& options() const { return opt_; }
  int64_t heads() const { return H_; }

 private:
  H3Options opt_;
  S4Discretization disc_;
  int64_t D_model_, H_, P_, N2_;
  std::shared_ptr<Linear> in_proj_, out_proj_;
  Tensor shift_weight_, log_dt_, log_A_real_, A_imag_, B_, C_, D_;
  Tensor reversed_taps_;  // (W) i64: W-1 .. 0, the index of the FFT shift path's taps
};

}  // namespace ssmtrain
