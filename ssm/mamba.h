// The Mamba-1 block (SPECS section 2) and its ablations as one mixer class:
//
//   x, z   = split(in_proj(u))                          (B, L, d_inner) each
//   x      = silu(causal_conv1d(x))
//   dt, B, C = split(x_proj(x))                         (R, N, N)
//   delta  = dt @ dt_proj.weight^T                      (bias = the scan's delta_bias)
//   y      = selective_scan(x, delta, -exp(A_log), B, C, D, z, dt_proj.bias, softplus)
//   out    = out_proj(y)
//
// Variants (MambaOptions):
//  - gated = false: no z branch (in_proj produces x only): the "S6" layer of the paper's
//    ablations, the selective SSM alone.
//  - selective = false: the "Mamba block with S4 inside" of the paper's Table 1: delta,
//    B and C no longer depend on the input (delta = a learned per-channel dt_bias only;
//    B, C learned (N) vectors), i.e. a diagonal LTI SSM (S4D-Real init) inside the Mamba block.
// Parameter names follow the reference implementation (in_proj.weight, conv1d.weight,
// conv1d.bias, x_proj.weight, dt_proj.weight, dt_proj.bias, A_log, D, out_proj.weight).
#pragma once

#include <memory>

#include "core/random.h"
#include "nn/linear.h"
#include "nn/mixer.h"
#include "ssm/mixer_registry.h"

namespace ssmtrain {

// The registered mixers mamba, s6 and mamba_lti share these options; dt_rank is their config
// key (model.dt_rank), the sizes come from the model and gated / selective from the name.
struct MambaOptions {
  int64_t d_model = 0;
  int64_t d_state = 16;  // N
  int64_t d_conv = 4;
  int64_t expand = 2;
  int64_t dt_rank = 0;   // 0: ceil(d_model / 16)
  double dt_min = 1e-3, dt_max = 1e-1, dt_init_floor = 1e-4;
  bool gated = true;
  bool selective = true;

  template <class V>
  void visit(V& v) {
    v.field("dt_rank", dt_rank, "rank R of the Mamba-1 dt projection; 0 = ceil(d_model / 16)", ge(0));
  }
  bool operator==(const MambaOptions&) const = default;
};

// The registration of mamba, s6 and mamba_lti (ssm/mixer_registry.h).
MixerEntry mamba_mixer_entry();

// The depthwise conv's parameters as a child module "conv1d": weight (C, K), bias (C).
class Conv1dParams : public Module {
 public:
  Conv1dParams(int64_t channels, int64_t kernel, Generator& gen);
  Tensor weight, bias;
};

// dt_proj.bias init shared by Mamba-1 and Mamba-2: inverse softplus of
// dt = exp(U(log dt_min, log dt_max)) clamped >= floor.
void init_dt_bias(const Tensor& bias, Generator& gen, double dt_min, double dt_max, double floor);

class Mamba : public Mixer {
 public:
  Mamba(const MambaOptions& options, Generator& gen);

  Tensor forward(const Tensor& x) override;  // (B, L, D) -> (B, L, D)
  // Packed documents: the conv window and the scan state restart where seq_idx (B, L) changes.
  bool supports_seq_idx() const override { return true; }
  Tensor forward(const Tensor& x, const Tensor& seq_idx) override;

  bool supports_step() const override { return true; }
  std::unique_ptr<MixerState> init_state(int64_t batch, Device device, DType dtype) override;
  Tensor step(const Tensor& x_t, MixerState& state) override;  // (B, D) -> (B, D)

  const MambaOptions& options() const { return opt_; }
  int64_t d_inner() const { return d_inner_; }
  int64_t dt_rank() const { return dt_rank_; }  // options().dt_rank, or its default

 private:
  // The scan's inputs from the conv output xc (B, L, d_inner); z and seq_idx may be undefined.
  Tensor ssm(const Tensor& xc, const Tensor& z, const Tensor& h0, Tensor* h_last, const Tensor& seq_idx = Tensor());

  MambaOptions opt_;
  int64_t d_inner_, dt_rank_;
  std::shared_ptr<Linear> in_proj_, x_proj_, dt_proj_, out_proj_;
  std::shared_ptr<Conv1dParams> conv_;
  Tensor A_log_, D_;
  Tensor dt_bias_;        // (d_inner): dt_proj.bias, or its own parameter when !selective
  Tensor B_lti_, C_lti_;  // (N) each, only when !selective
};

}  // namespace ssmtrain
