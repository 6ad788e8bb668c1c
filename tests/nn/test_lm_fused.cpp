// The LanguageModel trunk with fused residual add + norm (add_rms_norm) and the training
// forward forward_loss (fused head + loss): the same function as the unfused
// cross_entropy(forward(ids).logits, targets), and activation recomputation (LMConfig::
// recompute = mixer / block) bitwise equal to none, loss and every parameter gradient.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "core/autograd.h"
#include "core/ops.h"
#include "gradcheck.h"
#include "nn/lm.h"

using namespace ssmtrain;

namespace {

// The gated MLP mixer plus a small auxiliary loss on its input, so the recomputed nodes
// also carry a second output (the aux loss) and the input has two consumers.
struct AuxMLPMixer : MLPMixer {
  AuxMLPMixer(int64_t d, int64_t hidden, Generator& gen) : MLPMixer(d, hidden, gen) {}
  Tensor forward(const Tensor& x) override {
    add_aux_loss(mul(mean(square(x)), 0.1));
    return MLPMixer::forward(x);
  }
};

// A tiny LM in `dt` (parameters and compute dtype), identical for equal seeds.
std::shared_ptr<LanguageModel> tiny_lm(DType dt, LMConfig::Recompute rc, bool aux, int n_layer = 3,
                                       uint64_t seed = 11) {
  LMConfig c;
  c.vocab_size = 50;  // padded to 56
  c.d_model = 16;
  c.n_layer = n_layer;
  c.compute_dtype = dt;
  c.recompute = rc;
  Generator gen(seed);
  MixerFactory make = [&gen, aux, d = c.d_model](int) -> std::shared_ptr<Mixer> {
    if (aux) return std::make_shared<AuxMLPMixer>(d, 24, gen);
    return std::make_shared<MLPMixer>(d, 24, gen);
  };
  auto lm = std::make_shared<LanguageModel>(c, make, gen);
  lm->to(dt);
  return lm;
}

struct Batch {
  Tensor ids, targets;
};

// B = 2, L = 7; some targets ignored (-100), some in the padded vocabulary's real range only.
Batch batch() {
  Generator gen(12);
  Tensor ids = Tensor::randint({2, 7}, gen, 0, 50);
  std::vector<int64_t> t = Tensor::randint({2, 7}, gen, 0, 50).to_vector<int64_t>();
  t[3] = -100;
  t[9] = -100;
  return {ids, Tensor::from_vector(t, {2, 7})};
}

struct Step {
  Tensor loss, aux;
  std::vector<std::pair<std::string, Tensor>> grads;
};

// One training forward and backward of loss (+ aux): through forward_loss, or through the
// full logits and cross_entropy. Returns the values and every parameter's gradient.
Step step(LanguageModel& lm, const Batch& b, bool fused_head) {
  clear_tape();
  lm.zero_grad();
  Tensor loss, aux;
  if (fused_head) {
    LMLoss out = lm.forward_loss(b.ids, b.targets);
    loss = out.loss;
    aux = out.aux_loss;
  } else {
    LMOutput out = lm.forward(b.ids);
    loss = cross_entropy(out.logits, b.targets);
    aux = out.aux_loss;
  }
  backward(aux.defined() ? add(loss, cast(aux, loss.dtype())) : loss);
  CHECK(tape_size() == 0);
  Step s{loss.detach(), aux.defined() ? aux.detach() : Tensor(), {}};
  for (const auto& p : lm.named_parameters()) s.grads.emplace_back(p.name, p.tensor.grad());
  return s;
}

// Every gradient within rtol of the reference, relative to that tensor's largest element
// (gradients with exact zeros, e.g. unused embedding rows, are compared against that scale).
void compare(const Step& got, const Step& want, double rtol) {
  check_close(got.loss, want.loss, rtol, 0, "loss");
  REQUIRE(got.aux.defined() == want.aux.defined());
  if (want.aux.defined()) check_close(got.aux, want.aux, rtol, 0, "aux loss");
  REQUIRE(got.grads.size() == want.grads.size());
  for (size_t i = 0; i < want.grads.size(); ++i) {
    INFO("parameter ", want.grads[i].first);
    CHECK(got.grads[i].first == want.grads[i].first);
    const Tensor &g = got.grads[i].second, &w = want.grads[i].second;
    REQUIRE(g.defined());
    REQUIRE(w.defined());
    double scale = 0;
    for (double v : w.to_vector<double>()) scale = std::max(scale, std::abs(v));
    check_close(g, w, rtol, rtol * scale, want.grads[i].first.c_str());
  }
}

const char* rc_name(LMConfig::Recompute rc) {
  return rc == LMConfig::Recompute::none ? "none" : rc == LMConfig::Recompute::mixer ? "mixer" : "block";
}

}  // namespace

