// train_step against the synchronous recipe it replaced (losses read, clip_grad_norm, step
// unless non-finite): the same values and bitwise the same parameters and optimizer state,
// with a non-finite step among them, on the CPU and on CUDA; and on CUDA, a step that never
// waits for the device (the profiler's count of host waits, and a held compute stream).
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <cstring>
#include <optional>
#include <algorithm>
#include <random>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/ops.h"
#include "core/profiler.h"
#include "cuda_stream_block.h"
#include "train/config.h"
#include "train/setup.h"
#include "train/grad_buckets.h"
#include "train/step.h"
#include "optim/clip.h"
#include "train/zero.h"

using namespace ssmtrain;

namespace {

Config step_config(const std::string& device) {
  const std::string yaml = R"(
model: {mixer: mamba, d_model: 16, n_layer: 2, d_state: 4, vocab_size: 16}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
optim: {lr: 0.01, grad_clip: 0.05}
budget: {steps: 8}
train: {batch_size: 2, seq_len: 16, grad_accum: 2}
)";
  return parse_config(yaml, "step.yaml", {"train.device=" + device});
}

struct Setup {
  Config config;
  Device device;
  std::shared_ptr<LanguageModel> model;
  std::unique_ptr<Optimizer> optimizer;
  std::vector<Tensor> params;
  std::mt19937_64 rng{7};

  explicit Setup(const std::string& device_name) : config(step_config(device_name)) {
    device = train_device(config);
    Generator gen(static_cast<uint64_t>(config.train.seed));
    model = build_language_model(model_spec(config), gen);
    if (!device.is_cpu()) model->to(device);
    optimizer = make_optimizer(config, *model);
    params = optimizer->parameters();
    model->train();
  }
  NextBatch batches() {
    return [this] {
      const int64_t B = config.train.batch_size, L = config.train.seq_len;
      std::uniform_int_distribution<int64_t> token(0, 15);
      std::vector<int64_t> ids(static_cast<size_t>(B * L)), targets(ids.size());
      for (auto& t : ids) t = token(rng);
      for (auto& t : targets) t = token(rng);
      return std::pair{Tensor::from_vector(ids, {B, L}, device), Tensor::from_vector(targets, {B, L}, device)};
    };
  }
  PendingStep step() {
    return train_step(*model, *optimizer, params, Dist::get(), batches(), config.train.grad_accum,
                      config.optim.grad_clip);
  }
};

// The step as the trainer did it before the deferred reads.
StepResult synchronous_step(Setup& s) {
  NextBatch next = s.batches();
  const int64_t accum = s.config.train.grad_accum;
  std::vector<Tensor> losses;
  for (int64_t micro = 0; micro < accum; ++micro) {
    const MicroBatch batch = next();
    LMLoss out = s.model->forward_loss(batch.ids, batch.targets);
    Tensor total = out.loss;
    if (out.aux_loss.defined()) total = add(out.loss, out.aux_loss);
    if (accum > 1) total = mul(total, 1.0 / static_cast<double>(accum));
    losses.push_back(out.loss.detach());
    backward(total);
  }
  StepResult r;
  double loss_sum = 0;
  bool finite = true;
  for (const Tensor& l : losses) {
    const double v = l.to(Device::cpu()).item<float>();
    finite = finite && std::isfinite(v);
    loss_sum += v;
  }
  r.loss = loss_sum / static_cast<double>(accum);
  r.finite = finite;
  r.clip = clip_grad_norm(s.params, s.config.optim.grad_clip);
  if (r.finite && r.clip.finite) {
    s.optimizer->step();
    r.applied = true;
  }
  s.model->zero_grad();
  return r;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  std::vector<float> x = a.to(DType::f32).to_vector<float>(), y = b.to(DType::f32).to_vector<float>();
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

// Fills the first parameter with `value` (NaN: a non-finite loss); returns its old value.
Tensor poison(Setup& s, float value) {
  NoGradGuard no_grad;
  Tensor p = s.params.front();
  Tensor saved = p.clone();
  backend(p.device()).copy(Tensor::full(p.shape(), value, DType::f32, p.device()), p);
  return saved;
}

void restore(Setup& s, const Tensor& saved) {
  NoGradGuard no_grad;
  backend(saved.device()).copy(saved, s.params.front());
}

// Elementwise |a - b| <= 1e-5 (1 + |a|): ZeRO's parameters against the plain step's, which
// differ only through the clip factor's last bits.
bool ref_close(const Tensor& a, const Tensor& b) {
  std::vector<float> x = a.to_vector<float>(), y = b.to_vector<float>();
  if (x.size() != y.size()) return false;
  for (size_t i = 0; i < x.size(); ++i)
    if (std::fabs(x[i] - y[i]) > 1e-5f * (1.0f + std::fabs(x[i]))) return false;
  return true;
}

std::vector<std::string> devices_under_test() {
  std::vector<std::string> d{"cpu"};
  if (cuda_available())
    d.push_back("cuda");
  else
    MESSAGE("CUDA tests skipped: no GPU");
  return d;
}

}  // namespace

