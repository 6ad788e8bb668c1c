// The LM wrapper with the MLP mixer: names, shapes, tied head, counts, hooks, training.
#include <doctest/doctest.h>

#include <cmath>

#include "core/backend.h"
#include "gradcheck.h"
#include "nn/init.h"
#include "nn/lm.h"

using namespace ssmtrain;

namespace {

LMConfig tiny_config() {
  LMConfig c;
  c.vocab_size = 50;  // padded to 56
  c.d_model = 16;
  c.n_layer = 2;
  return c;
}

std::shared_ptr<LanguageModel> tiny_lm(Generator& gen, const LMConfig& c = tiny_config(), int64_t hidden = 32) {
  MixerFactory make = [&gen, &c, hidden](int) { return std::make_shared<MLPMixer>(c.d_model, hidden, gen); };
  return std::make_shared<LanguageModel>(c, make, gen);
}

// A mixer that scales its input and reports an auxiliary loss and the dtype it saw.
struct ProbeMixer : Mixer {
  Tensor w;
  DType seen = DType::f64;
  ProbeMixer() { w = register_parameter("w", Tensor::full({}, 0.5)); }
  Tensor forward(const Tensor& x) override {
    seen = x.dtype();
    add_aux_loss(mul(mean(square(x.to(DType::f32))), 2.0));
    return mul(x, cast(w, x.dtype()));
  }
};

// Four equal "experts" (tagged) plus a router.
struct FakeMoE : Mixer {
  FakeMoE(int64_t d, Generator& gen) {
    register_module("router", std::make_shared<Linear>(d, 4, gen, LinearOptions{.bias = false}));
    auto experts = register_module("experts", std::make_shared<ModuleList>());
    for (int e = 0; e < 4; ++e) experts->push_back(std::make_shared<MLP>(d, 3 * d, gen));
    experts->tag_all_parameters(param_tag::expert);
  }
  Tensor forward(const Tensor& x) override { return x; }
};

Tensor ids_tensor(const std::vector<int64_t>& v, int64_t b, int64_t l) { return Tensor::from_vector(v, {b, l}); }

}  // namespace

TEST_CASE("padded_vocab_size rounds up to the multiple") {
  CHECK(padded_vocab_size(50277, 8) == 50280);
  CHECK(padded_vocab_size(50280, 8) == 50280);
  CHECK(padded_vocab_size(256, 8) == 256);
  CHECK(padded_vocab_size(1, 8) == 8);
  CHECK_THROWS_AS(padded_vocab_size(0, 8), UserError);
}

TEST_CASE("LanguageModel names shapes and exact parameter counts") {
  Generator gen(1);
  auto lm = tiny_lm(gen);
  CHECK(lm->padded_vocab() == 56);
  std::vector<std::string> names;
  for (auto& p : lm->named_parameters()) names.push_back(p.name);
  std::vector<std::string> expected = {"embedding.weight",
                                       "layers.0.norm.weight",
                                       "layers.0.mixer.mlp.fc1.weight",
                                       "layers.0.mixer.mlp.fc2.weight",
                                       "layers.1.norm.weight",
                                       "layers.1.mixer.mlp.fc1.weight",
                                       "layers.1.mixer.mlp.fc2.weight",
                                       "norm_f.weight"};
  CHECK(names == expected);
  // embedding 56*16 = 896; block: norm 16 + fc1 16*64 + fc2 32*16 = 1552; norm_f 16.
  ParameterCounts c = lm->parameter_counts();
  CHECK(c.total == 896 + 2 * 1552 + 16);
  CHECK(c.embedding == 896);
  CHECK(c.non_embedding == 2 * 1552 + 16);
  CHECK(c.active == c.total);
  CHECK(c.active_non_embedding == c.non_embedding);

  Tensor ids = ids_tensor({1, 2, 3, 4, 5, 6, 7, 49, 0, 3, 3, 3}, 2, 6);
  LMOutput out = lm->forward(ids);
  CHECK(out.logits.shape() == Dims{2, 6, 56});
  CHECK(out.logits.dtype() == DType::f32);
  CHECK_FALSE(out.aux_loss.defined());
  CHECK_THROWS_AS(lm->forward(Tensor::zeros({2, 3})), UserError);  // f32 ids
}

