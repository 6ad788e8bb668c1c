// The gated MLP mixer of nn/mixer.h (MLPMixer, SwiGLU: fc2(value * silu(gate))) as a
// registered mixer, "mlp": the MLP half of hybrid stacks and of Transformer++ blocks. Its
// config keys sit directly under model: mlp_ratio and mlp_multiple_of size the hidden
// width; mlp_every is a stacking rule (takes_layer) that interleaves MLP layers with
// whatever model.mixer / model.layers give. Transformer++ (SPECS section 10) is
// `mixer: attention, mlp_every: 2, mlp_ratio: 2.6667, mlp_multiple_of: 64` with n_layer
// twice its block count: attention, mlp, attention, mlp, ...
#pragma once

#include "ssm/mixer_registry.h"

namespace ssmtrain {

struct MLPMixerOptions {
  double mlp_ratio = 4.0;
  int64_t mlp_multiple_of = 1;
  int64_t mlp_every = 0;  // with k > 0, layers k-1, 2k-1, ... are mlp layers

  template <class V>
  void visit(V& v) {
    v.field("mlp_ratio", mlp_ratio,
            "mlp mixer: hidden width = round(mlp_ratio * d_model), rounded up to a multiple of mlp_multiple_of", gt(0));
    v.field("mlp_multiple_of", mlp_multiple_of,
            "mlp mixer: the hidden width is rounded up to a multiple of this (Transformer++: 64 with mlp_ratio 8/3)",
            ge(1));
    v.field("mlp_every", mlp_every,
            "with k > 0, layers k-1, 2k-1, ... are mlp layers (Transformer++: mixer attention with k = 2); "
            "0 = none beyond model.mixer / model.layers",
            ge(0));
  }
  void validate(const MixerContext& context) const;  // mlp_every <= n_layer
  // The registry's stacking hook (ssm/mixer_registry.h): layer i is an mlp layer when
  // mlp_every divides i + 1. A later registration's rule (moe.every) wins where both apply.
  bool takes_layer(int64_t layer) const { return mlp_every > 0 && (layer + 1) % mlp_every == 0; }
  bool operator==(const MLPMixerOptions&) const = default;
};

// round(mlp_ratio * d_model) rounded up to a multiple of mlp_multiple_of, at least 1.
int64_t mlp_hidden(const MLPMixerOptions& options, int64_t d_model);

// The registration of mlp (ssm/mixer_registry.h).
MixerEntry mlp_mixer_entry();

}  // namespace ssmtrain
