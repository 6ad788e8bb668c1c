// Switch mixture-of-experts FFN (SPECS section 5), the MoE half of MoE-Mamba stacks.
//
//   p = softmax(W_r x) over E experts; top-1 expert i* per token; out = p_i* Expert_i*(x)
// Each expert is an FFN d_model -> d_ff -> d_model without bias. Capacity per expert is
// floor(capacity_factor * tokens / E); tokens beyond it (in token order) are dropped: the
// block returns 0 for them and the residual stream carries them. Capacity applies in
// training mode only: evaluation and generation route every token. Load-balancing loss
// alpha * E * sum_i f_i P_i (f_i: fraction of tokens whose argmax is i, before capacity;
// P_i: mean router probability) and the optional router z-loss (mean logsumexp(logits)^2)
// are added through Mixer::add_aux_loss.
//
// Routing needs the per-expert token lists on the host: one device-to-host copy of the
// argmax per forward. Dispatch and combine are index_select ops, so the backward reaches
// the router (through p_i*) and every expert that received tokens.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nn/linear.h"
#include "nn/lm.h"
#include "nn/mixer.h"
#include "nn/mlp.h"
#include "ssm/mixer_registry.h"

namespace ssmtrain {

// The options of the registered mixer moe: its config keys sit in the section model.moe;
// d_model comes from the model. `every` is a stacking rule (takes_layer): with k > 0, MoE
// layers replace layers k-1, 2k-1, ... of whatever model.mixer / model.layers give.
struct MoEOptions {
  int64_t d_model = 0;
  int64_t every = 0;  // with k > 0, layers k-1, 2k-1, ... are MoE layers
  int64_t num_experts = 8;
  int64_t d_ff = 0;  // 0: 3 * d_model
  double capacity_factor = 1.0;
  std::string activation = "gelu";  // relu | gelu
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.0;

  template <class V>
  void visit(V& v) {
    v.field("every", every,
            "with k > 0, layers k-1, 2k-1, ... are Switch-MoE blocks (MoE-Mamba alternates with k = 2); "
            "0 = no MoE layers",
            ge(0));
    v.field("experts", num_experts, "experts per MoE layer (E)", ge(1));
    v.field("capacity_factor", capacity_factor,
            "expert capacity = floor(capacity_factor * tokens / E); tokens over it are dropped (training only)", gt(0));
    v.field("d_ff", d_ff, "hidden width of each expert FFN; 0 = 3 * d_model", ge(0));
    v.field("activation", activation, "activation of the expert FFNs", one_of({"relu", "gelu"}));
    v.field("aux_loss_coef", aux_loss_coef, "weight alpha of the load-balancing loss alpha * E * sum_i f_i P_i", ge(0));
    v.field("z_loss_coef", z_loss_coef, "weight of the router z-loss mean(logsumexp(logits)^2); 0 = off", ge(0));
  }
  void validate(const MixerContext& context) const;  // every <= n_layer
  // The registry's hooks (ssm/mixer_registry.h): layer i is a MoE layer when moe.every
  // divides i + 1; a token goes to one of num_experts experts.
  bool takes_layer(int64_t layer) const { return every > 0 && (layer + 1) % every == 0; }
  std::pair<int, int> expert_routing() const { return {1, static_cast<int>(num_experts)}; }
  bool operator==(const MoEOptions&) const = default;
};

// The registration of moe (ssm/mixer_registry.h).
MixerEntry moe_mixer_entry();

struct ExpertUsage {
  std::vector<int64_t> tokens_routed;  // per expert, before capacity
  int64_t tokens = 0;
  int64_t dropped = 0;
  double aux_loss = 0;  // value of the last load-balancing loss (without its coefficient)
};

class SwitchMoE : public Mixer {
 public:
  SwitchMoE(const MoEOptions& options, Generator& gen);

  Tensor forward(const Tensor& x) override;  // (B, L, D) -> (B, L, D)
  // Packed documents: each token is routed alone, so documents never meet and seq_idx is
  // not read (the capacity is shared by the batch's tokens whether packed or not).
  bool supports_seq_idx() const override { return true; }
  Tensor forward(const Tensor& x, const Tensor& seq_idx) override { return forward(x); }

  // Position-wise, so the step is the forward on one position.
  bool supports_step() const override { return true; }
  std::unique_ptr<MixerState> init_state(int64_t batch, Device device, DType dtype) override;
  Tensor step(const Tensor& x_t, MixerState& state) override;

  const ExpertUsage& last_usage() const { return usage_; }
  const MoEOptions& options() const { return opt_; }

 private:
  MoEOptions opt_;
  Activation act_;
  std::shared_ptr<Linear> router_;
  std::vector<std::shared_ptr<Linear>> fc1_, fc2_;
  ExpertUsage usage_;
};

// Usage statistics of every MoE layer of a model (empty when it has none).
std::vector<std::pair<std::string, ExpertUsage>> moe_usage(LanguageModel& model);

// The usage of the last forward in two numbers (the trainer's metrics): the share of tokens
// dropped at capacity (mean over MoE layers) and the busiest expert's load over the mean
// load (max over layers; 1 = perfectly balanced). Empty without MoE layers.
struct MoeSummary {
  double dropped = 0;
  double max_load = 0;
};
std::optional<MoeSummary> moe_summary(LanguageModel& model);

}  // namespace ssmtrain