TEST_CASE("train_step gives the synchronous step's values, parameters and state bitwise") {
  for (const std::string& device : devices_under_test()) {
    INFO("device " << device);
    Setup sync(device), deferred(device);
    std::optional<PendingStep> previous;
    for (int step = 1; step <= 5; ++step) {
      INFO("step " << step);
      const bool bad = step == 3;  // a NaN weight: a non-finite loss, the update skipped
      Tensor saved_sync, saved_deferred;
      if (bad) {
        saved_sync = poison(sync, NAN);
        saved_deferred = poison(deferred, NAN);
      }
      for (Setup* s : {&sync, &deferred}) s->optimizer->set_lr(1e-2 * step);
      StepResult expected = synchronous_step(sync);
      PendingStep pending = deferred.step();
      if (previous) previous->resolve();  // read one step late, as the trainer does
      const StepResult& got = pending.resolve();
      CHECK((got.loss == expected.loss || (std::isnan(got.loss) && std::isnan(expected.loss))));
      CHECK(got.finite == expected.finite);
      CHECK(got.applied == expected.applied);
      CHECK(got.applied == !bad);
      if (!bad) {
        CHECK(got.clip.norm == expected.clip.norm);
        CHECK(got.clip.scale == expected.clip.scale);
        CHECK(got.clip.clipped == expected.clip.clipped);
      }
      if (bad) {
        restore(sync, saved_sync);
        restore(deferred, saved_deferred);
      }
      previous.emplace(std::move(pending));
    }
    deferred.optimizer->resolve_pending();
    CHECK(deferred.optimizer->step_count() == 4);
    CHECK(deferred.optimizer->step_count() == sync.optimizer->step_count());
    for (size_t i = 0; i < sync.params.size(); ++i) {
      INFO("parameter " << i);
      CHECK(same_bits(sync.params[i], deferred.params[i]));
    }
    auto a = sync.optimizer->export_state(), b = deferred.optimizer->export_state();
    REQUIRE(a.size() == b.size());
    for (size_t k = 0; k < a.size(); ++k) {
      INFO(a[k].param_name << " " << a[k].kind);
      if (a[k].kind == "step")
        CHECK(a[k].value.item<int64_t>() == b[k].value.item<int64_t>());
      else
        CHECK(same_bits(a[k].value, b[k].value));
    }
  }
}

TEST_CASE("a CUDA train_step does not wait for the device") {
#if defined(SSMTRAIN_WITH_CUDA)
  if (!cuda_available()) {
    MESSAGE("CUDA tests skipped: no GPU");
    return;
  }
  Setup s("cuda");
  s.step().resolve();  // warm-up: caches, pools and staging buffers
  s.step().resolve();

  // The profiler counts every host wait (stream synchronisations, event waits that block).
  profiler::start(s.device);
  int64_t waits_inside = 0;
  std::optional<PendingStep> previous;
  for (int i = 0; i < 3; ++i) {
    const int64_t before = profiler::counters().syncs;
    PendingStep pending = s.step();
    waits_inside += profiler::counters().syncs - before;
    if (previous) previous->resolve();
    previous.emplace(std::move(pending));
  }
  previous->resolve();
  profiler::stop();
  CHECK(waits_inside == 0);

  // With the compute stream held, two steps are still launched and neither is done.
  std::optional<PendingStep> first, second;
  {
    testing::StreamBlock block(0);
    first.emplace(s.step());
    second.emplace(s.step());
    CHECK_FALSE(first->ready());
    CHECK_FALSE(block.timed_out());
  }
  CHECK(std::isfinite(first->resolve().loss));
  CHECK(std::isfinite(second->resolve().loss));
  CHECK(second->resolve().applied);
  s.optimizer->resolve_pending();
  CHECK(s.optimizer->pending_updates() == 0);
#else
  MESSAGE("CUDA tests skipped: built without CUDA");
#endif
}

