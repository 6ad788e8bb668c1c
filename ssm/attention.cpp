#include "ssm/attention.h"

#include <algorithm>
#include <cmath>

#include "core/backend.h"
#include "core/ops.h"
#include "ssm/kernels/attention.h"
#include "ssm/mixer_util.h"

namespace ssmtrain {

Attention::Attention(const AttentionOptions& o, Generator& gen) : opt_(o) {
  heads_ = o.query_heads(o.d_model), kv_heads_ = o.key_value_heads(o.d_model);
  SSMT_CHECK(o.head_dim >= 1 && (o.rope_base == 0 || o.head_dim % 2 == 0), "attention: head_dim ", o.head_dim,
             " must be even (rotary pairs)");
  SSMT_CHECK(heads_ >= 1 && kv_heads_ >= 1 && heads_ % kv_heads_ == 0, "attention: ", kv_heads_,
             " key/value heads must divide ", heads_, " query heads");
  LinearOptions nobias;
  nobias.bias = false;
  in_proj_ = register_module("in_proj",
                             std::make_shared<Linear>(o.d_model, (heads_ + 2 * kv_heads_) * o.head_dim, gen, nobias));
  out_proj_ = register_module("out_proj", std::make_shared<Linear>(heads_ * o.head_dim, o.d_model, gen, nobias));
}

Attention::QKV Attention::split_heads(const Tensor& proj, int64_t offset) const {
  const int64_t Bsz = proj.size(0), L = proj.size(1), Dh = opt_.head_dim;
  auto parts = proj.split({heads_ * Dh, kv_heads_ * Dh, kv_heads_ * Dh}, -1);
  QKV r;
  r.q = parts[0].view({Bsz, L, heads_, Dh});
  r.k = parts[1].view({Bsz, L, kv_heads_, Dh});
  if (opt_.rope_base > 0) {
    r.q = rotary_embedding(r.q, offset, opt_.rope_base);
    r.k = rotary_embedding(r.k, offset, opt_.rope_base);
  }
  r.v = parts[2].view({Bsz, L, kv_heads_, Dh});
  return r;
}

Tensor Attention::forward(const Tensor& x) { return forward(x, Tensor()); }

Tensor Attention::forward(const Tensor& x, const Tensor& seq_idx) {
  SSMT_CHECK(x.dim() == 3 && x.size(2) == opt_.d_model, "attention '", path(), "': input ", x.describe(),
             ": expected (B, L, ", opt_.d_model, ")");
  const DType dtp = x.dtype();
  const int64_t Bsz = x.size(0), L = x.size(1);
  const QKV t = split_heads(linear(x, linear_weight(in_proj_->weight(), dtp)), 0);
  Tensor o = causal_attention(t.q, t.k, t.v, 1.0 / std::sqrt(static_cast<double>(opt_.head_dim)), seq_idx);
  return linear(o.reshape({Bsz, L, heads_ * opt_.head_dim}), linear_weight(out_proj_->weight(), dtp));
}

namespace {
// The KV cache of one layer: positions [0, len) of k (rotated) and v.
struct AttentionState : MixerState {
  Tensor k, v;      // (B, capacity, Hkv, Dh) in the compute dtype
  int64_t len = 0;  // positions stepped so far
};
}  // namespace

std::unique_ptr<MixerState> Attention::init_state(int64_t batch, Device device, DType dtype) {
  auto s = std::make_unique<AttentionState>();
  constexpr int64_t kInitialCapacity = 64;
  s->k = Tensor::zeros({batch, kInitialCapacity, kv_heads_, opt_.head_dim}, dtype, device);
  s->v = Tensor::zeros({batch, kInitialCapacity, kv_heads_, opt_.head_dim}, dtype, device);
  return s;
}

Tensor Attention::step(const Tensor& x_t, MixerState& state) {
  auto& s = dynamic_cast<AttentionState&>(state);
  SSMT_CHECK(x_t.dim() == 2 && x_t.size(1) == opt_.d_model, "attention '", path(), "': step input ", x_t.describe(),
             ": expected (B, ", opt_.d_model, ")");
  NoGradGuard ng;
  const DType dtp = x_t.dtype();
  const int64_t Bsz = x_t.size(0), Dh = opt_.head_dim;
  SSMT_CHECK(s.k.size(0) == Bsz, "attention '", path(), "': step input ", x_t.describe(), " but the state holds ",
             s.k.size(0), " rows (init_state)");
  const QKV t = split_heads(linear(x_t, linear_weight(in_proj_->weight(), dtp)).unsqueeze(1), s.len);
  Backend& be = backend(x_t.device());
  if (s.len == s.k.size(1)) {  // full: double the capacity
    const Dims grown{Bsz, 2 * s.len, kv_heads_, Dh};
    Tensor k = Tensor::zeros(grown, s.k.dtype(), s.k.device()), v = Tensor::zeros(grown, s.v.dtype(), s.v.device());
    be.copy(s.k, k.narrow(1, 0, s.len));
    be.copy(s.v, v.narrow(1, 0, s.len));
    s.k = k, s.v = v;
  }
  be.copy(t.k, s.k.narrow(1, s.len, 1));
  be.copy(t.v, s.v.narrow(1, s.len, 1));
  ++s.len;
  Tensor o =
      causal_attention(t.q, s.k.narrow(1, 0, s.len), s.v.narrow(1, 0, s.len), 1.0 / std::sqrt(static_cast<double>(Dh)));
  return linear(o.reshape({Bsz, heads_ * Dh}), linear_weight(out_proj_->weight(), dtp));
}

void AttentionOptions::validate(const MixerContext& c) const {
  SSMT_CHECK(every <= c.n_layer, c.key("every"), " is ", every, " but model.n_layer is only ", c.n_layer,
             ": no layer would be an attention layer (0 turns the rule off)");
  SSMT_CHECK(rope_base == 0 || rope_base > 1, c.key("rope_base"), " is ", rope_base,
             ": expected 0 (no rotary embedding) or a base above 1");
  SSMT_CHECK(rope_base == 0 || head_dim % 2 == 0, c.key("head_dim"), " (", head_dim,
             ") must be even: rotary embeddings rotate pairs");
  if (c.name.empty()) return;
  if (heads == 0)
    SSMT_CHECK(c.d_model % head_dim == 0, c.key("head_dim"), " (", head_dim, ") must divide model.d_model (", c.d_model,
               ") when ", c.key("heads"), " is 0 (heads = d_model / head_dim)");
  const int64_t h = query_heads(c.d_model);
  SSMT_CHECK(h >= 1, c.key("heads"), ": no query heads");
  SSMT_CHECK(kv_heads == 0 || h % kv_heads == 0, c.key("kv_heads"), " (", kv_heads,
             ") must divide the number of query heads (", h, ")");
}

MixerEntry attention_mixer_entry() {
  auto build = [](const AttentionOptions& options, const MixerContext& c, Generator& gen) -> std::shared_ptr<Mixer> {
    AttentionOptions o = options;
    o.d_model = c.d_model;
    return std::make_shared<Attention>(o, gen);
  };
  return mixer_entry<AttentionOptions>({{"attention", "causal softmax attention with RoPE"}}, build, "attention",
                                       "The attention mixer: causal multi-head attention with rotary embeddings and "
                                       "optional grouped-query heads (Transformer++, hybrid stacks).");
}

}  // namespace ssmtrain
