#include "ssm/mlp_mixer.h"

#include <algorithm>
#include <cmath>

namespace ssmtrain {

int64_t mlp_hidden(const MLPMixerOptions& options, int64_t d_model) {
  return std::max<int64_t>(1, std::llround(options.mlp_ratio * static_cast<double>(d_model)));
}

MixerEntry mlp_mixer_entry() {
  auto build = [](const MLPMixerOptions& o, const MixerContext& c, Generator& gen) -> std::shared_ptr<Mixer> {
    return std::make_shared<MLPMixer>(c.d_model, mlp_hidden(o, c.d_model), gen, /*gated=*/true);
  };
  return mixer_entry<MLPMixerOptions>({{"mlp", "gated MLP"}}, build);
}

}  // namespace ssmtrain