// The bucketed path (train/grad_buckets.h) and ZeRO-1 (train/zero.h) in a world of one: the
// collectives are copies, the average a multiplication by 1, so the step must equal the
// plain one bitwise (ZeRO's clip norm sums the same squares in f64 in one piece; the norm
// may differ in its last bits, which the clip factor of 0.05 / norm carries into the
// update: so ZeRO is compared to 1e-6, the replicated buckets bitwise). Small buckets make
// the hook start most of them during the backward. A step with a NaN weight is skipped by
// all three, leaving parameters and optimizer state as they were.
void check_buckets_in_a_world_of_one(const std::string& device) {
  Setup plain(device), bucketed(device), sharded(device);
  auto specs = [](Setup& s) {
    std::vector<ParamSpec> v = param_specs(s.model->named_parameters());
    std::reverse(v.begin(), v.end());
    return v;
  };
  GradBuckets buckets(Dist::get(), specs(bucketed), 0.002, DType::f32, false);
  GradBuckets shards(Dist::get(), specs(sharded), 0.002, DType::f32, true);
  ZeroOptimizer zero(shards, dynamic_cast<const AdamW&>(*sharded.optimizer));
  REQUIRE(buckets.bucket_count() > 4);
  CHECK(zero.state_elements() == shards.flat_size());
  for (int step = 1; step <= 4; ++step) {
    INFO("step " << step);
    // Step 3 has a NaN weight: a non-finite loss and gradient, so every form skips it.
    const bool bad = step == 3;
    Tensor saved[3];
    if (bad) {
      saved[0] = poison(plain, std::nanf(""));
      saved[1] = poison(bucketed, std::nanf(""));
      saved[2] = poison(sharded, std::nanf(""));
    }
    const StepResult a = plain.step().resolve();
    const StepResult b = train_step(*bucketed.model, *bucketed.optimizer, bucketed.params, Dist::get(),
                                    bucketed.batches(), bucketed.config.train.grad_accum,
                                    bucketed.config.optim.grad_clip, true, DataParallelStep{&buckets, true, nullptr})
                             .resolve();
    const StepResult c = train_step(*sharded.model, *sharded.optimizer, sharded.params, Dist::get(),
                                    sharded.batches(), sharded.config.train.grad_accum, sharded.config.optim.grad_clip,
                                    true, DataParallelStep{&shards, true, &zero})
                             .resolve();
    if (bad) {
      CHECK(!a.applied);
      CHECK(!b.applied);
      CHECK(!c.applied);
      restore(plain, saved[0]);
      restore(bucketed, saved[1]);
      restore(sharded, saved[2]);
    } else {
      CHECK(a.applied);
      CHECK(b.applied);
      CHECK(c.applied);
      CHECK(a.loss == b.loss);
      CHECK(a.clip.norm == b.clip.norm);
      CHECK(c.loss == doctest::Approx(a.loss).epsilon(1e-6));
      // Step 1: the same gradients, their exact f64 squares summed in another order (~1e-12).
      // Later steps start from parameters that differ in their last bits (on CUDA the plain
      // AdamW applies the clip factor computed on the device, ZeRO the host's), so the
      // gradients and their norm differ as the loss does.
      CHECK(c.clip.norm == doctest::Approx(a.clip.norm).epsilon(step == 1 ? 1e-9 : 1e-6));
    }
    // All but the first bucket complete before the backward ends (the embedding, first in
    // registration, is last in bucket order and finished by the very last node).
    CHECK(buckets.started_in_backward() + 1 >= buckets.bucket_count());
    CHECK(buckets.started_in_backward() > 0);
    for (size_t i = 0; i < plain.params.size(); ++i) {
      CHECK(same_bits(plain.params[i], bucketed.params[i]));
      CHECK(ref_close(plain.params[i], sharded.params[i]));
    }
  }
}

