// The attention mixer (SPECS section 10): causal multi-head softmax attention with rotary
// position embeddings on q and k (base 10000, as Llama / Transformer++) and optional
// grouped-query heads, the sequence mixer of Transformer++ and of hybrid stacks:
//
//   q, k, v = split(in_proj(u))              (H Dh, Hkv Dh, Hkv Dh), no bias
//   q, k    = rotary(q), rotary(k)           position t of the sequence
//   o       = causal_attention(q, k, v, 1/sqrt(Dh))      (ssm/kernels/attention.h)
//   out     = out_proj(o)                    (H Dh -> d_model), no bias
//
// The Transformer++ block is this layer followed by a SwiGLU mlp layer, each with its own
// RMSNorm pre-norm residual (nn/lm.h): `mixer: attention` with `mlp_every: 2`
// (ssm/mlp_mixer.h). Parameter names follow mamba_ssm's MHA: in_proj.weight,
// out_proj.weight (rescaled by 1/sqrt(n_layer) with the other output projections).
//
// Packed documents (seq_idx): the attention mask also separates documents.
//
// Generation keeps a KV cache per layer (AttentionState): each step rotates the new q and k
// at the current position, appends k and v to the cache (grown by doubling) and attends
// over all cached positions: the same op as the forward, with Lq = 1. Memory grows with the
// generated length, unlike the SSM mixers' constant state.
#pragma once

#include <memory>

#include "nn/linear.h"
#include "nn/mixer.h"
#include "ssm/mixer_registry.h"

namespace ssmtrain {

// The options of the registered mixer attention (keys under model.attention).
struct AttentionOptions {
  int64_t d_model = 0;    // from the model
  int64_t heads = 0;      // H; 0: d_model / head_dim
  int64_t kv_heads = 0;   // Hkv; 0: H (multi-head); 1: multi-query; else grouped-query
  int64_t head_dim = 64;  // Dh
  double rope_base = 10000.0;
  int64_t every = 0;  // with k > 0, layers k-1, 2k-1, ... are attention layers

  template <class V>
  void visit(V& v) {
    v.field("heads", heads, "attention: query heads H; 0 = d_model / head_dim", ge(0));
    v.field("kv_heads", kv_heads,
            "attention: key/value heads (grouped-query attention); must divide the query heads; 0 = as many as "
            "query heads",
            ge(0));
    v.field("head_dim", head_dim, "attention: head dimension Dh (even, for the rotary pairs, unless rope_base is 0)",
            ge(1));
    v.field("rope_base", rope_base,
            "attention: rotary embedding base theta (angles t * theta^(-2i/Dh)); 0 = no rotary embedding (as "
            "Jamba's attention layers)",
            ge(0));
    v.field("every", every,
            "with k > 0, layers k-1, 2k-1, ... are attention layers, whatever model.mixer / model.layers say "
            "(hybrids: mixer mamba2 with k = 8 gives one attention layer in 8); 0 = none beyond them",
            ge(0));
  }
  // The head geometry against d_model, when a layer is an attention layer; every <= n_layer.
  void validate(const MixerContext& context) const;
  // The registry's stacking hook (ssm/mixer_registry.h): layer i is an attention layer when
  // `every` divides i + 1. Registered after mlp and moe, so this rule wins where theirs also
  // apply.
  bool takes_layer(int64_t layer) const { return every > 0 && (layer + 1) % every == 0; }
  bool operator==(const AttentionOptions&) const = default;

  // The resolved head counts for a model of width d_model.
  int64_t query_heads(int64_t d_model) const { return heads > 0 ? heads : d_model / head_dim; }
  int64_t key_value_heads(int64_t d_model) const { return kv_heads > 0 ? kv_heads : query_heads(d_model); }
};

// The registration of attention (ssm/mixer_registry.h).
MixerEntry attention_mixer_entry();

class Attention : public Mixer {
 public:
  Attention(const AttentionOptions& options, Generator& gen);

  Tensor forward(const Tensor& x) override;  // (B, L, D) -> (B, L, D)
  // Packed documents: a position attends only to earlier positions of its own document
  // (seq_idx (B, L) i32). Rotary angles stay those of the row's positions: attention scores
  // depend only on the distance between two positions, so a document's scores are the same
  // wherever it starts in the row.
  bool supports_seq_idx() const override { return true; }
  Tensor forward(const Tensor& x, const Tensor& seq_idx) override;

  bool supports_step() const override { return true; }
  std::unique_ptr<MixerState> init_state(int64_t batch, Device device, DType dtype) override;
  // x_t (B, D) -> (B, D): attends over every position stepped so far and this one.
  Tensor step(const Tensor& x_t, MixerState& state) override;

  int64_t heads() const { return heads_; }
  int64_t kv_heads() const { return kv_heads_; }
  int64_t head_dim() const { return opt_.head_dim; }

 private:
  // proj (B, L, (H + 2 Hkv) Dh) -> q (B, L, H, Dh) and k (B, L, Hkv, Dh) rotated from
  // position `offset`, v (B, L, Hkv, Dh) a view of proj.
  struct QKV {
    Tensor q, k, v;
  };
  QKV split_heads(const Tensor& proj, int64_t offset) const;

  AttentionOptions opt_;
  int64_t heads_, kv_heads_;
  std::shared_ptr<Linear> in_proj_, out_proj_;
};

}  // namespace ssmtrain
