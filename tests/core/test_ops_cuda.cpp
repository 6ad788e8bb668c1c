// CUDA against the CPU reference for every op, forward and backward, in f32 and bf16, plus
// the MLP training run compared parameter by parameter. Every case starts with
// cuda_test_device(), which skips visibly where no GPU is present.
#include <doctest/doctest.h>

#include <functional>
#include <string>

#include "core/backend.h"
#include "core/ops.h"
#include "gradcheck.h"
#include "mlp_training.h"
#include "op_reference.h"

using namespace ssmtrain;

namespace {

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

// One op case: the inputs are built on the CPU (floating inputs in `dtype` require grad,
// integer inputs are indices) and copied to the GPU.
struct DeviceCase {
  std::string name;
  OpFn fn;
  std::vector<Tensor> inputs;
};

// f32: the devices differ only in summation order and libm/intrinsic rounding (a few ulp per
// op), far below 1e-4. bf16: both round float results to 8 bits, but a value near a rounding
// boundary may land one bf16 ulp (2^-8 relative) apart, and gradients chain a few such ops.
ref::Tolerance device_tolerance(DType dt) { return dt == DType::bf16 ? ref::Tolerance{3e-2, 3e-2} : ref::Tolerance{1e-4, 1e-5}; }

void compare_on_devices(const DeviceCase& c, DType dt) {
  INFO(c.name, " ", std::string(dtype_name(dt)));
  Device gpu = Device::cuda(0);
  std::vector<Tensor> on_cpu, on_gpu;
  for (const Tensor& t : c.inputs) {
    Tensor base = t.detach();  // the case's tensors are shared by both dtype runs: fresh leaves each time
    Tensor h = is_floating(base.dtype()) ? base.to(dt) : base;
    Tensor d = h.to(gpu);
    if (is_floating(h.dtype())) {
      h.requires_grad_();
      d.requires_grad_();
    }
    on_cpu.push_back(h);
    on_gpu.push_back(d);
  }
  // One device at a time: backward consumes the whole (thread-local) tape.
  Generator gen(99);
  Tensor y_cpu = c.fn(on_cpu);
  bool differentiable = y_cpu.requires_grad();
  // A fixed random weighting of the outputs, identical on both devices.
  Tensor w = random_tensor(y_cpu.shape(), gen, DType::f32);
  if (differentiable) backward(sum(cast(y_cpu, DType::f32) * w));
  Tensor y_gpu = c.fn(on_gpu);
  if (differentiable) backward(sum(cast(y_gpu, DType::f32) * w.to(gpu)));
  REQUIRE(y_gpu.device() == gpu);
  REQUIRE(y_gpu.shape() == y_cpu.shape());
  CHECK(y_gpu.dtype() == y_cpu.dtype());
  CHECK(y_gpu.requires_grad() == differentiable);
  ref::Tolerance tol = device_tolerance(dt);
  check_close(y_gpu.to(Device::cpu()), y_cpu, tol.rtol, tol.atol, "forward");
  if (!differentiable) return;
  for (size_t i = 0; i < on_cpu.size(); ++i) {
    if (!on_cpu[i].requires_grad()) continue;
    INFO("gradient of input ", i);
    REQUIRE(on_cpu[i].grad().defined() == on_gpu[i].grad().defined());
    if (!on_cpu[i].grad().defined()) continue;
    CHECK(on_gpu[i].grad().device() == gpu);
    check_close(on_gpu[i].grad().to(Device::cpu()), on_cpu[i].grad(), tol.rtol, tol.atol, "backward");
  }
}

Tensor rnd(const Dims& shape, Generator& gen, double lo = -1, double hi = 1) {
  return random_tensor(shape, gen, DType::f32, Device::cpu(), lo, hi);
}

Tensor ids(const std::vector<int64_t>& v, const Dims& shape) { return Tensor::from_vector(v, shape); }

std::vector<DeviceCase> elementwise_cases(Generator& g) {
  auto u = [](Tensor (*f)(const Tensor&)) { return [f](const std::vector<Tensor>& in) { return f(in[0]); }; };
  Tensor x = rnd({33, 17}, g, -2, 2), pos = rnd({33, 17}, g, 0.2, 3);
  return {
      {"neg", u(neg), {x}},
      {"exp", u(exp), {x}},
      {"log", u(log), {pos}},
      {"log1p", u(log1p), {pos}},
      {"sqrt", u(sqrt), {pos}},
      {"rsqrt", u(rsqrt), {pos}},
      {"square", u(square), {x}},
      {"abs", u(abs), {x}},
      {"sigmoid", u(sigmoid), {x}},
      {"softplus", [](const std::vector<Tensor>& in) { return softplus(in[0] * 12.0); }, {x}},
      {"silu", u(silu), {x}},
      {"gelu", u(gelu), {x}},
      {"tanh", u(tanh), {x}},
      {"relu", u(relu), {x}},
      {"pow", [](const std::vector<Tensor>& in) { return pow(in[0], 1.7); }, {pos}},
      {"clamp", [](const std::vector<Tensor>& in) { return clamp(in[0], -0.5, 0.8); }, {x}},
      {"scalar arithmetic", [](const std::vector<Tensor>& in) { return (2.0 - in[0] * 3.0 + 1.0) / 2.0; }, {x}},
      {"rdiv", [](const std::vector<Tensor>& in) { return 1.5 / in[0]; }, {pos}},
      {"add broadcast", [](const std::vector<Tensor>& in) { return in[0] + in[1]; }, {rnd({5, 1, 7}, g), rnd({3, 1}, g)}},
      {"sub strided", [](const std::vector<Tensor>& in) { return in[0].transpose(0, 1) - in[1]; },
       {rnd({7, 5}, g), rnd({5, 7}, g)}},
      {"mul broadcast", [](const std::vector<Tensor>& in) { return in[0] * in[1]; }, {rnd({4, 6}, g), rnd({6}, g)}},
      {"div broadcast", [](const std::vector<Tensor>& in) { return in[0] / in[1]; }, {rnd({4, 6}, g), rnd({4, 1}, g, 0.5, 2)}},
      {"maximum", [](const std::vector<Tensor>& in) { return maximum(in[0], in[1]); }, {rnd({4, 6}, g), rnd({6}, g)}},
      {"minimum", [](const std::vector<Tensor>& in) { return minimum(in[0], in[1]); }, {rnd({4, 6}, g), rnd({4, 1}, g)}},
      {"comparisons", [](const std::vector<Tensor>& in) { return lt(in[0], in[1]) + ge(in[0], in[1]) * 2.0 + ne(in[0], in[1]); },
       {rnd({4, 6}, g), rnd({6}, g)}},
      {"where", [](const std::vector<Tensor>& in) { return where(gt(in[0], in[1]), in[0], in[1] * 2.0); },
       {rnd({4, 6}, g), rnd({4, 6}, g)}},
      {"masked_fill", [](const std::vector<Tensor>& in) { return masked_fill(in[0], gt(in[1], Tensor::zeros({}, in[1].dtype(), in[1].device())), 3.0); },
       {rnd({4, 6}, g), rnd({6}, g)}},
  };
}

std::vector<DeviceCase> reduction_cases(Generator& g) {
  Tensor x = rnd({6, 5, 40}, g);
  std::vector<DeviceCase> cases;
  for (Dims axes : {Dims{}, Dims{0}, Dims{2}, Dims{0, 2}}) {
    cases.push_back({"sum " + axes.str(), [axes](const std::vector<Tensor>& in) { return sum(in[0], axes); }, {x}});
    cases.push_back({"mean " + axes.str(), [axes](const std::vector<Tensor>& in) { return mean(in[0], axes, true); }, {x}});
    cases.push_back({"max " + axes.str(), [axes](const std::vector<Tensor>& in) { return max(in[0], axes); }, {x}});
    cases.push_back(
        {"logsumexp " + axes.str(), [axes](const std::vector<Tensor>& in) { return logsumexp(in[0], axes); }, {x}});
  }
  for (int axis : {0, 2})
    for (bool rev : {false, true})
      cases.push_back({"cumsum", [axis, rev](const std::vector<Tensor>& in) { return cumsum(in[0], axis, rev); }, {x}});
  return cases;
}

std::vector<DeviceCase> matmul_cases(Generator& g) {
  auto mm = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  return {
      {"matmul 2d", mm, {rnd({33, 65}, g), rnd({65, 17}, g)}},
      {"matmul batched", mm, {rnd({3, 9, 16}, g), rnd({3, 16, 5}, g)}},
      {"matmul shared", mm, {rnd({2, 3, 9, 16}, g), rnd({16, 5}, g)}},
      {"matmul broadcast", mm, {rnd({2, 1, 9, 16}, g), rnd({3, 16, 5}, g)}},
      {"matmul vector", mm, {rnd({16}, g), rnd({3, 16, 5}, g)}},
      {"matmul transposed", [](const std::vector<Tensor>& in) { return matmul(in[0].transpose(-1, -2), in[1].transpose(0, 1)); },
       {rnd({2, 16, 9}, g), rnd({5, 16}, g)}},
      {"linear", [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); },
       {rnd({4, 7, 24}, g), rnd({10, 24}, g), rnd({10}, g)}},
      {"linear without bias", [](const std::vector<Tensor>& in) { return linear(in[0], in[1]); },
       {rnd({7, 24}, g), rnd({10, 24}, g)}},
  };
}