TEST_CASE("train_step with gradient buckets and ZeRO-1 in a world of one equals the plain step") {
  check_buckets_in_a_world_of_one("cpu");
}

// The same on the GPU: the bucket copies, the casts and the ZeRO shard update run as CUDA
// kernels on the compute stream (a world of one has no communication stream), and the
// result must still equal the plain CUDA step (bitwise; ZeRO to 1e-6 as above).
TEST_CASE("CUDA train_step with gradient buckets and ZeRO-1 in a world of one equals the plain step") {
#if defined(SSMTRAIN_WITH_CUDA)
  if (!cuda_available()) {
    MESSAGE("CUDA tests skipped: no GPU");
    return;
  }
  // Full f32 GEMMs: with TF32 a last-bit difference of a parameter can move a product's
  // 10-bit rounding, far more than the comparison above allows for.
  const bool tf32 = allow_tf32();
  set_allow_tf32(false);
  check_buckets_in_a_world_of_one("cuda");
  set_allow_tf32(tf32);
#else
  MESSAGE("CUDA tests skipped: built without CUDA");
#endif
}

// ZeRO-1's clip status, computed with tensor ops on the gradients' device, against the host
// clip's arithmetic (optim/clip.cpp clip_owned): norm = sqrt(squares), factor max_norm /
// (norm + 1e-6) applied only below 1, skip on a non-finite norm or loss. Same IEEE f64
// operations in the same order, so the values are equal, not merely close.
TEST_CASE("ZeRO-1's device clip status equals the host clip's arithmetic") {
  struct Case {
    double squares, max_norm, loss;
  };
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  const Case cases[] = {{4.0, 1.0, 2.5},  {0.25, 1.0, 2.5}, {4.0, 0.0, 2.5},  {4.0, -1.0, 2.5},
                        {inf, 1.0, 2.5},  {nan, 1.0, 2.5},  {4.0, 1.0, nan},  {4.0, 1.0, inf},
                        {0.0, 1.0, 2.5},  {1e-300, 0.5, 0.1}, {9.0, 3.0000001, 1.0}};
  for (const std::string& device : devices_under_test()) {
    const Device dev = Device::parse(device);
    for (const Case& c : cases) {
      CAPTURE(device);
      CAPTURE(c.squares);
      CAPTURE(c.max_norm);
      CAPTURE(c.loss);
      const Tensor status = ZeroOptimizer::clip_status(Tensor::full({1}, c.squares, DType::f64, dev), c.max_norm,
                                                       Tensor::scalar(c.loss, DType::f64, dev));
      const std::vector<double> s = status.to_vector<double>();
      REQUIRE(s.size() == static_cast<size_t>(kClipStatusSize));
      const double norm = std::sqrt(c.squares);
      const bool finite = std::isfinite(norm), skip = !finite || !std::isfinite(c.loss);
      const double coef = c.max_norm / (norm + 1e-6);
      const bool clipped = finite && c.max_norm > 0 && coef < 1.0;  // the norm's finiteness only, as clip_owned
      CHECK((s[kClipNorm] == norm || (std::isnan(norm) && std::isnan(s[kClipNorm]))));
      CHECK(s[kClipScale] == (clipped ? coef : 1.0));
      CHECK(s[kClipSkip] == (skip ? 1.0 : 0.0));
      CHECK(s[kClipClipped] == (clipped ? 1.0 : 0.0));
    }
    // Without a loss only the norm decides.
    const std::vector<double> s =
        ZeroOptimizer::clip_status(Tensor::full({1}, 16.0, DType::f64, dev), 1.0, Tensor()).to_vector<double>();
    CHECK(s[kClipSkip] == 0.0);
    CHECK(s[kClipClipped] == 1.0);
  }
}
