// Builds the language model of a config: the LM wrapper (nn/lm.h) with one mixer per layer
// chosen by name, including mixed stacks and MoE-Mamba alternation.
//
// Mixer names: mamba (Mamba-1 block), s6 (the selective SSM alone, no gate), mamba_lti (the
// Mamba block with an LTI S4D-Real SSM inside), mamba2, s4 (DPLR), s4d (diagonal), mlp
// (gated MLP), moe (Switch MoE FFN). With moe_every = k > 0, layers k-1, 2k-1, ... are MoE
// blocks and the others use the mixer of their layer (MoE-Mamba: mamba, moe, mamba, ...).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nn/lm.h"
#include "ssm/mamba.h"
#include "ssm/mamba2.h"
#include "ssm/moe.h"

namespace ssmtrain {

struct S4Spec {
  std::string kernel = "dplr";          // dplr | diag
  std::string init = "legs";            // legs | lin | inv | real
  std::string discretization = "bilinear";   // zoh | bilinear
  double dt_min = 1e-3, dt_max = 1e-1;
  int64_t l_max = 0;                    // dplr kernel length Lk (0: the first forward's L)
};

struct ModelSpec {
  std::string mixer = "mamba";
  std::vector<std::string> layers;  // per-layer mixers; empty = `mixer` everywhere
  int64_t vocab_size = 256;
  int64_t pad_vocab_multiple = 8;
  int64_t d_model = 256;
  int n_layer = 4;
  int64_t d_state = 16;
  int64_t d_conv = 4;
  int64_t expand = 2;
  int64_t dt_rank = 0;
  int64_t headdim = 64;
  int64_t ngroups = 1;
  int64_t chunk_size = 256;
  double norm_eps = 1e-5;
  DType compute_dtype = DType::f32;  // dtype the mixers run in (bf16: mixed precision)
  LMConfig::Recompute recompute = LMConfig::Recompute::none;
  int64_t mlp_hidden = 0;  // 0: the gated-MLP default for d_model
  int moe_every = 0;
  MoEOptions moe;
  S4Spec s4;
};

// The mixer name of layer i.
std::string layer_mixer(const ModelSpec& spec, int layer);

std::shared_ptr<LanguageModel> build_language_model(const ModelSpec& spec, Generator& gen);

// Experts per token and experts per MoE layer of a spec, for active-parameter counts.
std::pair<int, int> moe_routing(const ModelSpec& spec);

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