std::vector<DeviceCase> fused_cases(Generator& g) {
  Tensor targets = ids({3, -100, 0, 9, 9, 4, -100, 1}, {2, 4});
  Tensor logits = rnd({2, 4, 10}, g, -3, 3);
  return {
      {"softmax", [](const std::vector<Tensor>& in) { return softmax(in[0], 1); }, {rnd({3, 50, 4}, g, -3, 3)}},
      {"log_softmax", [](const std::vector<Tensor>& in) { return log_softmax(in[0]); }, {rnd({3, 50}, g, -3, 3)}},
      {"cross_entropy", [](const std::vector<Tensor>& in) { return cross_entropy(in[0], in[1]); }, {logits, targets}},
      {"cross_entropy_per_token", [](const std::vector<Tensor>& in) { return cross_entropy_per_token(in[0], in[1]); },
       {logits, targets}},
      {"rms_norm", [](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1]); },
       {rnd({3, 5, 64}, g, -2, 2), rnd({64}, g, 0.5, 1.5)}},
      {"rms_norm without weight", [](const std::vector<Tensor>& in) { return rms_norm(in[0], Tensor()); },
       {rnd({7, 33}, g, -2, 2)}},
      {"layer_norm", [](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], in[2]); },
       {rnd({3, 5, 64}, g, -2, 2), rnd({64}, g, 0.5, 1.5), rnd({64}, g)}},
      {"embedding", [](const std::vector<Tensor>& in) { return embedding(in[0], in[1]); },
       {rnd({12, 16}, g), ids({3, 3, 11, 0, 5, 3}, {2, 3})}},
      {"index_select", [](const std::vector<Tensor>& in) { return index_select(in[0], 1, in[1]); },
       {rnd({4, 6, 3}, g), ids({5, 0, 5, 2}, {4})}},
      {"gather", [](const std::vector<Tensor>& in) { return gather(in[0], 1, in[1]); },
       {rnd({2, 5}, g), ids({4, 4, 0, 1, 2, 2, 3, 0}, {2, 4})}},
      {"cat", [](const std::vector<Tensor>& in) { return cat({in[0], in[1].transpose(0, 1)}, 1); },
       {rnd({3, 4}, g), rnd({5, 3}, g)}},
      {"stack", [](const std::vector<Tensor>& in) { return stack({in[0], in[1]}, 1); }, {rnd({3, 4}, g), rnd({3, 4}, g)}},
      {"pad", [](const std::vector<Tensor>& in) { return pad(in[0], 0, 2, 1, 0.5); }, {rnd({3, 4}, g)}},
      {"cast", [](const std::vector<Tensor>& in) { return cast(in[0], DType::f32) * 2.0; }, {rnd({3, 4}, g)}},
      {"dropout", [](const std::vector<Tensor>& in) {
         Generator drop(5);
         return dropout(in[0], 0.3, drop, true);
       }, {rnd({16, 33}, g)}},
  };
}

