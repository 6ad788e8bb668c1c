// The language model wrapper of SPECS section 6, with a pluggable mixer per block:
//
//   h = Embedding(ids)                            (B, L, D) f32, N(0, 0.02) init
//   for each block:  h = h + mixer(norm(h))       pre-norm residual, stream kept in f32
//   logits = RMSNorm_f(h) @ Embedding.weight^T    (B, L, V_padded), head tied to the embedding
//
// Packed documents (SPECS section 12): forward and forward_loss take an optional seq_idx
// (B, L) i32, the document of every position, and hand it to every mixer (nn/mixer.h), so
// each document is computed as if it were a row of its own; the blocks' other parts are
// position-wise. Every mixer must support it (Mixer::supports_seq_idx).
//
// The vocabulary is padded up to a multiple of pad_vocab_multiple (50277 -> 50280) so the
// head GEMM has aligned sizes; the padded rows are ordinary embedding rows that no target
// ever selects. Output projections named out_proj / fc2 are rescaled by 1/sqrt(n_layer)
// after the mixers are built (nn/init.h). Parameter names follow Mamba's reference:
// embedding.weight, layers.<i>.norm.weight, layers.<i>.mixer.*, norm_f.weight.
#pragma once

#include <memory>
#include <vector>

#include "nn/linear.h"
#include "nn/mixer.h"
#include "nn/norm.h"

namespace ssmtrain {

struct LMConfig {
  int64_t vocab_size = 0;  // before padding
  int64_t d_model = 0;
  int n_layer = 0;
  int64_t pad_vocab_multiple = 8;
  double norm_eps = 1e-5;
  double embedding_init_std = 0.02;
  bool rescale_prenorm_residual = true;
  // dtype of the mixer's input and output (bf16 for mixed precision); the residual stream,
  // norms and logits stay f32. Mixers receiving bf16 must handle their f32 weights.
  DType compute_dtype = DType::f32;
  // Activation recomputation in training (core/recompute.h): none, each block's mixer, or
  // whole blocks (only their input is kept). Requires a deterministic forward (no dropout).
  enum class Recompute { none, mixer, block } recompute = Recompute::none;
};

int64_t padded_vocab_size(int64_t vocab_size, int64_t multiple);

// Parameter counts (SPECS 8: report which N a run used; for MoE use active).
struct ParameterCounts {
  int64_t total = 0;          // every parameter once; the tied head adds nothing
  int64_t embedding = 0;      // parameters tagged "embedding" (padded rows included)
  int64_t non_embedding = 0;  // total - embedding
  int64_t expert = 0;         // parameters tagged "expert"
  int64_t active = 0;         // total - expert * (1 - experts_per_token / num_experts)
  int64_t active_non_embedding = 0;
};
// Assumes every MoE layer has num_experts equal-size experts of which experts_per_token
// run per token (true of Switch / MoE-Mamba stacks).
ParameterCounts count_parameters(const Module& model, int experts_per_token = 1, int num_experts = 1);

// One pre-norm residual block: h + mixer(norm(h)).
class Block : public Module {
 public:
  Block(int64_t d_model, double norm_eps, std::shared_ptr<Mixer> mixer);
  // h (B, L, D) f32 -> (B, L, D) f32; the mixer runs in compute_dtype. seq_idx (B, L) i32:
  // packed documents, or undefined.
  Tensor forward(const Tensor& h, DType compute_dtype, const Tensor& seq_idx = Tensor());
  // The same, taking the mixer's auxiliary loss of this forward (undefined when none) into *aux.
  Tensor forward(const Tensor& h, DType compute_dtype, Tensor* aux, const Tensor& seq_idx = Tensor());
  // h_t (B, D) f32 -> (B, D) f32
  Tensor step(const Tensor& h_t, MixerState& state, DType compute_dtype);

  const std::shared_ptr<RMSNorm>& norm() const { return norm_; }
  const std::shared_ptr<Mixer>& mixer() const { return mixer_; }

 private:
  std::shared_ptr<RMSNorm> norm_;
  std::shared_ptr<Mixer> mixer_;
};

struct LMOutput {
  Tensor logits;    // (B, L, V_padded) f32
  Tensor aux_loss;  // scalar f32: sum of the mixers' auxiliary losses; undefined when none
};

struct LMLoss {
  Tensor loss;      // scalar f32: mean cross-entropy over targets != ignore_index
  Tensor aux_loss;  // as LMOutput::aux_loss
};

class LanguageModel : public Module {
 public:
  // Draws the embedding from `gen`; the factory builds each mixer (with its own draws).
  LanguageModel(const LMConfig& config, const MixerFactory& make_mixer, Generator& gen);

  // ids (B, L) i64 in [0, vocab_size); seq_idx (B, L) i32 on the ids' device, non-decreasing
  // along L: the document of every position (packed documents), or undefined (one per row).
  LMOutput forward(const Tensor& ids, const Tensor& seq_idx = Tensor());
  // The training forward: the loss of ids against targets (B, L) i64 through the fused head
  // (linear_cross_entropy in the compute dtype), so the logits never exist in full. The
  // same function as cross_entropy(forward(ids, seq_idx).logits, targets), up to the head's
  // GEMMs running in the compute dtype (bf16 under mixed precision, as the mixers' GEMMs).
  LMLoss forward_loss(const Tensor& ids, const Tensor& targets, int64_t ignore_index = -100,
                      const Tensor& seq_idx = Tensor());

  // Whether every block's mixer takes packed documents (Mixer::supports_seq_idx).
  bool supports_seq_idx() const;

  // Generation: one state per block; ids_t (B) i64 -> logits (B, V_padded) f32.
  std::vector<std::unique_ptr<MixerState>> init_states(int64_t batch, Device device);
  Tensor step(const Tensor& ids_t, std::vector<std::unique_ptr<MixerState>>& states);

  const LMConfig& config() const { return config_; }
  int64_t padded_vocab() const { return embedding_->num_embeddings(); }
  int n_layer() const { return static_cast<int>(layers_->size()); }
  const std::shared_ptr<Embedding>& embedding() const { return embedding_; }
  std::shared_ptr<Block> block(int i) const { return layers_->at<Block>(static_cast<size_t>(i)); }
  const std::shared_ptr<RMSNorm>& norm_f() const { return norm_f_; }
  ParameterCounts parameter_counts(int experts_per_token = 1, int num_experts = 1) const {
    return count_parameters(*this, experts_per_token, num_experts);
  }

 private:
  Tensor head(const Tensor& h) const;  // final norm + tied projection
  // Embedding + blocks: the residual stream (B, L, D) and its final norm in final_dtype.
  struct Trunk {
    Tensor stream, normed;
  };
  Trunk trunk(const Tensor& ids, const Tensor& seq_idx, Tensor* aux_loss, DType final_dtype);

  LMConfig config_;
  std::shared_ptr<Embedding> embedding_;
  std::shared_ptr<ModuleList> layers_;
  std::shared_ptr<RMSNorm> norm_f_;
};

}  // namespace ssmtrain