// In f64 the fused head differs from the logits + cross_entropy path only in summation order
// (row blocks, the GEMM for dw): ~1e-16 per operation, so 1e-10 relative is six orders of
// margin while any real difference (a missing term, a wrong mean) is O(1).
TEST_CASE("LanguageModel forward_loss equals cross_entropy of forward's logits in f64") {
  const Batch b = batch();
  for (bool aux : {false, true})
    for (LMConfig::Recompute rc : {LMConfig::Recompute::none, LMConfig::Recompute::mixer,
                                   LMConfig::Recompute::block}) {
      INFO("aux ", aux, ", recompute ", std::string(rc_name(rc)));
      auto lm = tiny_lm(DType::f64, rc, aux);
      Step fused = step(*lm, b, true), plain = step(*lm, b, false);
      CHECK(fused.loss.dtype() == DType::f64);
      CHECK(fused.loss.item<double>() > 0);
      compare(fused, plain, 1e-10);
    }
}

// Recomputation repeats the same kernels on the same data, and the tape's additions at the
// forks of the residual stream are two-term (commutative): so bitwise, in f32 and f64.
TEST_CASE("LanguageModel recompute mixer and block give bitwise the loss and gradients of none") {
  const Batch b = batch();
  for (DType dt : {DType::f64, DType::f32})
    for (bool aux : {false, true})
      for (bool fused_head : {true, false}) {
        const std::string path = fused_head ? ", forward_loss" : ", forward + cross_entropy";
        INFO(std::string(dtype_name(dt)), ", aux ", aux, path);
        auto none = tiny_lm(dt, LMConfig::Recompute::none, aux);
        const Step want = step(*none, b, fused_head);
        for (LMConfig::Recompute rc : {LMConfig::Recompute::mixer, LMConfig::Recompute::block}) {
          INFO("recompute ", std::string(rc_name(rc)));
          auto lm = tiny_lm(dt, rc, aux);
          compare(step(*lm, b, fused_head), want, 0);
          // And again: a second step on the same model is unaffected by the first.
          compare(step(*lm, b, fused_head), want, 0);
        }
      }
}

// Evaluation (no grad) through a recomputing model: the forward alone, nothing recorded.
TEST_CASE("LanguageModel with recompute evaluates under no-grad without recording") {
  const Batch b = batch();
  auto none = tiny_lm(DType::f32, LMConfig::Recompute::none, true);
  auto block = tiny_lm(DType::f32, LMConfig::Recompute::block, true);
  auto mixer = tiny_lm(DType::f32, LMConfig::Recompute::mixer, true);
  clear_tape();
  NoGradGuard no_grad;
  Tensor want = none->forward_loss(b.ids, b.targets).loss;
  for (auto* lm : {block.get(), mixer.get()}) {
    LMLoss got = lm->forward_loss(b.ids, b.targets);
    CHECK(tape_size() == 0);
    CHECK_FALSE(got.loss.requires_grad());
    check_close(got.loss, want, 0, 0, "loss under no-grad");
    REQUIRE(got.aux_loss.defined());
  }
}

// The modes do what they say: the mixers' (or whole blocks') internal nodes are not on the
// tape after the training forward, only one recompute node each.
TEST_CASE("LanguageModel recompute records fewer nodes: block < mixer < none") {
  const Batch b = batch();
  size_t nodes[3];
  int k = 0;
  for (LMConfig::Recompute rc : {LMConfig::Recompute::none, LMConfig::Recompute::mixer,
                                 LMConfig::Recompute::block}) {
    auto lm = tiny_lm(DType::f32, rc, false);
    clear_tape();
    LMLoss out = lm->forward_loss(b.ids, b.targets);
    nodes[k++] = tape_size();
    clear_tape();
  }
  INFO("tape nodes: none ", nodes[0], ", mixer ", nodes[1], ", block ", nodes[2]);
  CHECK(nodes[1] < nodes[0]);
  CHECK(nodes[2] < nodes[1]);
  // mixer: embedding, the first norm, 3 x (recompute, add_rms_norm), the fused head + loss.
  CHECK(nodes[1] == 1 + 1 + 3 * 2 + 1);
  // block: embedding, 3 recompute nodes, norm_f, the fused head + loss.
  CHECK(nodes[2] == 1 + 3 + 1 + 1);
}