void run_cases(const std::vector<DeviceCase>& cases) {
  for (DType dt : {DType::f32, DType::bf16})
    for (const DeviceCase& c : cases) compare_on_devices(c, dt);
}

}  // namespace

TEST_CASE("cuda elementwise ops match the cpu forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(80);
  run_cases(elementwise_cases(gen));
}

TEST_CASE("cuda reductions match the cpu forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(81);
  run_cases(reduction_cases(gen));
}

TEST_CASE("cuda matmul and linear match the cpu forward and backward") {
  if (!cuda_test_device()) return;
  set_allow_tf32(false);
  Generator gen(82);
  run_cases(matmul_cases(gen));
}

TEST_CASE("cuda fused and shape ops match the cpu forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(83);
  run_cases(fused_cases(gen));
}

TEST_CASE("cuda random fills and dropout masks are identical to the cpu") {
  if (!cuda_test_device()) return;
  Generator a(11, 123), b(11, 123);
  Tensor u_cpu = Tensor::rand({1000}, a), u_gpu = Tensor::rand({1000}, b, DType::f32, Device::cuda(0));
  check_close(u_gpu.to(Device::cpu()), u_cpu, 0, 0, "rand");
  Tensor x = Tensor::ones({4, 64});
  Tensor d_cpu = dropout(x, 0.5, a, true), d_gpu = dropout(x.to(Device::cuda(0)), 0.5, b, true);
  check_close(d_gpu.to(Device::cpu()), d_cpu, 0, 0, "dropout mask");
}

