// The Hyena operator (Poli et al. 2023, "Hyena Hierarchy"; SPECS section 10) of order N:
// long convolutions with implicitly parametrised filters, interleaved with data-controlled
// (elementwise) gating.
//
//   x_1 .. x_N, v = split(in_proj(u))                      N + 1 streams, (B, L, D) each
//   every stream  = short_conv(stream)                     depthwise causal, width short_width
//   h_n(t)        = window_n(t) * FFN(pos(t))              implicit filters, n = 1..N, (D, L) each
//   z_0 = v;  z_n = x_n * (h_n * z_{n-1} + bias_n * z_{n-1})    (* = causal convolution, by FFT)
//   out           = out_proj(z_N)
//
// The implicit filter (the reference's HyenaFilter):
//   pos(t)    = [t / (Lr - 1), cos(f_k w_t), -sin(f_k w_t)]   k < (E - 1) / 2 bands,
//               w_t = 2 pi t / Lr, f_k = linspace(1e-4, bands - 1), E = filter_emb_dim
//   FFN       = Linear(E, F) -> Sin -> [Linear(F, F) -> Sin] x filter_layers -> Linear(F, N D, no bias)
//               Sin(x) = sin(freq * x) with a learned frequency per unit, init filter_sine_freq
//   window(t) = exp(-alpha_c t / (Lr - 1)) + window_shift, alpha_c spread linearly over the N D
//               channels from |ln decay_target| / slow_decay_pct to |ln decay_target| / fast_decay_pct
// Lr is the filter's reference length (options.l_max, else train.seq_len, else the input's
// L): positions past it extend the same formulas, so any L works. pos and window are
// constants, built once per (L, device, dtype) on the host and cached.
//
// Every step is an existing differentiable op with CPU and CUDA kernels (linear, sin, the
// depthwise causal_conv1d, fft_conv by Eigen FFT / cuFFT, elementwise products), so the
// layer needs no kernel of its own. The filter FFN runs on (L, E) inputs, O(L F (E + F + N D))
// flops, small next to the projections. The gating and FFT convolutions run in the
// parameters' dtype (f32 master weights, f64 in gradient checks); the projections in the
// input's.
//
// Parameters (names relative to the mixer; "ssm" = param_tag::ssm: own lr (optim.ssm_lr,
// else model.s4.lr), no weight decay, as the reference trains its filters):
//   in_proj.weight ((N+1) D, D), in_proj.bias ((N+1) D)    rows [x_1, .., x_N, v]
//   short_conv.weight ((N+1) D, short_width), short_conv.bias ((N+1) D)
//   filter_fc{i}.weight, filter_fc{i}.bias       ssm   the FFN's linears, i = 0 .. filter_layers + 1
//                                                      (the last maps F -> N D and has no bias)
//   filter_freq{i}     (F)                        ssm   the Sin frequencies, i = 0 .. filter_layers
//   filter_bias        (N, D)                    ssm   bias_n: the skip term of each long conv
//   out_proj.weight (D, D), out_proj.bias (D)
#pragma once

#include <memory>
#include <vector>

#include "core/random.h"
#include "nn/linear.h"
#include "nn/mixer.h"
#include "ssm/mamba.h"
#include "ssm/mixer_registry.h"

namespace ssmtrain {

// The options of the registered mixer hyena: keys in the section model.hyena; d_model comes
// from the model, l_max from train.seq_len when 0.
struct HyenaOptions {
  int64_t d_model = 0;
  int64_t order = 2;            // N
  int64_t short_width = 3;      // taps of the short depthwise conv
  int64_t filter_emb_dim = 33;  // E (odd): t and (E - 1) / 2 cosine / sine bands
  int64_t filter_width = 64;    // F
  int64_t filter_layers = 2;    // inner Linear(F, F) + Sin layers
  double filter_sine_freq = 1.0;
  double fast_decay_pct = 0.3, slow_decay_pct = 1.5, decay_target = 1e-2;
  double window_shift = 0.0;
  int64_t l_max = 0;  // Lr; 0 = train.seq_len, else the input's length

