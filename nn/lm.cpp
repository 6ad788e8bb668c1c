// The language model wrapper: embedding, pre-norm residual blocks, tied head.
#include "nn/lm.h"

#include <cmath>

#include "core/ops.h"
#include "core/recompute.h"
#include "nn/init.h"

namespace ssmtrain {

int64_t padded_vocab_size(int64_t vocab_size, int64_t multiple) {
  SSMT_CHECK(vocab_size > 0, "model.vocab_size must be positive, got ", vocab_size);
  SSMT_CHECK(multiple > 0, "model.pad_vocab_multiple must be positive, got ", multiple);
  return (vocab_size + multiple - 1) / multiple * multiple;
}

ParameterCounts count_parameters(const Module& model, int experts_per_token, int num_experts) {
  SSMT_CHECK(num_experts > 0 && experts_per_token > 0 && experts_per_token <= num_experts,
             "count_parameters: need 0 < experts_per_token <= num_experts, got ", experts_per_token, " of ",
             num_experts);
  ParameterCounts c;
  for (const auto& p : model.named_parameters()) {
    int64_t n = p.tensor.numel();
    c.total += n;
    if (p.has_tag(param_tag::embedding)) c.embedding += n;
    if (p.has_tag(param_tag::expert)) c.expert += n;
  }
  c.non_embedding = c.total - c.embedding;
  int64_t active_expert = c.expert * experts_per_token / num_experts;
  c.active = c.total - c.expert + active_expert;
  c.active_non_embedding = c.active - c.embedding;
  return c;
}

// ---------------------------------------------------------------------------------------

Block::Block(int64_t d_model, double norm_eps, std::shared_ptr<Mixer> mixer) {
  SSMT_CHECK(mixer != nullptr, "Block: the mixer factory returned null");
  norm_ = register_module("norm", std::make_shared<RMSNorm>(d_model, norm_eps));
  mixer_ = register_module("mixer", std::move(mixer));
}

namespace {
Tensor to_compute(const Tensor& x, DType compute_dtype) {
  return x.dtype() == compute_dtype ? x : cast(x, compute_dtype);
}
Tensor to_residual(const Tensor& y, const Tensor& residual, const std::string& where) {
  SSMT_CHECK(y.shape() == residual.shape(), where, ": the mixer returned ", y.describe(), ", expected shape ",
             residual.shape().str());
  return y.dtype() == residual.dtype() ? y : cast(y, residual.dtype());
}
}  // namespace

Tensor Block::forward(const Tensor& h, DType compute_dtype, const Tensor& seq_idx) {
  Tensor y = mixer_->forward(to_compute(norm_->forward(h), compute_dtype), seq_idx);
  return add(h, to_residual(y, h, path()));
}

Tensor Block::forward(const Tensor& h, DType compute_dtype, Tensor* aux, const Tensor& seq_idx) {
  Tensor out = forward(h, compute_dtype, seq_idx);
  *aux = mixer_->take_aux_loss();
  return out;
}

Tensor Block::step(const Tensor& h_t, MixerState& state, DType compute_dtype) {
  Tensor y = mixer_->step(to_compute(norm_->forward(h_t), compute_dtype), state);
  return add(h_t, to_residual(y, h_t, path()));
}

// ---------------------------------------------------------------------------------------

LanguageModel::LanguageModel(const LMConfig& config, const MixerFactory& make_mixer, Generator& gen)
    : config_(config) {
  SSMT_CHECK(config.d_model > 0, "model.d_model must be positive, got ", config.d_model);
  SSMT_CHECK(config.n_layer > 0, "model.n_layer must be positive, got ", config.n_layer);
  SSMT_CHECK(is_floating(config.compute_dtype), "model.compute_dtype must be floating, got ",
             dtype_name(config.compute_dtype));
  SSMT_CHECK(static_cast<bool>(make_mixer), "LanguageModel: no mixer factory given");
  int64_t vocab = padded_vocab_size(config.vocab_size, config.pad_vocab_multiple);
  embedding_ = register_module("embedding", std::make_shared<Embedding>(vocab, config.d_model, gen,
                                                                         config.embedding_init_std));
  layers_ = register_module("layers", std::make_shared<ModuleList>());
  for (int i = 0; i < config.n_layer; ++i)
    layers_->push_back(std::make_shared<Block>(config.d_model, config.norm_eps, make_mixer(i)));
  norm_f_ = register_module("norm_f", std::make_shared<RMSNorm>(config.d_model, config.norm_eps));
  if (config.rescale_prenorm_residual) init::rescale_residual_projections(*this, config.n_layer);
}

Tensor LanguageModel::head(const Tensor& h) const {
  return linear(norm_f_->forward(h), embedding_->weight());
}

bool LanguageModel::supports_seq_idx() const {
  for (const auto& item : *layers_)
    if (!static_cast<const Block&>(*item).mixer()->supports_seq_idx()) return false;
  return true;
}

LanguageModel::Trunk LanguageModel::trunk(const Tensor& ids, const Tensor& seq_idx, Tensor* aux_loss,
                                          DType final_dtype) {
  SSMT_CHECK(ids.dim() == 2 && ids.dtype() == DType::i64, "LanguageModel: input ids ", ids.describe(),
             " must be (B, L) i64");
  SSMT_CHECK(!seq_idx.defined() || (seq_idx.shape() == ids.shape() && seq_idx.dtype() == DType::i32 &&
                                    seq_idx.device() == ids.device()),
             "LanguageModel: seq_idx ", seq_idx.describe(), " must be i32 of the ids' shape ", ids.shape().str(),
             " on ", ids.device().str());
  const DType cdt = config_.compute_dtype;
  auto add_aux = [&](const Tensor& aux) {
    if (aux.defined()) *aux_loss = aux_loss->defined() ? add(*aux_loss, aux) : aux;
  };
  Tensor h = embedding_->forward(ids);
  const size_t n = layers_->size();
  if (config_.recompute == LMConfig::Recompute::block) {
    // Whole blocks recomputed in the backward: each keeps only its input h.
    for (size_t i = 0; i < n; ++i) {
      std::shared_ptr<Block> block = layers_->at<Block>(i);
      auto outs = recompute(
          "recompute_block",
          [block, cdt, seq_idx](const std::vector<Tensor>& in) -> std::vector<Tensor> {
            Tensor a;
            Tensor out = block->forward(in[0], cdt, &a, seq_idx);
            return {out, a};
          },
          {h}, block->parameters());
      h = outs[0];
      add_aux(outs[1]);
    }
    Tensor normed = norm_f_->forward(h);
    return {h, normed.dtype() == final_dtype ? normed : cast(normed, final_dtype)};
  }
  // The residual stream with each block's add fused into the next norm (add_rms_norm): block
  // i's output is added to h and normalised by block i+1's norm (norm_f after the last) in
  // one step, which also emits the normed activations in the compute dtype.
  Tensor x = to_compute(layers_->at<Block>(0)->norm()->forward(h), cdt);
  for (size_t i = 0; i < n; ++i) {
    std::shared_ptr<Block> block = layers_->at<Block>(i);
    std::shared_ptr<Mixer> mixer = block->mixer();
    Tensor y, aux;
    if (config_.recompute == LMConfig::Recompute::mixer) {
      auto outs = recompute(
          "recompute_mixer",
          [mixer, seq_idx](const std::vector<Tensor>& in) -> std::vector<Tensor> {
            Tensor out = mixer->forward(in[0], seq_idx);
            return {out, mixer->take_aux_loss()};
          },
          {x}, mixer->parameters());
      y = outs[0];
      aux = outs[1];
    } else {
      y = mixer->forward(x, seq_idx);
      aux = mixer->take_aux_loss();
    }
    SSMT_CHECK(y.shape() == h.shape(), block->path(), ": the mixer returned ", y.describe(), ", expected shape ",
               h.shape().str());
    add_aux(aux);
    const RMSNorm& next = i + 1 < n ? *layers_->at<Block>(i + 1)->norm() : *norm_f_;
    AddRmsNorm r = add_rms_norm(h, y, next.weight(), next.eps(), i + 1 < n ? cdt : final_dtype);
    h = r.sum;
    x = r.normed;
  }
  return {h, x};
}

LMOutput LanguageModel::forward(const Tensor& ids, const Tensor& seq_idx) {
  LMOutput out;
  Trunk t = trunk(ids, seq_idx, &out.aux_loss, norm_f_->weight().dtype());
  out.logits = linear(t.normed, embedding_->weight());
  return out;
}

LMLoss LanguageModel::forward_loss(const Tensor& ids, const Tensor& targets, int64_t ignore_index,
                                  const Tensor& seq_idx) {
  SSMT_CHECK(targets.shape() == ids.shape() && targets.dtype() == DType::i64, "LanguageModel: targets ",
             targets.describe(), " must be i64 of the ids' shape ", ids.shape().str());
  LMLoss out;
  Trunk t = trunk(ids, seq_idx, &out.aux_loss, config_.compute_dtype);
  out.loss = linear_cross_entropy(t.normed, embedding_->weight(), targets, ignore_index);
  return out;
}

std::vector<std::unique_ptr<MixerState>> LanguageModel::init_states(int64_t batch, Device device) {
  std::vector<std::unique_ptr<MixerState>> states;
  for (const auto& item : *layers_)
    states.push_back(static_cast<Block&>(*item).mixer()->init_state(batch, device, config_.compute_dtype));
  return states;
}

Tensor LanguageModel::step(const Tensor& ids_t, std::vector<std::unique_ptr<MixerState>>& states) {
  SSMT_CHECK(ids_t.dim() == 1 && ids_t.dtype() == DType::i64, "LanguageModel::step: ids ", ids_t.describe(),
             " must be (B) i64");
  SSMT_CHECK(states.size() == layers_->size(), "LanguageModel::step: ", states.size(), " states for ",
             layers_->size(), " blocks (use init_states)");
  Tensor h = embedding_->forward(ids_t);
  for (size_t i = 0; i < layers_->size(); ++i) {
    auto& block = static_cast<Block&>(*(*layers_)[i]);
    h = block.step(h, *states[i], config_.compute_dtype);
    block.mixer()->take_aux_loss();  // generation has no loss to add it to
  }
  return head(h);
}

}  // namespace ssmtrain
