// The model section of the config and the builder of its language model: the LM wrapper
// (nn/lm.h) with one mixer per layer, each made by the mixer registry
// (ssm/mixer_registry.h) from its name, including mixed stacks and MoE-Mamba alternation.
//
// ModelOptions declares the keys every mixer may read (sizes, norm epsilon) and holds the
// registered mixers' own options (MixerOptionSet); train/config.h uses it as its `model`
// section, so each key is declared once. What a mixer's options decide beyond its own
// layers (a stacking rule such as moe.every, the ssm-tagged learning rate s4.lr, expert
// routing) reaches the functions below through the registry's hooks (ssm/mixer_registry.h).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/options.h"
#include "nn/lm.h"
#include "ssm/mixer_registry.h"
#include "ssm/moe.h"  // MoeSummary, moe_summary (the trainer's metrics)

namespace ssmtrain {

struct ModelOptions {
  std::string mixer = "mamba";
  std::vector<std::string> layers;
  int64_t d_model = 256;
  int64_t n_layer = 4;
  int64_t vocab_size = 256;
  int64_t pad_vocab_multiple = 8;
  int64_t d_state = 16;
  int64_t d_conv = 4;
  int64_t expand = 2;
  double norm_eps = 1e-5;
  bool tie_embeddings = true;
  double dropout = 0.0;
  MixerOptionSet mixers;  // each registered mixer's keys (dt_rank, headdim, moe.*, s4.*, ...)

  template <class V>
  void visit(V& v) {
    const std::string mixer_doc = "sequence mixer of every layer: " + mixer_summaries();
    v.field("mixer", mixer, mixer_doc.c_str(), one_of(mixer_names()));
    v.field("layers", layers,
            "one mixer name per layer for mixed stacks, e.g. [mamba, s4d, mamba, mamba]; "
            "its length must equal n_layer; empty = mixer everywhere",
            one_of(mixer_names()));
    v.field("d_model", d_model, "width of the residual stream (D)", ge(1));
    v.field("n_layer", n_layer, "number of residual blocks", ge(1));
    v.field("vocab_size", vocab_size,
            "vocabulary size (256 for byte-level text); padded up to a multiple of pad_vocab_multiple when the "
            "model is built",
            ge(1));
    v.field("pad_vocab_multiple", pad_vocab_multiple, "the embedding has a multiple of this many rows (50277 -> 50280)",
            ge(1));
    v.field("d_state", d_state, "SSM state size N per channel (Mamba-2: per head)", ge(1));
    v.field("d_conv", d_conv, "kernel width of the causal depthwise convolution", ge(1));
    v.field("expand", expand, "inner width d_inner = expand * d_model", ge(1));
    v.field("norm_eps", norm_eps, "epsilon of the RMSNorms", gt(0));
    v.field("tie_embeddings", tie_embeddings, "the LM head reuses the embedding matrix");
    v.field("dropout", dropout, "dropout probability inside the blocks; 0 = off (the Mamba recipe)", ge(0).lt(1));
    mixers.visit(v);
  }
  bool operator==(const ModelOptions&) const = default;
};

// A model as a run builds it: the model section plus what the run decides around it.
struct ModelSpec {
  ModelOptions model;
  DType compute_dtype = DType::f32;  // dtype the mixers run in (bf16: mixed precision)
  LMConfig::Recompute recompute = LMConfig::Recompute::none;
  int64_t seq_len = 0;  // the training sequence length (MixerContext::seq_len); 0 = not known
};

// The mixer name of every layer: model.layers, else model.mixer everywhere, then the
// registrations' stacking rules (takes_layer: with moe.every = k > 0, layers k-1, 2k-1, ...
// are MoE layers; MoE-Mamba: mamba, moe, mamba, moe, ...).
std::vector<std::string> layer_mixers(const ModelOptions& model);

// The learning rate the registered mixers ask for their ssm-tagged parameters (s4.lr): the
// first non-zero one in registration order; 0 = none.
double mixer_ssm_lr(const ModelOptions& model);

// The checks across keys: the length of model.layers, then each registered mixer's own
// validate() (for each of its names a layer uses, or once when none does). UserError
// naming the key.
void validate(const ModelOptions& model);

// Checks `spec.model` (validate above) and builds its model.
std::shared_ptr<LanguageModel> build_language_model(const ModelSpec& spec, Generator& gen);

// Experts per token and experts per MoE layer of a spec, for active-parameter counts: the
// expert_routing of the first registration with one whose mixer a layer uses, else {1, 1}.
// (The MoE layers' usage statistics: moe_usage / moe_summary, ssm/moe.h.)
std::pair<int, int> moe_routing(const ModelSpec& spec);

}  // namespace ssmtrain
