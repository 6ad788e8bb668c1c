// Packed documents through the whole language model (SPECS section 12): a row that holds
// several documents, with seq_idx marking them, gives at every position the logits of
// that document run alone, and the gradient of its summed loss is the sum of the documents'
// gradients: no state (conv window, scan or SSD state) and no gradient crosses a boundary.
// Checked in f64 on the CPU for each mixer that takes seq_idx and for a mixed stack, with
// Mamba-2 chunks that straddle the documents; then activation recomputation with seq_idx,
// and the mixers that refuse it.
#include <doctest/doctest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "gradcheck.h"
#include "ssm/mamba2.h"
#include "ssm/model.h"
#include "user_error.h"

using namespace ssmtrain;

namespace {

constexpr int64_t kVocab = 12, kEot = 1, kL = 13;

// seq_idx[b, t] = the separators among positions 1..t (the trainer's rule, data/packing.h,
// which this layer's tests do not link).
std::vector<int32_t> documents(const std::vector<int32_t>& ids, int64_t B, int64_t L) {
  std::vector<int32_t> s(ids.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t) s[b * L + t] = (t > 0 ? s[b * L + t - 1] : 0) + (t > 0 && ids[b * L + t] == kEot);
  return s;
}

// A tiny model of `layers` (mixer names) in f64, identical for equal seeds.
std::shared_ptr<LanguageModel> tiny_model(const std::vector<std::string>& layers,
                                          LMConfig::Recompute recompute = LMConfig::Recompute::none) {
  ModelSpec spec;
  spec.model.layers = layers;
  spec.model.n_layer = static_cast<int64_t>(layers.size());
  spec.model.vocab_size = kVocab, spec.model.d_model = 8, spec.model.d_state = 4, spec.model.d_conv = 4;
  spec.model.mixers.get<Mamba2Options>().headdim = 4;     // 4 heads of 4
  spec.model.mixers.get<Mamba2Options>().chunk_size = 4;  // chunks of 4 over L = 13: they straddle documents
  spec.compute_dtype = DType::f64;
  spec.recompute = recompute;
  Generator gen(7);
  auto model = build_language_model(spec, gen);
  model->to(DType::f64);
  return model;
}

// Two packed rows of L = 13 (E = the end-of-text token 1):
//   row 0: a a a a | E b b b b | E c c c      a row's first document may lack its separator
//   row 1: E d d d d | E | E e e e e e e      a document of the separator alone
// Targets are the next token of the row (the last one: a token of its own).
struct Packed {
  std::vector<int32_t> ids = {5, 6, 7, 3, kEot, 8, 2, 9, 4, kEot, 10, 11, 6,  //
                              kEot, 4, 4, 7, 2, kEot, kEot, 3, 9, 8, 5, 2, 10};
  std::vector<int32_t> targets;
  Packed() {
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t t = 0; t < kL; ++t) targets.push_back(t + 1 < kL ? ids[r * kL + t + 1] : 3);
  }
  Tensor tensor(const std::vector<int32_t>& v) const {
    return Tensor::from_vector(std::vector<int64_t>(v.begin(), v.end()), {2, kL});
  }
  Tensor ids_tensor() const { return tensor(ids); }
  Tensor targets_tensor() const { return tensor(targets); }
  Tensor seq_idx() const { return Tensor::from_vector(documents(ids, 2, kL), {2, kL}); }
  // Every document as (row, start, length).
  struct Doc {
    int64_t row, start, length;
  };
  std::vector<Doc> docs() const {
    std::vector<int32_t> s = documents(ids, 2, kL);
    std::vector<Doc> out;
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t t = 0; t < kL; ++t) {
        if (t == 0 || s[r * kL + t] != s[r * kL + t - 1]) out.push_back({r, t, 0});
        ++out.back().length;
      }
    return out;
  }
};

Tensor slice(const Tensor& t, const Packed::Doc& d) {
  return t.narrow(0, d.row, 1).narrow(1, d.start, d.length).contiguous();
}

// The summed loss over every position, and each parameter's gradient of it.
struct Grads {
  std::vector<std::pair<std::string, Tensor>> grads;
};
Grads gradients(LanguageModel& model) {
  Grads g;
  for (const auto& p : model.named_parameters())
    g.grads.emplace_back(p.name, p.tensor.grad().defined() ? p.tensor.grad().clone() : Tensor());
  return g;
}

// Tolerances: the packed and the separate runs are both f64 evaluations of the same sums,
// grouped differently where their sizes differ (the SSD's chunks, GEMM blocking): each value
// carries at most a few hundred rounding errors of 1.1e-16 relative (the widest sums here
// run over d_inner * d_state = 64 terms per layer, compounded over two or three layers), so
// 1e-10 relative is a margin of about 100.
constexpr double kRtol = 1e-10, kAtol = 1e-12;

}  // namespace

