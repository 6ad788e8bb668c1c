// Gradient accumulation equivalence, and the CUDA multi-tensor kernels against the CPU.
#include <doctest/doctest.h>

#include "core/autograd.h"
#include "core/ops.h"
#include "gradcheck.h"
#include "optim/adamw.h"
#include "optim/clip.h"

using namespace ssmtrain;

namespace {

// A two-layer classifier built from core ops (optim/ cannot use nn/, so its tests build
// models directly): logits = W2 gelu(W1 x + b1), mean cross-entropy.
struct TinyNet {
  Tensor w1, b1, w2;
  explicit TinyNet(uint64_t seed) {
    Generator gen(seed);
    w1 = random_tensor({16, 8}, gen, DType::f32, Device::cpu(), -0.3, 0.3);
    b1 = random_tensor({16}, gen, DType::f32, Device::cpu(), -0.1, 0.1);
    w2 = random_tensor({5, 16}, gen, DType::f32, Device::cpu(), -0.3, 0.3);
    w1.requires_grad_().set_name("w1");
    b1.requires_grad_().set_name("b1");
    w2.requires_grad_().set_name("w2");
  }
  Tensor loss(const Tensor& x, const Tensor& y) const { return cross_entropy(linear(gelu(linear(x, w1, b1)), w2), y); }
  std::vector<ParamGroup> groups() const {
    ParamGroup decay{"decay", {{"w1", w1, {}}, {"w2", w2, {}}}, std::nullopt, 1.0, 0.1};
    ParamGroup no_decay{"no_decay", {{"b1", b1, {}}}, std::nullopt, 1.0, 0.0};
    return {decay, no_decay};
  }
};

}  // namespace

TEST_CASE("two accumulated micro-batches equal one batch of twice the size") {
  const int64_t B = 6;
  Generator data(99);
  Tensor x = random_tensor({2 * B, 8}, data);
  Tensor y = Tensor::randint({2 * B}, data, 0, 5);
  TinyNet whole(1), accumulated(1);
  AdamW opt_whole(whole.groups(), 1e-2), opt_acc(accumulated.groups(), 1e-2);
  for (int step = 0; step < 3; ++step) {
    backward(whole.loss(x, y));
    // The trainer divides each micro-batch loss by the number of micro-batches.
    for (int micro = 0; micro < 2; ++micro)
      backward(mul(accumulated.loss(x.narrow(0, micro * B, B), y.narrow(0, micro * B, B)), 0.5));
    check_close(accumulated.w1.grad(), whole.w1.grad(), 1e-5, 1e-7, "accumulated w1 grad");
    opt_whole.step();
    opt_acc.step();
    opt_whole.zero_grad();
    opt_acc.zero_grad();
  }
  check_close(accumulated.w1, whole.w1, 1e-5, 1e-6, "w1 after AdamW");
  check_close(accumulated.b1, whole.b1, 1e-5, 1e-6, "b1 after AdamW");
  check_close(accumulated.w2, whole.w2, 1e-5, 1e-6, "w2 after AdamW");
  // And the step did something.
  TinyNet fresh(1);
  CHECK(fresh.w1.to_vector<float>() != whole.w1.to_vector<float>());
}

TEST_CASE("AdamW CUDA multi-tensor step matches the CPU loop") {
  if (!cuda_test_device()) return;
  const Device gpu = Device::cuda(0);
  // Sizes around the chunk and vector widths: 1, 7, one chunk + 5, 1000.
  std::vector<Dims> shapes = {{1}, {7}, {65536 + 5}, {40, 25}};
  Generator gen(5);
  std::vector<Tensor> cpu_params, gpu_params;
  ParamGroup cpu_decay{"decay", {}, std::nullopt, 1.0, 0.1}, gpu_decay{"decay", {}, std::nullopt, 1.0, 0.1};
  for (size_t i = 0; i < shapes.size(); ++i) {
    Tensor p = random_tensor(shapes[i], gen);
    Tensor q = p.to(gpu);
    std::string name = "p" + std::to_string(i);
    p.requires_grad_().set_name(name);
    q.requires_grad_().set_name(name);
    cpu_params.push_back(p);
    gpu_params.push_back(q);
    cpu_decay.params.push_back({name, p, {}});
    gpu_decay.params.push_back({name, q, {}});
  }
  AdamW cpu_opt({cpu_decay}, 3e-3), gpu_opt({gpu_decay}, 3e-3);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      Tensor g = random_tensor(shapes[i], gen);
      cpu_params[i].set_grad(g);
      gpu_params[i].set_grad(g.to(gpu));
    }
    // Clipping on both devices too: same norm, same scaled gradients.
    ClipResult rc = clip_grad_norm(cpu_params, 10.0), rg = clip_grad_norm(gpu_params, 10.0);
    CHECK(rc.clipped);
    CHECK(rg.norm == doctest::Approx(rc.norm).scale(0).epsilon(1e-6));
    cpu_opt.set_lr(3e-3 * (step + 1) / 3);
    gpu_opt.set_lr(3e-3 * (step + 1) / 3);
    cpu_opt.step();
    gpu_opt.step();
  }
  for (size_t i = 0; i < shapes.size(); ++i) check_close(gpu_params[i], cpu_params[i], 1e-6, 1e-7, "param");
  auto cs = cpu_opt.export_state(), gs = gpu_opt.export_state();
  REQUIRE(cs.size() == gs.size());
  for (size_t k = 0; k < cs.size(); ++k) check_close(gs[k].value, cs[k].value, 1e-6, 1e-9, "state");
}