TEST_CASE("cuda errors name the devices of mismatched operands") {
  if (!cuda_test_device()) return;
  Tensor a = Tensor::zeros({2}), b = Tensor::zeros({2}, DType::f32, Device::cuda(0));
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("devices differ (cpu vs cuda:0)"), UserError);
}

// Tolerance: with TF32 off, every op on the GPU rounds in fp32 like the CPU, differing only
// in summation order (GEMM and reduction trees) and transcendental rounding: a few ulp
// (~1e-7 relative) per op. SGD with this step size on a smooth loss is not chaotic, so the
// per-step differences add up rather than multiply: 200 steps of ~1e-7 drift stay near 1e-5
// relative. rtol 2e-4 / atol 2e-5 bounds that with margin, yet catches any op that differs by
// more than rounding (a wrong kernel moves the parameters by orders of magnitude more).
TEST_CASE("cuda MLP training matches the cpu run to fp32 rounding") {
  if (!cuda_test_device()) return;
  set_allow_tf32(false);
  mlp_test::MlpRun cpu_run = mlp_test::train_mlp(Device::cpu());
  mlp_test::MlpRun gpu_run = mlp_test::train_mlp(Device::cuda(0));
  REQUIRE(cpu_run.params.size() == gpu_run.params.size());
  for (size_t i = 0; i < cpu_run.params.size(); ++i) {
    INFO("parameter ", i);
    check_close(gpu_run.params[i], cpu_run.params[i], 2e-4, 2e-5, "MLP parameter after 200 steps");
  }
  CHECK(gpu_run.losses.back() == doctest::Approx(cpu_run.losses.back()).epsilon(1e-3));
}