TEST_CASE("packed documents: each document's logits and gradients are those of the document alone") {
  const Packed p;
  REQUIRE(p.docs().size() == 6);  // a, b, c; d, the lone separator, e
  const std::vector<std::vector<std::string>> stacks = {
      {"mamba", "mamba"}, {"s6", "s6"}, {"mamba_lti", "mamba_lti"}, {"mamba2", "mamba2"}, {"mamba2", "mlp", "mamba"}};
  for (const auto& layers : stacks) {
    std::string name;
    for (const auto& l : layers) name += l + " ";
    INFO("layers: ", name);
    auto model = tiny_model(layers);
    REQUIRE(model->supports_seq_idx());

    // Packed: logits, then the summed per-position loss and its gradients.
    Tensor logits = model->forward(p.ids_tensor(), p.seq_idx()).logits;  // (2, L, V)
    Tensor loss = sum(cross_entropy_per_token(logits, p.targets_tensor()));
    backward(loss);
    Grads packed = gradients(*model);
    model->zero_grad();

    // Each document alone (one row, no seq_idx), its gradients accumulated over the documents.
    double separate_loss = 0;
    for (const auto& d : p.docs()) {
      INFO("document at row ", d.row, ", position ", d.start, ", length ", d.length);
      Tensor alone = model->forward(slice(p.ids_tensor(), d)).logits;
      check_close(slice(logits.detach(), d), alone, kRtol, kAtol, "packed logits vs the document alone");
      Tensor doc_loss = sum(cross_entropy_per_token(alone, slice(p.targets_tensor(), d)));
      separate_loss += doc_loss.item<double>();
      backward(doc_loss);
    }
    CHECK(loss.item<double>() == doctest::Approx(separate_loss).epsilon(kRtol));
    Grads separate = gradients(*model);
    model->zero_grad();
    REQUIRE(packed.grads.size() == separate.grads.size());
    for (size_t i = 0; i < packed.grads.size(); ++i) {
      INFO("parameter ", packed.grads[i].first);
      REQUIRE(packed.grads[i].second.defined());
      check_close(packed.grads[i].second, separate.grads[i].second, kRtol, kAtol, "packed gradient vs the sum");
    }

    // Not vacuous: without seq_idx the later documents see the earlier ones.
    Tensor unpacked = model->forward(p.ids_tensor()).logits;
    const Packed::Doc b = p.docs()[1];
    double most = 0;
    std::vector<double> x = slice(unpacked, b).to_vector<double>(), y = slice(logits.detach(), b).to_vector<double>();
    for (size_t i = 0; i < x.size(); ++i) most = std::max(most, std::abs(x[i] - y[i]));
    CHECK(most > 1e-6);
  }
}

TEST_CASE("packed documents: recomputed blocks and mixers see the same seq_idx") {
  const Packed p;
  for (const std::string mixer : {"mamba", "mamba2"}) {
    INFO("mixer ", mixer);
    std::vector<Tensor> losses;
    std::vector<Grads> grads;
    for (auto rc : {LMConfig::Recompute::none, LMConfig::Recompute::mixer, LMConfig::Recompute::block}) {
      auto model = tiny_model({mixer, mixer}, rc);
      model->train();
      LMLoss out = model->forward_loss(p.ids_tensor(), p.targets_tensor(), -100, p.seq_idx());
      backward(out.loss);
      losses.push_back(out.loss.detach());
      grads.push_back(gradients(*model));
    }
    // The training loss is the mean of the packed per-position losses.
    auto plain = tiny_model({mixer, mixer});
    Tensor per_token = cross_entropy_per_token(plain->forward(p.ids_tensor(), p.seq_idx()).logits, p.targets_tensor());
    CHECK(losses[0].item<double>() == doctest::Approx(mean(per_token).item<double>()).epsilon(1e-12));
    // Recomputation repeats the same kernels on the same data: bitwise.
    for (size_t k = 1; k < 3; ++k) {
      INFO((k == 1 ? "recompute mixer" : "recompute block"));
      CHECK(losses[k].item<double>() == losses[0].item<double>());
      for (size_t i = 0; i < grads[0].grads.size(); ++i) {
        INFO("parameter ", grads[0].grads[i].first);
        CHECK(grads[k].grads[i].second.to_vector<double>() == grads[0].grads[i].second.to_vector<double>());
      }
    }
  }
}

TEST_CASE("packed documents: mixers that cannot restart their state refuse seq_idx") {
  const Packed p;
  for (const std::string mixer : {"s4", "s4d"}) {
    INFO("mixer ", mixer);
    auto model = tiny_model({"mamba", mixer});
    CHECK_FALSE(model->supports_seq_idx());
    CHECK_FALSE(model->block(1)->mixer()->supports_seq_idx());
    std::string msg = testing::user_error_of([&] { model->forward(p.ids_tensor(), p.seq_idx()); });
    CHECK(msg.find("layers.1.mixer") != std::string::npos);
    CHECK(msg.find("document") != std::string::npos);
    // Without seq_idx the model runs as ever.
    CHECK(model->forward(p.ids_tensor()).logits.shape() == Dims{2, kL, 16});
  }
  // Position-wise mixers take it (and ignore it); a seq_idx of the wrong shape is refused.
  auto mlp = tiny_model({"mlp", "moe"});
  CHECK(mlp->supports_seq_idx());
  Tensor bad = Tensor::zeros({2, kL - 1}, DType::i32);
  std::string msg = testing::user_error_of([&] { mlp->forward(p.ids_tensor(), bad); });
  CHECK(msg.find("seq_idx") != std::string::npos);
}
