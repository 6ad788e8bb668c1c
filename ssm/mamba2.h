// The Mamba-2 block (SPECS section 3):
//
//   z, xBC, dt = split(in_proj(u))          (d_inner, d_inner + 2 G N, H)
//   xBC       = silu(causal_conv1d(xBC))
//   x, B, C   = split(xBC)                  x -> (B, L, H, P); B, C -> (B, L, G, N)
//   y         = ssd(x, dt, -exp(A_log), B, C, D, dt_bias, softplus)   (chunked, Q = chunk_size)
//   y         = rmsnorm_grouped(y * silu(z)) * norm.weight             (eps 1e-5, G groups)
//   out       = out_proj(y)
// Inits: A_log = log(U(1, 16)) per head, dt_bias = inverse softplus of exp(U(log 1e-3,
// log 1e-1)), D = 1; A_log, D, dt_bias and the norm weight are not weight-decayed.
#pragma once

#include <memory>

#include "nn/linear.h"
#include "nn/mixer.h"
#include "ssm/mamba.h"
#include "ssm/mixer_registry.h"

namespace ssmtrain {

// The options of the registered mixer mamba2: headdim, ngroups and chunk_size are its config
// keys (model.headdim, ...); the sizes and norm_eps come from the model.
struct Mamba2Options {
  int64_t d_model = 0;
  int64_t d_state = 128;  // N
  int64_t d_conv = 4;
  int64_t expand = 2;
  int64_t headdim = 64;   // P
  int64_t ngroups = 1;    // G
  int64_t chunk_size = 256;
  double dt_min = 1e-3, dt_max = 1e-1, dt_init_floor = 1e-4;
  double norm_eps = 1e-5;

  template <class V>
  void visit(V& v) {
    v.field("headdim", headdim, "mamba2: head dimension P (heads = d_inner / headdim)", ge(1));
    v.field("ngroups", ngroups, "mamba2: groups G sharing B and C; must divide the number of heads", ge(1));
    v.field("chunk_size", chunk_size, "mamba2: SSD chunk length Q", ge(1));
  }
  // The head geometry against the model's d_inner, when a layer is a mamba2 layer.
  void validate(const MixerContext& context) const;
  bool operator==(const Mamba2Options&) const = default;
};

// The registration of mamba2 (ssm/mixer_registry.h).
MixerEntry mamba2_mixer_entry();

class Mamba2 : public Mixer {
 public:
  Mamba2(const Mamba2Options& options, Generator& gen);

  Tensor forward(const Tensor& x) override;  // (B, L, D) -> (B, L, D)
  // Packed documents: the conv window and the SSD state restart where seq_idx (B, L) changes.
  bool supports_seq_idx() const override { return true; }
  Tensor forward(const Tensor& x, const Tensor& seq_idx) override;

  bool supports_step() const override { return true; }
  std::unique_ptr<MixerState> init_state(int64_t batch, Device device, DType dtype) override;
  Tensor step(const Tensor& x_t, MixerState& state) override;

  int64_t d_inner() const { return d_inner_; }
  int64_t nheads() const { return nheads_; }

 private:
  // xBC (B, L, conv_dim) after the conv, z and dt (B, L, ...) -> y (B, L, d_inner) before out_proj;
  // seq_idx (B, L) or undefined.
  Tensor mix(const Tensor& xBC, const Tensor& z, const Tensor& dt, const Tensor& h0, Tensor* h_last,
             const Tensor& seq_idx = Tensor());

  Mamba2Options opt_;
  int64_t d_inner_, nheads_, conv_dim_;
  std::shared_ptr<Linear> in_proj_, out_proj_;
  std::shared_ptr<Conv1dParams> conv_;
  Tensor A_log_, D_, dt_bias_, norm_weight_;
};

}  // namespace ssmtrain
