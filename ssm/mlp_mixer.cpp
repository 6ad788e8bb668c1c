#include "ssm/mlp_mixer.h"

#include <algorithm>
#include <cmath>

namespace ssmtrain {

int64_t mlp_hidden(const MLPMixerOptions& options, int64_t d_model) {
  const int64_t h = std::max<int64_t>(1, std::llround(options.mlp_ratio * static_cast<double>(d_model)));
  const int64_t m = std::max<int64_t>(1, options.mlp_multiple_of);
  return (h + m - 1) / m * m;
}

void MLPMixerOptions::validate(const MixerContext& c) const {
  SSMT_CHECK(mlp_every <= c.n_layer, c.key("mlp_every"), " is ", mlp_every, " but model.n_layer is only ", c.n_layer,
             ": no layer would be an mlp layer (0 turns the rule off)");
}

MixerEntry mlp_mixer_entry() {
  auto build = [](const MLPMixerOptions& o, const MixerContext& c, Generator& gen) -> std::shared_ptr<Mixer> {
    return std::make_shared<MLPMixer>(c.d_model, mlp_hidden(o, c.d_model), gen, /*gated=*/true);
  };
  return mixer_entry<MLPMixerOptions>({{"mlp", "gated MLP (SwiGLU)"}}, build);
}

}  // namespace ssmtrain