TEST_CASE("LanguageModel head is tied to the embedding") {
  Generator gen(2);
  auto lm = tiny_lm(gen);
  // No separate head parameter, and a zeroed embedding row gives a zero logit column.
  for (auto& p : lm->named_parameters()) CHECK(p.name.find("head") == std::string::npos);
  const Tensor& w = lm->embedding()->weight();
  init::zeros_(w.detach().narrow(0, 40, 1));  // a view: writes into the embedding
  Tensor ids = ids_tensor({1, 2, 3, 4}, 1, 4);
  std::vector<float> logits = lm->forward(ids).logits.to_vector<float>();
  for (int t = 0; t < 4; ++t) {
    CHECK(logits[t * 56 + 40] == 0.0f);
    CHECK(logits[t * 56 + 41] != 0.0f);
  }
  // The head's gradient reaches the embedding rows of tokens that never appear as input.
  backward(cross_entropy(lm->forward(ids).logits, ids_tensor({2, 3, 4, 5}, 1, 4)));
  std::vector<float> g = w.grad().to_vector<float>();
  double row7 = 0;
  for (int d = 0; d < 16; ++d) row7 += std::abs(g[7 * 16 + d]);
  CHECK(row7 > 0);
}

TEST_CASE("LanguageModel rescales the residual projections by one over sqrt n_layer") {
  LMConfig on = tiny_config(), off = tiny_config();
  on.n_layer = off.n_layer = 4;
  off.rescale_prenorm_residual = false;
  Generator a(3), b(3);
  auto lm_on = tiny_lm(a, on), lm_off = tiny_lm(b, off);
  std::vector<float> w_on = lm_on->parameter("layers.2.mixer.mlp.fc2.weight").to_vector<float>();
  std::vector<float> w_off = lm_off->parameter("layers.2.mixer.mlp.fc2.weight").to_vector<float>();
  for (size_t i = 0; i < w_on.size(); ++i) CHECK(w_on[i] == doctest::Approx(w_off[i] / 2.0).scale(0).epsilon(1e-6));
  CHECK(lm_on->parameter("layers.2.mixer.mlp.fc1.weight").to_vector<float>() ==
        lm_off->parameter("layers.2.mixer.mlp.fc1.weight").to_vector<float>());
  CHECK(lm_on->embedding()->weight().to_vector<float>() == lm_off->embedding()->weight().to_vector<float>());
}

TEST_CASE("LanguageModel forward equals a hand-composed forward") {
  Generator gen(4);
  auto lm = tiny_lm(gen);
  Tensor ids = ids_tensor({5, 9, 13, 2, 2, 8}, 2, 3);
  NoGradGuard ng;
  Tensor h = embedding(lm->embedding()->weight(), ids);
  for (int i = 0; i < 2; ++i) {
    auto block = lm->block(i);
    h = add(h, block->mixer()->forward(rms_norm(h, block->norm()->weight(), 1e-5)));
  }
  Tensor ref = linear(rms_norm(h, lm->norm_f()->weight(), 1e-5), lm->embedding()->weight());
  check_close(lm->forward(ids).logits, ref, 1e-6, 1e-7, "lm logits");
}

TEST_CASE("LanguageModel step matches the full forward position by position") {
  Generator gen(5);
  auto lm = tiny_lm(gen);
  Tensor ids = ids_tensor({5, 9, 13, 2, 2, 8, 1, 0}, 2, 4);
  NoGradGuard ng;
  Tensor full = lm->forward(ids).logits;
  auto states = lm->init_states(2, Device::cpu());
  CHECK(states.size() == 2);
  for (int t = 0; t < 4; ++t) {
    Tensor step_logits = lm->step(ids.select(1, t).contiguous(), states);
    check_close(step_logits, full.select(1, t), 1e-6, 1e-7, "step logits");
  }
}

