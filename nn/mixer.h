// The Mixer interface: the sequence layer inside each block of the language model.
//
// SSM layers (ssm/: S4, S6, Mamba, Mamba-2, MoE) and the MLP mixer below implement it, and
// the LM wrapper (nn/lm.h) builds one per layer through a MixerFactory. A mixer maps
// (B, L, D) to (B, L, D); it may also
//  - run one step at a time for generation (init_state / step), which must give the same
//    output as the full-sequence forward;
//  - contribute an auxiliary loss (MoE load balancing) through add_aux_loss() during its
//    forward; the LM collects and sums these after each forward;
//  - take packed documents (SPECS section 12): forward(x, seq_idx) with seq_idx (B, L) i32,
//    the document of every position (non-decreasing along L), restarts the mixer's state
//    (conv window, SSM state) from zero wherever seq_idx changes, as if each document were a
//    row of its own. Mixers that can say so (supports_seq_idx); position-wise ones (MLP,
//    MoE) carry nothing along L and ignore it; the others refuse it.
#pragma once

#include <functional>
#include <memory>

#include "nn/mlp.h"
#include "nn/module.h"

namespace ssmtrain {

// Per-layer generation state (conv window, SSM state, ...); mixers subclass it.
struct MixerState {
  virtual ~MixerState() = default;
};

class Mixer : public Module {
 public:
  // x (B, L, D) -> (B, L, D)
  virtual Tensor forward(const Tensor& x) = 0;

  // ---- packed documents ----
  virtual bool supports_seq_idx() const { return false; }
  // x (B, L, D), seq_idx (B, L) i32 on x's device or undefined -> (B, L, D). Undefined
  // seq_idx is forward(x) exactly. The default is that, and a UserError naming the layer
  // for a defined seq_idx; mixers that support it override both.
  virtual Tensor forward(const Tensor& x, const Tensor& seq_idx);

  // ---- step API for generation ----
  virtual bool supports_step() const { return false; }
  virtual std::unique_ptr<MixerState> init_state(int64_t batch, Device device, DType dtype);
  // x_t (B, D) -> y_t (B, D), advancing `state`.
  virtual Tensor step(const Tensor& x_t, MixerState& state);

  // The auxiliary losses added since the last call, summed (undefined when none); clears them.
  Tensor take_aux_loss();

 protected:
  // Call during forward with a scalar f32 loss that should be added to the training loss.
  void add_aux_loss(const Tensor& loss);

 private:
  Tensor aux_loss_;
};

using MixerFactory = std::function<std::shared_ptr<Mixer>(int layer_index)>;

// A position-wise MLP or GatedMLP as a mixer: the stand-in used by tests until SSM layers
// exist, and the MLP half of hybrid stacks. Its projections are "mlp.fc1" / "mlp.fc2".
class MLPMixer : public Mixer {
 public:
  MLPMixer(int64_t d_model, int64_t hidden, Generator& gen, bool gated = true);
  Tensor forward(const Tensor& x) override;
  // Position-wise: documents never meet, seq_idx is not read.
  bool supports_seq_idx() const override { return true; }
  Tensor forward(const Tensor& x, const Tensor& seq_idx) override { return forward(x); }
  bool supports_step() const override { return true; }
  std::unique_ptr<MixerState> init_state(int64_t batch, Device device, DType dtype) override;
  Tensor step(const Tensor& x_t, MixerState& state) override;

 private:
  std::shared_ptr<MLP> mlp_;
  std::shared_ptr<GatedMLP> gated_;
};

}  // namespace ssmtrain
