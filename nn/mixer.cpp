// Mixer defaults and the MLP mixer.
#include "nn/mixer.h"

#include "core/ops.h"

namespace ssmtrain {

std::unique_ptr<MixerState> Mixer::init_state(int64_t, Device, DType) {
  throw UserError(detail::concat("mixer '", path(), "' has no step mode for generation"));
}

Tensor Mixer::step(const Tensor&, MixerState&) {
  throw UserError(detail::concat("mixer '", path(), "' has no step mode for generation"));
}

Tensor Mixer::forward(const Tensor& x, const Tensor& seq_idx) {
  SSMT_CHECK(!seq_idx.defined(), "mixer '", path(), "' cannot restart its state where a document begins, so it "
             "cannot take packed documents (seq_idx ", seq_idx.describe(), ")");
  return forward(x);
}

void Mixer::add_aux_loss(const Tensor& loss) {
  SSMT_CHECK(loss.defined() && loss.numel() == 1, "mixer '", path(), "': an auxiliary loss must be a scalar, got ",
             loss.describe());
  Tensor scalar = loss.dim() == 0 ? loss : loss.reshape({});
  aux_loss_ = aux_loss_.defined() ? add(aux_loss_, scalar) : scalar;
}

Tensor Mixer::take_aux_loss() {
  Tensor out = aux_loss_;
  aux_loss_ = Tensor();
  return out;
}

MLPMixer::MLPMixer(int64_t d_model, int64_t hidden, Generator& gen, bool gated) {
  if (gated)
    gated_ = register_module("mlp", std::make_shared<GatedMLP>(d_model, hidden, gen));
  else
    mlp_ = register_module("mlp", std::make_shared<MLP>(d_model, hidden, gen));
}

Tensor MLPMixer::forward(const Tensor& x) {
  SSMT_CHECK(x.dim() == 3, "MLPMixer '", path(), "': input ", x.describe(), " must be (B, L, D)");
  return gated_ ? gated_->forward(x) : mlp_->forward(x);
}

// A position-wise layer carries nothing from one step to the next.
std::unique_ptr<MixerState> MLPMixer::init_state(int64_t, Device, DType) { return std::make_unique<MixerState>(); }

Tensor MLPMixer::step(const Tensor& x_t, MixerState&) {
  SSMT_CHECK(x_t.dim() == 2, "MLPMixer '", path(), "': step input ", x_t.describe(), " must be (B, D)");
  return gated_ ? gated_->forward(x_t) : mlp_->forward(x_t);
}

}  // namespace ssmtrain