TEST_CASE("LanguageModel sums auxiliary losses and runs mixers in compute_dtype") {
  LMConfig c = tiny_config();
  c.compute_dtype = DType::bf16;
  Generator gen(6);
  std::vector<std::shared_ptr<ProbeMixer>> probes;
  LanguageModel lm(c, [&](int) {
    probes.push_back(std::make_shared<ProbeMixer>());
    return probes.back();
  }, gen);
  LMOutput out = lm.forward(ids_tensor({1, 2, 3, 4}, 1, 4));
  for (auto& p : probes) CHECK(p->seen == DType::bf16);
  CHECK(out.logits.dtype() == DType::f32);
  REQUIRE(out.aux_loss.defined());
  CHECK(out.aux_loss.numel() == 1);
  CHECK(out.aux_loss.item<float>() > 0);
  // Taken once: a second forward reports only its own losses.
  float first = out.aux_loss.item<float>();
  CHECK(lm.forward(ids_tensor({1, 2, 3, 4}, 1, 4)).aux_loss.item<float>() == doctest::Approx(first));
  CHECK_THROWS_AS(lm.init_states(1, Device::cpu()), UserError);  // the probe has no step mode
}

TEST_CASE("count_parameters reports active parameters of tagged experts") {
  LMConfig c = tiny_config();
  Generator gen(7);
  LanguageModel lm(c, [&](int) { return std::make_shared<FakeMoE>(c.d_model, gen); }, gen);
  // per block: router 16*4; 4 experts of 16*48 + 48*16 = 1536 each (no biases)
  ParameterCounts one = lm.parameter_counts(1, 4);
  CHECK(one.expert == 2 * 4 * 1536);
  CHECK(one.total == 896 + 2 * (16 + 64 + 4 * 1536) + 16);
  CHECK(one.active == one.total - 2 * 3 * 1536);
  CHECK(one.active_non_embedding == one.active - 896);
  CHECK(lm.parameter_counts(2, 4).active == one.total - 2 * 2 * 1536);
  CHECK_THROWS_AS(lm.parameter_counts(5, 4), UserError);
}

TEST_CASE("LanguageModel learns a repeating token pattern on the CPU") {
  // Next token = (token + 1) mod 8: a position-wise mixer can learn it exactly.
  LMConfig c;
  c.vocab_size = 8;
  c.d_model = 32;
  c.n_layer = 2;
  Generator gen(8);
  auto lm = tiny_lm(gen, c, 64);
  const int64_t B = 4, L = 16;
  std::vector<int64_t> in(B * L), target(B * L);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t) {
      in[b * L + t] = (b * 3 + t) % 8;
      target[b * L + t] = (in[b * L + t] + 1) % 8;
    }
  Tensor ids = ids_tensor(in, B, L), targets = ids_tensor(target, B, L);
  // Plain SGD written out here: nn/ cannot reach the optimizers of optim/.
  auto sgd_step = [&](double lr) {
    NoGradGuard ng;
    for (const Tensor& p : lm->parameters()) {
      if (!p.grad().defined()) continue;
      backend(p.device()).copy(sub(p.detach(), mul(p.grad(), lr)), p);
    }
    lm->zero_grad();
  };
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    Tensor loss = cross_entropy(lm->forward(ids).logits, targets);
    double value = loss.item<float>();
    if (step == 0) first = value;
    last = value;
    backward(loss);
    sgd_step(0.5);
  }
  CHECK(first == doctest::Approx(std::log(8.0)).epsilon(0.05));
  CHECK(last < 0.2 * first);
}
