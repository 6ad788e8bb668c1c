// The gated MLP mixer of nn/mixer.h (MLPMixer) as a registered mixer, "mlp": the MLP half of
// hybrid stacks. Its one config key is model.mlp_ratio.
#pragma once

#include "ssm/mixer_registry.h"

namespace ssmtrain {

struct MLPMixerOptions {
  double mlp_ratio = 4.0;

  template <class V>
  void visit(V& v) {
    v.field("mlp_ratio", mlp_ratio, "mlp mixer: hidden width = round(mlp_ratio * d_model)", gt(0));
  }
  bool operator==(const MLPMixerOptions&) const = default;
};

// max(1, round(mlp_ratio * d_model)).
int64_t mlp_hidden(const MLPMixerOptions& options, int64_t d_model);

// The registration of mlp (ssm/mixer_registry.h).
MixerEntry mlp_mixer_entry();

}  // namespace ssmtrain