  template <class V>
  void visit(V& v) {
    v.field("order", order, "hyena: order N (N long convolutions, N + 1 projected streams)", ge(1));
    v.field("short_width", short_width, "hyena: taps of the short depthwise causal conv on each stream (<= 4)",
            ge(1).le(4));
    v.field("filter_emb_dim", filter_emb_dim,
            "hyena: positional features of the implicit filter: t and (filter_emb_dim - 1) / 2 cosine/sine bands "
            "(odd, >= 3)",
            ge(3));
    v.field("filter_width", filter_width, "hyena: width of the implicit filter's FFN", ge(1));
    v.field("filter_layers", filter_layers, "hyena: inner Linear + Sin layers of the filter FFN", ge(0));
    v.field("filter_sine_freq", filter_sine_freq, "hyena: initial frequency of the filter FFN's sine activations",
            gt(0));
    v.field("fast_decay_pct", fast_decay_pct,
            "hyena: the fastest window decays to decay_target after this fraction of l_max", gt(0));
    v.field("slow_decay_pct", slow_decay_pct,
            "hyena: the slowest window decays to decay_target after this fraction of l_max", gt(0));
    v.field("decay_target", decay_target, "hyena: window value reached at the decay fractions above", gt(0).lt(1));
    v.field("window_shift", window_shift, "hyena: constant added to the exponential window", ge(0));
    v.field("l_max", l_max, "hyena: reference length of the filters' positions; 0 = train.seq_len", ge(0));
  }
  void validate(const MixerContext& context) const;  // filter_emb_dim odd
  bool operator==(const HyenaOptions&) const = default;
};

// The registration of hyena (ssm/mixer_registry.h).
MixerEntry hyena_mixer_entry();

// The filter's constant inputs for positions 0..L-1 at reference length Lr, as host doubles:
// pos (L, E) row-major and the window (L, C) over C channels (the formulas above).
std::vector<double> hyena_positions(int64_t L, int64_t Lr, int64_t E);
std::vector<double> hyena_window(int64_t L, int64_t Lr, int64_t C, const HyenaOptions& o);

class Hyena : public Mixer {
 public:
  Hyena(const HyenaOptions& options, Generator& gen);

  Tensor forward(const Tensor& x) override;  // (B, L, D) -> (B, L, D)

  // Generation: the short conv keeps its window (causal_conv1d_step); each long convolution
  // keeps the inputs it has seen (B, t, D) and sums them against its filter's first t taps,
  // O(t) per token (the filters are not a recurrence). Needs l_max > 0 (the filters'
  // reference length; the builder sets it from train.seq_len).
  bool supports_step() const override { return true; }
  std::unique_ptr<MixerState> init_state(int64_t batch, Device device, DType dtype) override;
  Tensor step(const Tensor& x_t, MixerState& state) override;  // (B, D) -> (B, D)

  // The implicit long filters for length L: (N D, L), rows n D .. (n+1) D - 1 = h_{n+1}, in
  // the parameters' dtype on their device (differentiable).
  Tensor filters(int64_t L);

  const HyenaOptions& options() const { return opt_; }
  const Tensor& filter_bias() const { return filter_bias_; }

 private:
  // pos (L, E) and window (L, N D) for length L, cached for the last (L, device, dtype).
  void ensure_constants(int64_t L);

  HyenaOptions opt_;
  int64_t D_, N_;
  std::shared_ptr<Linear> in_proj_, out_proj_;
  std::shared_ptr<Conv1dParams> short_conv_;
  std::vector<std::shared_ptr<Linear>> filter_linears_;
  std::vector<Tensor> filter_freqs_;
  Tensor filter_bias_;
  Tensor pos_, window_;  // cached constants (no grad)
};

}  // namespace ssmtrain
