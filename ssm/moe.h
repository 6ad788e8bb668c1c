// Switch mixture-of-experts FFN (SPECS section 5), the MoE half of MoE-Mamba stacks.
//
//   p = softmax(W_r x) over E experts; the top-k experts per token (k = 1: Switch);
//   out = sum over the token's kept experts i of g_i Expert_i(x)
// Each expert is an FFN d_model -> d_ff -> d_model without bias. The gate g_i is p_i for
// k = 1 (Switch) and p_i renormalised over the k chosen experts for k > 1 (GShard, Mixtral;
// with k = 1 that would be 1 and the router would get no gradient). Capacity per expert is
// max(1, floor(capacity_factor * k * tokens / E)) (SPECS' floor(capacity_factor * tokens / E)
// for k = 1), capped at tokens; capacity_factor 0 is dropless (capacity = tokens).
// Assignments over capacity are dropped, first choices before second ones and earlier tokens
// first (ssm/kernels/moe_routing.h): a token dropped by all its experts gets 0 from the block
// and the residual stream carries it. Capacity applies in training mode only: evaluation and
// generation route every token. Load-balancing loss alpha * E * sum_i f_i P_i (f_i: fraction
// of tokens whose first choice is i, before capacity; P_i: mean router probability) and the
// optional router z-loss (mean logsumexp(logits)^2) are added through Mixer::add_aux_loss.
//
// Everything stays on the tensors' device, with no host read inside a step: the routing,
// the capacity and the dispatch permutation (moe_route), the gather into per-expert blocks
// of `capacity` rows (moe_dispatch: an (E, capacity, D) buffer, rows beyond an expert's
// count zero), the experts as two batched GEMMs over the stacked expert weights (one
// strided-batched cuBLAS call each, forward and backward; zero rows cost work but add
// nothing), and the weighted scatter back (moe_combine). The backward reaches the router
// (through the gates and the balancing and z losses) and every expert. Dropless training uses
// blocks of `tokens` rows: E / k times the FFN work and activation memory of the routed
// tokens (a grouped GEMM that skips the empty rows by device-side counts is the missing
// piece; docs/design.md). Evaluation and generation, where a host read is allowed, size the
// blocks by the busiest expert instead: one read of the E counts per forward, then about
// the routed work.
//
// Expert usage is accumulated on the device by the training forwards (counts per expert,
// drops, assignments) and read by the host only when asked: usage() waits for it,
// moe_summary_read() queues one small asynchronous copy (the trainer does so once per log
// interval). With activation recomputation every forward runs twice and counts twice; the
// summary's ratios are unchanged.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/async_read.h"
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
  int64_t top_k = 1;  // experts per token
  int64_t d_ff = 0;   // 0: 3 * d_model
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
    v.field("top_k", top_k,
            "experts per token: 1 = Switch (gate p_i), 2 or more = the k most probable experts with their "
            "probabilities renormalised over the k as gates",
            ge(1));
    v.field("capacity_factor", capacity_factor,
            "expert capacity = floor(capacity_factor * top_k * tokens / E); assignments over it are dropped "
            "(training only; first choices before second ones, earlier tokens first); 0 = dropless (no cap)",
            ge(0));
    v.field("d_ff", d_ff, "hidden width of each expert FFN; 0 = 3 * d_model", ge(0));
    v.field("activation", activation, "activation of the expert FFNs", one_of({"relu", "gelu"}));
    v.field("aux_loss_coef", aux_loss_coef, "weight alpha of the load-balancing loss alpha * E * sum_i f_i P_i", ge(0));
    v.field("z_loss_coef", z_loss_coef, "weight of the router z-loss mean(logsumexp(logits)^2); 0 = off", ge(0));
  }
  void validate(const MixerContext& context) const;  // every <= n_layer, top_k <= experts
  // The registry's hooks (ssm/mixer_registry.h): layer i is a MoE layer when moe.every
  // divides i + 1; a token goes to top_k of num_experts experts.
  bool takes_layer(int64_t layer) const { return every > 0 && (layer + 1) % every == 0; }
  std::pair<int, int> expert_routing() const { return {static_cast<int>(top_k), static_cast<int>(num_experts)}; }
  bool operator==(const MoEOptions&) const = default;
};

// The registration of moe (ssm/mixer_registry.h).
MixerEntry moe_mixer_entry();

// A layer's usage over the training forwards since its last reset.
struct ExpertUsage {
  std::vector<int64_t> tokens_routed;  // per expert: tokens whose first choice it was (before capacity)
  int64_t tokens = 0;
  int64_t assignments = 0;  // tokens * top_k
  int64_t dropped = 0;      // assignments dropped at capacity
  double aux_loss = 0;      // the last load-balancing loss (without its coefficient)
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

  // The cap on an expert's tokens for a batch of `tokens` in the current mode (training:
  // the capacity; evaluation and dropless: tokens, i.e. none). Evaluation then shrinks its
  // blocks to the busiest expert's load, which drops nothing either.
  int64_t capacity(int64_t tokens) const;

  // The usage since the last reset, read from the device (waits for it).
  ExpertUsage usage() const;
  void reset_usage();
  // The device accumulator (E + 2) f64: [e] first choices of expert e, [E] dropped
  // assignments, [E + 1] assignments; undefined before the first training forward.
  const Tensor& usage_accumulator() const { return usage_acc_; }
  const MoEOptions& options() const { return opt_; }

 private:
  MoEOptions opt_;
  Activation act_;
  std::shared_ptr<Linear> router_;
  std::vector<std::shared_ptr<Linear>> fc1_, fc2_;
  Tensor usage_acc_;     // (E + 2) f64 on the device of the last training forward
  Tensor last_balance_;  // () the last balancing loss, detached, on the device
};

// Usage statistics of every MoE layer of a model since their last reset (empty when it has
// none). Reads the device: for tests and tools, not inside a training step.
std::vector<std::pair<std::string, ExpertUsage>> moe_usage(LanguageModel& model);

// The usage since the last read in two numbers (the trainer's metrics): the share of
// assignments dropped at capacity (mean over MoE layers) and the busiest expert's load
// (first choices) over the mean load (max over layers; 1 = perfectly balanced).
struct MoeSummary {
  double dropped = 0;
  double max_load = 0;
};
// Reduces every MoE layer's accumulator to those two numbers on the device, queues their
// copy to the host and resets the accumulators: no wait (core/async_read.h). Undefined
// without MoE layers.
AsyncRead moe_summary_read(LanguageModel& model);
// The numbers of such a read (waits for its copy alone).
MoeSummary moe_summary_of(const AsyncRead& read);
// Both at once (waits): the summary since the last read.
std::optional<MoeSummary> moe_summary(LanguageModel& model);

}  // namespace ssmtrain
