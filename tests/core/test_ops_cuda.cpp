// CUDA against the CPU reference for every op, forward and backward, in f32, bf16 and f64;
// every Backend kernel called directly on both devices over the shapes that select its code
// paths (warp or block per row, vectorised or not, chunked reductions, shared or global
// accumulators) and every dtype it accepts; determinism of the adds and reductions; the
// caching allocator's steady state; and the MLP training run compared parameter by
// parameter. Every case starts with cuda_test_device(), which skips visibly without a GPU.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>

#include "core/backend.h"
#include "core/storage.h"
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
// f64: both devices compute in double; the differences are summation order and libm ulps,
// ~1e-15 per op, so 1e-9 leaves six orders of margin while catching any real error.
ref::Tolerance device_tolerance(DType dt) {
  if (dt == DType::f64) return {1e-9, 1e-12};
  return dt == DType::bf16 ? ref::Tolerance{3e-2, 3e-2} : ref::Tolerance{1e-4, 1e-5};
}

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
      {"sin", [](const std::vector<Tensor>& in) { return sin(in[0] * 3.0); }, {x}},
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
      // Column slices: the 2-D copy path of copy (contiguous() of a part, the split's backward).
      {"split view contiguous", [](const std::vector<Tensor>& in) {
         auto p = in[0].split({5, 7, 4}, -1);
         return cat({p[0].contiguous().reshape({6, 5}), p[1].view({6, 7}) * 2.0, p[2].reshape({6, 4})}, 1);
       }, {rnd({2, 3, 16}, g)}},
      {"pad", [](const std::vector<Tensor>& in) { return pad(in[0], 0, 2, 1, 0.5); }, {rnd({3, 4}, g)}},
      {"cast", [](const std::vector<Tensor>& in) { return cast(in[0], DType::f32) * 2.0; }, {rnd({3, 4}, g)}},
      {"dropout", [](const std::vector<Tensor>& in) {
         Generator drop(5);
         return dropout(in[0], 0.3, drop, true);
       }, {rnd({16, 33}, g)}},
  };
}

void run_cases(const std::vector<DeviceCase>& cases) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64})
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

// With TF32 off every op on the GPU rounds like the CPU, differing only in summation order
// (GEMM and reduction trees) and transcendental rounding: a few ulp per op. In f64 those
// differences (~1e-16) stay far below 1e-9 after 200 steps, so the f64 run checks that the
// kernels compute the same function. In f32 (~1e-7 per op) the same run at lr 0.5 sits near
// the edge of stability, where SGD amplifies rounding differences: measured on an H200, the
// worst parameter differed by 3.6e-4 relative (6e-5 absolute) after 200 steps. The f32
// bounds (rtol 1e-3, atol 2e-4) cover that with margin and still catch any kernel that is
// wrong rather than rounded differently (which moves parameters by 1e-2 or more).
TEST_CASE("cuda MLP training matches the cpu run to rounding in f64 and f32") {
  if (!cuda_test_device()) return;
  set_allow_tf32(false);
  for (DType dtype : {DType::f64, DType::f32}) {
    INFO("dtype ", dtype_name(dtype));
    mlp_test::MlpRun cpu_run = mlp_test::train_mlp(Device::cpu(), 200, 0.5, dtype);
    mlp_test::MlpRun gpu_run = mlp_test::train_mlp(Device::cuda(0), 200, 0.5, dtype);
    REQUIRE(cpu_run.params.size() == gpu_run.params.size());
    const bool f64 = dtype == DType::f64;
    for (size_t i = 0; i < cpu_run.params.size(); ++i) {
      INFO("parameter ", i);
      check_close(gpu_run.params[i], cpu_run.params[i], f64 ? 1e-9 : 1e-3, f64 ? 1e-12 : 2e-4,
                  "MLP parameter after 200 steps");
    }
    CHECK(gpu_run.losses.back() == doctest::Approx(cpu_run.losses.back()).epsilon(f64 ? 1e-9 : 1e-3));
    // And the run learned: the loss fell by more than half.
    CHECK(gpu_run.losses.back() < 0.5 * gpu_run.losses.front());
  }
}

// ---- the Backend kernels called directly, CUDA against the CPU backend ----

namespace {

using KernelFn = std::function<std::vector<Tensor>(Backend&, const std::vector<Tensor>&)>;

// Runs fn on copies of `inputs` on the GPU, then on the CPU inputs themselves (kernels that
// add into an input mutate it, so the GPU copies are taken first), and compares every
// returned tensor. Outputs are allocated by fn on the device of inputs[0].
void compare_kernel(const std::string& what, const std::vector<Tensor>& inputs, const KernelFn& fn, double rtol,
                    double atol) {
  INFO(what);
  Device gpu = Device::cuda(0);
  std::vector<Tensor> on_gpu;
  for (const Tensor& t : inputs) on_gpu.push_back(t.defined() ? t.to(gpu) : t);
  std::vector<Tensor> got = fn(backend(gpu), on_gpu);
  backend(gpu).synchronize();
  std::vector<Tensor> want = fn(backend(Device::cpu()), inputs);
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("output ", i);
    REQUIRE(got[i].device() == gpu);
    CHECK(got[i].dtype() == want[i].dtype());
    check_close(got[i].to(Device::cpu()), want[i], rtol, atol, what.c_str());
  }
}

Tensor empty_like_on(const Dims& shape, DType dt, const std::vector<Tensor>& in) {
  return Tensor::empty(shape, dt, in[0].device());
}

// Random data of dtype dt: floats uniform in [lo, hi), integers the truncated draws.
Tensor data(const Dims& shape, Generator& g, DType dt, double lo = -1, double hi = 1) {
  return random_tensor(shape, g, DType::f64, Device::cpu(), lo, hi).to(dt);
}

std::string label(const char* op, DType dt, const Dims& shape) {
  return std::string(op) + " " + dtype_name(dt) + " " + shape.str();
}

// Tolerances of the direct comparisons. The devices differ only in the order of sums (a
// warp/block tree against the CPU's 8 lanes and chunks) and in libm last bits. For sums of
// K terms both orders err by at most ~log2(K) (tree) and K/8 (lanes) roundings of the
// partial sums; with |x| <= 1 drawn at random the error grows like sqrt(K) * eps:
// f32 at K = 1e5 gives ~3e-5 relative to the sum's scale, inside rtol 1e-4 + atol 1e-4.
// bf16 outputs are rounded to 8 bits on both devices, so two float results that straddle a
// rounding boundary differ by one bf16 ulp (2^-8 relative): rtol 1e-2. f64: eps 1e-16,
// the same argument gives ~1e-13; 1e-9 leaves margin. Integers are exact.
ref::Tolerance kernel_tolerance(DType dt) {
  switch (dt) {
    case DType::f64: return {1e-9, 1e-9};
    case DType::bf16: return {1e-2, 1e-2};
    case DType::f32: return {1e-4, 1e-4};
    default: return {0, 0};
  }
}

const DType kFloatTypes[] = {DType::f32, DType::bf16, DType::f64};
const DType kAllTypes[] = {DType::f32, DType::bf16, DType::f64, DType::i32, DType::i64};

// Row lengths that select every code path: a warp per row (<= 1024) or a block, vectors or
// not (odd lengths), exactly one warp-row tile, and lengths past a chunk.
const int64_t kRowLengths[] = {1, 7, 32, 128, 129, 1000, 1024, 1025, 4099};

}  // namespace

TEST_CASE("cuda reduce_rows matches the cpu for every dtype and row length") {
  if (!cuda_test_device()) return;
  Generator g(200);
  for (DType dt : kAllTypes)
    for (int64_t k : kRowLengths)
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::min}) {
        Tensor x = data({37, k}, g, dt, -50, 50);
        ref::Tolerance tol = kernel_tolerance(dt);
        compare_kernel(label("reduce_rows", dt, x.shape()) + " op " + std::to_string(static_cast<int>(op)), {x},
                       [op](Backend& b, const std::vector<Tensor>& in) {
                         Tensor out = empty_like_on({in[0].size(0)}, in[0].dtype(), in);
                         b.reduce_rows(op, in[0], out);
                         return std::vector<Tensor>{out};
                       },
                       tol.rtol, tol.atol * 50 * std::sqrt(static_cast<double>(k)));
      }
}

TEST_CASE("cuda reduce_rows splits few long rows into chunks and stays deterministic") {
  if (!cuda_test_device()) return;
  Generator g(201);
  for (DType dt : kAllTypes) {
    // 3 rows of 100003: fewer rows than SMs and more than one chunk; odd length (no vectors).
    for (int64_t k : {int64_t{100003}, int64_t{131072}}) {
      Tensor x = data({3, k}, g, dt, 0, 1);
      if (!is_floating(dt)) x = data({3, k}, g, dt, 0, 100);
      ref::Tolerance tol = kernel_tolerance(dt);
      compare_kernel(label("reduce_rows chunked", dt, x.shape()), {x},
                     [](Backend& b, const std::vector<Tensor>& in) {
                       Tensor s = empty_like_on({in[0].size(0)}, in[0].dtype(), in);
                       Tensor mx = empty_like_on({in[0].size(0)}, in[0].dtype(), in);
                       b.reduce_rows(ReduceOp::sum, in[0], s);
                       b.reduce_rows(ReduceOp::max, in[0], mx);
                       return std::vector<Tensor>{s, mx};
                     },
                     tol.rtol, tol.atol);
      Tensor xg = x.to(Device::cuda(0));
      Tensor a = Tensor::empty({3}, dt, xg.device()), b = Tensor::empty({3}, dt, xg.device());
      backend(xg.device()).reduce_rows(ReduceOp::sum, xg, a);
      backend(xg.device()).reduce_rows(ReduceOp::sum, xg, b);
      check_close(a.to(Device::cpu()), b.to(Device::cpu()), 0, 0, "repeated sum is bitwise identical");
    }
  }
}

TEST_CASE("cuda logsumexp softmax and their backward match the cpu") {
  if (!cuda_test_device()) return;
  Generator g(202);
  for (DType dt : kFloatTypes)
    for (int64_t k : kRowLengths) {
      Tensor x = data({19, k}, g, dt, -4, 4), gy = data({19, k}, g, dt);
      ref::Tolerance tol = kernel_tolerance(dt);
      compare_kernel(label("logsumexp softmax", dt, x.shape()), {x, gy},
                     [](Backend& b, const std::vector<Tensor>& in) {
                       Tensor lse = empty_like_on({in[0].size(0)}, in[0].dtype(), in);
                       Tensor sm = empty_like_on(in[0].shape(), in[0].dtype(), in);
                       Tensor lsm = empty_like_on(in[0].shape(), in[0].dtype(), in);
                       Tensor gsm = empty_like_on(in[0].shape(), in[0].dtype(), in);
                       Tensor glsm = empty_like_on(in[0].shape(), in[0].dtype(), in);
                       b.logsumexp_rows(in[0], lse);
                       b.softmax_rows(in[0], sm, false);
                       b.softmax_rows(in[0], lsm, true);
                       b.softmax_rows_backward(sm, in[1], gsm, false);
                       b.softmax_rows_backward(lsm, in[1], glsm, true);
                       return std::vector<Tensor>{lse, sm, lsm, gsm, glsm};
                     },
                     tol.rtol, tol.atol);
    }
  // Rows holding -inf and +inf, and a strided (non-contiguous) input.
  Tensor special = Tensor::from_vector(std::vector<double>{-INFINITY, 0.5, 1, 2, -INFINITY, -INFINITY, INFINITY, 3},
                                       {2, 4});
  compare_kernel("logsumexp with infinities", {special}, [](Backend& b, const std::vector<Tensor>& in) {
    Tensor lse = empty_like_on({2}, in[0].dtype(), in);
    b.logsumexp_rows(in[0], lse);
    return std::vector<Tensor>{lse};
  }, 1e-12, 1e-12);
  Tensor wide = data({40, 30}, g, DType::f32, -3, 3);
  compare_kernel("softmax of a transposed view", {wide}, [](Backend& b, const std::vector<Tensor>& in) {
    Tensor t = in[0].transpose(0, 1);
    Tensor y = empty_like_on(t.shape(), t.dtype(), in);
    b.softmax_rows(t, y, false);
    return std::vector<Tensor>{y};
  }, 1e-5, 1e-6);
}

TEST_CASE("cuda cumsum_rows matches the cpu for every dtype forward and reverse") {
  if (!cuda_test_device()) return;
  Generator g(203);
  for (DType dt : kAllTypes)
    for (int64_t k : {int64_t{1}, int64_t{5}, int64_t{127}, int64_t{128}, int64_t{129}, int64_t{1000}, int64_t{3001}})
      for (bool reverse : {false, true}) {
        Tensor x = data({9, k}, g, dt, -20, 20);
        ref::Tolerance tol = kernel_tolerance(dt);
        // Prefix sums of k terms of size <= 20: the absolute error scales with 20 * sqrt(k).
        compare_kernel(label(reverse ? "cumsum reverse" : "cumsum", dt, x.shape()), {x},
                       [reverse](Backend& b, const std::vector<Tensor>& in) {
                         Tensor out = empty_like_on(in[0].shape(), in[0].dtype(), in);
                         b.cumsum_rows(in[0], out, reverse);
                         return std::vector<Tensor>{out};
                       },
                       tol.rtol, tol.atol * 20 * std::sqrt(static_cast<double>(k)));
      }
}

TEST_CASE("cuda cross_entropy kernels match the cpu with ignored rows") {
  if (!cuda_test_device()) return;
  Generator g(204);
  const int64_t ignore = -100;
  for (DType dt : kFloatTypes)
    for (int64_t v : {int64_t{3}, int64_t{10}, int64_t{1024}, int64_t{1031}, int64_t{50280}}) {
      const int64_t m = 13;
      Tensor logits = data({m, v}, g, dt, -5, 5);
      std::vector<int64_t> t(static_cast<size_t>(m));
      for (int64_t r = 0; r < m; ++r) t[r] = r % 4 == 1 ? ignore : static_cast<int64_t>(g.uniform() * v) % v;
      t[0] = v - 1;
      Tensor targets = Tensor::from_vector(t, {m});
      DType stat = dt == DType::f64 ? DType::f64 : DType::f32;
      Tensor gloss = data({m}, g, stat);
      ref::Tolerance tol = kernel_tolerance(dt);
      compare_kernel(label("cross_entropy", dt, logits.shape()), {logits, targets, gloss},
                     [stat, ignore](Backend& b, const std::vector<Tensor>& in) {
                       int64_t rows = in[0].size(0);
                       Tensor loss = empty_like_on({rows}, stat, in), lse = empty_like_on({rows}, stat, in);
                       Tensor dlogits = empty_like_on(in[0].shape(), in[0].dtype(), in);
                       b.cross_entropy_forward(in[0], in[1], ignore, loss, lse);
                       b.cross_entropy_backward(in[0], in[1], lse, in[2], ignore, dlogits);
                       return std::vector<Tensor>{loss, lse, dlogits};
                     },
                     tol.rtol, dt == DType::bf16 ? 1e-3 : tol.atol * 1e-2);
    }
}

TEST_CASE("cuda rms_norm and layer_norm kernels match the cpu forward and backward") {
  if (!cuda_test_device()) return;
  Generator g(205);
  // D past 1024 takes a block per row forward; D = 13001 leaves too little shared memory
  // for even one warp's accumulators (global path); M = 3 and 300 give one or many partial rows.
  for (DType dt : kFloatTypes)
    for (int64_t d : {int64_t{7}, int64_t{64}, int64_t{768}, int64_t{1500}, int64_t{13001}})
      for (int64_t m : {int64_t{3}, int64_t{300}})
        for (int weight_kind = 0; weight_kind < 3; ++weight_kind) {  // none, x's dtype, stat dtype
          if (m * d > 1000000) continue;
          DType stat = dt == DType::f64 ? DType::f64 : DType::f32;
          Tensor x = data({m, d}, g, dt, -2, 2), gy = data({m, d}, g, dt);
          Tensor w, b;
          if (weight_kind > 0) {
            DType wdt = weight_kind == 1 ? dt : stat;
            w = data({d}, g, wdt, 0.5, 1.5);
            b = data({d}, g, wdt);
          }
          ref::Tolerance tol = kernel_tolerance(dt);
          // gw and gb sum m rows: their absolute error grows like sqrt(m).
          double atol = tol.atol * std::sqrt(static_cast<double>(m));
          std::string name = label("norms", dt, x.shape()) + " weights " + std::to_string(weight_kind);
          compare_kernel(name, {x, gy, w, b}, [stat](Backend& be, const std::vector<Tensor>& in) {
            const Tensor &gy_ = in[1], &w_ = in[2], &b_ = in[3];
            int64_t rows = in[0].size(0), cols = in[0].size(1);
            Tensor y = empty_like_on(in[0].shape(), in[0].dtype(), in), rstd = empty_like_on({rows}, stat, in);
            Tensor gx = empty_like_on(in[0].shape(), in[0].dtype(), in), gw = empty_like_on({cols}, stat, in);
            be.rms_norm_forward(in[0], w_, 1e-5, y, rstd);
            be.rms_norm_backward(in[0], w_, rstd, gy_, gx, gw);
            Tensor ly = empty_like_on(in[0].shape(), in[0].dtype(), in);
            Tensor mean = empty_like_on({rows}, stat, in), lrstd = empty_like_on({rows}, stat, in);
            Tensor lgx = empty_like_on(in[0].shape(), in[0].dtype(), in);
            Tensor lgw = empty_like_on({cols}, stat, in), lgb = empty_like_on({cols}, stat, in);
            be.layer_norm_forward(in[0], w_, b_, 1e-5, ly, mean, lrstd);
            be.layer_norm_backward(in[0], w_, mean, lrstd, gy_, lgx, lgw, lgb);
            std::vector<Tensor> outs{y, rstd, gx, ly, mean, lrstd, lgx, lgw, lgb};
            if (w_.defined()) outs.push_back(gw);
            return outs;
          }, tol.rtol, atol);
        }
}

TEST_CASE("cuda norm parameter gradients are bitwise reproducible") {
  if (!cuda_test_device()) return;
  Generator g(206);
  Device gpu = Device::cuda(0);
  Tensor x = data({1000, 768}, g, DType::bf16).to(gpu), gy = data({1000, 768}, g, DType::bf16).to(gpu);
  Tensor w = data({768}, g, DType::f32, 0.5, 1.5).to(gpu);
  Tensor rstd = Tensor::empty({1000}, DType::f32, gpu), y = Tensor::empty({1000, 768}, DType::bf16, gpu);
  Backend& b = backend(gpu);
  b.rms_norm_forward(x, w, 1e-5, y, rstd);
  Tensor gx1 = Tensor::empty(x.shape(), DType::bf16, gpu), gx2 = Tensor::empty(x.shape(), DType::bf16, gpu);
  Tensor gw1 = Tensor::empty({768}, DType::f32, gpu), gw2 = Tensor::empty({768}, DType::f32, gpu);
  b.rms_norm_backward(x, w, rstd, gy, gx1, gw1);
  b.rms_norm_backward(x, w, rstd, gy, gx2, gw2);
  check_close(gw1.to(Device::cpu()), gw2.to(Device::cpu()), 0, 0, "gw run twice");
  check_close(gx1.to(Device::cpu()), gx2.to(Device::cpu()), 0, 0, "gx run twice");
}

TEST_CASE("cuda gemm matches the cpu for every transpose dtype and batch layout") {
  if (!cuda_test_device()) return;
  Generator g(207);
  const int64_t bt = 3, m = 37, n = 29, k = 70;
  for (DType dt : kFloatTypes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (bool shared_b : {false, true})
          for (double beta : {0.0, 0.5}) {
            Tensor a = data(ta ? Dims{bt, k, m} : Dims{bt, m, k}, g, dt);
            Tensor bm = data(tb ? Dims{shared_b ? 1 : bt, n, k} : Dims{shared_b ? 1 : bt, k, n}, g, dt);
            Tensor c = data({bt, m, n}, g, dt);
            // fp32 products of k = 70 terms of size <= 1 differ by summation order only (~1e-6);
            // bf16 rounds the output (one ulp, 2^-8, of values up to ~8): atol 0.1.
            ref::Tolerance tol = kernel_tolerance(dt);
            double atol = dt == DType::bf16 ? 0.1 : tol.atol;
            std::string name = label("gemm", dt, a.shape()) + (ta ? " ta" : "") + (tb ? " tb" : "") +
                               (shared_b ? " shared b" : "") + " beta " + std::to_string(beta);
            compare_kernel(name, {a, bm, c}, [ta, tb, beta](Backend& be, const std::vector<Tensor>& in) {
              Tensor out = in[2].clone();
              Tensor bb = in[1].size(0) == 1 ? in[1].expand({in[2].size(0), in[1].size(1), in[1].size(2)}) : in[1];
              be.gemm(in[0], ta, bb, tb, out, 1.5, beta);
              return std::vector<Tensor>{out};
            }, tol.rtol, atol);
          }
  // A column slice (row stride > row length) and an operand with a non-unit last stride.
  Tensor big = data({1, 40, 100}, g, DType::f32), rhs = data({1, 30, 50}, g, DType::f32);
  compare_kernel("gemm of strided operands", {big, rhs}, [](Backend& be, const std::vector<Tensor>& in) {
    Tensor a = in[0].narrow(2, 10, 30);                 // (1, 40, 30), row stride 100
    Tensor b = in[1].transpose(1, 2).transpose(1, 2);   // (1, 30, 50) as is
    Tensor bt = in[1].narrow(2, 0, 40).transpose(1, 2); // (1, 40, 30): last stride 50
    Tensor out = Tensor::empty({1, 40, 50}, DType::f32, in[0].device());
    Tensor out2 = Tensor::empty({1, 40, 40}, DType::f32, in[0].device());
    be.gemm(a, false, b, false, out, 1, 0);
    be.gemm(a, false, bt, true, out2, 1, 0);
    return std::vector<Tensor>{out, out2};
  }, 1e-4, 1e-4);
}

// TF32 keeps 10 mantissa bits of each operand (relative error 2^-11 per product); over
// k = 256 random-sign terms of size <= 1 the error is ~sqrt(k) * 2^-11 * |term| ~ 1e-2
// absolute at most; atol 5e-2 bounds it while catching a wrong product (errors of O(1)).
TEST_CASE("cuda gemm with tf32 stays within tf32 rounding of the cpu") {
  if (!cuda_test_device()) return;
  Generator g(208);
  Tensor a = data({1, 128, 256}, g, DType::f32), b = data({1, 256, 96}, g, DType::f32);
  set_allow_tf32(true);
  compare_kernel("gemm tf32", {a, b}, [](Backend& be, const std::vector<Tensor>& in) {
    Tensor out = Tensor::empty({1, 128, 96}, DType::f32, in[0].device());
    be.gemm(in[0], false, in[1], false, out, 1, 0);
    return std::vector<Tensor>{out};
  }, 0, 5e-2);
  set_allow_tf32(false);
}

TEST_CASE("cuda indexing kernels match the cpu for every dtype") {
  if (!cuda_test_device()) return;
  Generator g(209);
  for (DType dt : kAllTypes)
    for (int64_t width : {int64_t{1}, int64_t{3}, int64_t{8}, int64_t{33}, int64_t{768}}) {
      const int64_t n = 50, m = 200;
      std::vector<int64_t> rows(static_cast<size_t>(m));
      for (int64_t i = 0; i < m; ++i) rows[i] = static_cast<int64_t>(g.uniform() * 7) * 7 % n;  // many repeats
      Tensor idx = Tensor::from_vector(rows, {m});
      Tensor x = data({n, width}, g, dt, -10, 10), gsrc = data({m, width}, g, dt, -10, 10);
      Tensor acc = data({n, width}, g, dt, -10, 10);
      // The adds use the CPU's order exactly (sorted by target, stable in position): f32 and
      // integer results are bitwise equal; bf16 rounds once, f64 too: tolerance 0 for all.
      compare_kernel(label("index rows", dt, x.shape()), {x, idx, gsrc, acc},
                     [](Backend& be, const std::vector<Tensor>& in) {
                       Tensor sel = empty_like_on({in[1].numel(), in[0].size(1)}, in[0].dtype(), in);
                       be.index_select_rows(in[0], in[1], sel);
                       Tensor out = in[3].clone();
                       be.index_add_rows(in[2], in[1], out);
                       return std::vector<Tensor>{sel, out};
                     },
                     0, 0);
      const int64_t rm = 6, k = width + 4, j = 40;
      std::vector<int64_t> cols(static_cast<size_t>(rm * j));
      for (auto& c : cols) c = static_cast<int64_t>(g.uniform() * k) % k;
      Tensor cidx = Tensor::from_vector(cols, {rm, j});
      Tensor src = data({rm, k}, g, dt, -10, 10), gj = data({rm, j}, g, dt, -10, 10);
      Tensor base = data({rm, k}, g, dt, -10, 10);
      compare_kernel(label("gather scatter", dt, src.shape()), {src, cidx, gj, base},
                     [](Backend& be, const std::vector<Tensor>& in) {
                       Tensor gat = empty_like_on(in[1].shape(), in[0].dtype(), in);
                       be.gather_last(in[0], in[1], gat);
                       Tensor out = in[3].clone();
                       be.scatter_add_last(in[2], in[1], out);
                       return std::vector<Tensor>{gat, out};
                     },
                     0, 0);
    }
}

// The device rounds f32 to bf16 with the hardware conversion (cvt.rn.bf16.f32), the host in
// software; both round to nearest even, so every non-NaN value must give the same bits:
// values exactly halfway between two bf16 numbers (ties to even, both directions), one f32
// ulp either side of a tie, subnormals, the largest finite values (which round to inf), inf,
// zeros of both signs and random values over the whole exponent range. NaN stays NaN.
TEST_CASE("cuda f32 to bf16 conversion gives the cpu's bits") {
  if (!cuda_test_device()) return;
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x00000001u, 0x807fffffu,
                                0x00008000u, 0x00018000u, 0x7f7fffffu, 0xff7fffffu, 0x7f7f8000u, 0x3f800000u};
  Generator g(4242);
  for (uint32_t hi = 0; hi < 0x10000u; hi += 37) {  // ties to even, both parities, both signs
    bits.push_back((hi << 16) | 0x8000u);
    bits.push_back((hi << 16) | 0x7fffu);
    bits.push_back((hi << 16) | 0x8001u);
  }
  for (int i = 0; i < 20000; ++i) bits.push_back(static_cast<uint32_t>(g.uniform() * 4294967296.0));
  std::vector<float> vals;
  for (uint32_t b : bits) {
    float f;
    std::memcpy(&f, &b, 4);
    vals.push_back(f);
  }
  const int64_t n = static_cast<int64_t>(vals.size());
  Tensor x = Tensor::from_vector(vals, {n});
  Tensor on_cpu = x.to(DType::bf16), on_gpu = x.to(Device::cuda(0)).to(DType::bf16).to(Device::cpu());
  const auto* a = static_cast<const uint16_t*>(on_cpu.data_ptr());
  const auto* b = static_cast<const uint16_t*>(on_gpu.data_ptr());
  int64_t mismatches = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool nan_a = (a[i] & 0x7f80) == 0x7f80 && (a[i] & 0x7f), nan_b = (b[i] & 0x7f80) == 0x7f80 && (b[i] & 0x7f);
    if (nan_a || nan_b ? nan_a != nan_b : a[i] != b[i]) {
      if (++mismatches <= 5) MESSAGE("f32 bits ", bits[i], ": cpu ", a[i], ", cuda ", b[i]);
    }
  }
  CHECK(mismatches == 0);
}

// Copies between column slices go through one row-copy kernel whose unit (16, 8, 4, 2 or 1
// bytes) is the widest dividing the row width, both pitches and both base addresses: every
// unit size, and the shape of Mamba's x_proj split (16384 rows of 48 + 16 + 16 bf16), must
// give the CPU's bytes exactly.
TEST_CASE("cuda copies between column slices give the cpu's bytes for every row unit") {
  if (!cuda_test_device()) return;
  Generator g(4243);
  const Device gpu = Device::cuda(0);
  struct Case {
    int64_t rows, width, start, len, dstart;
    DType dt;
  };
  // The unit of the slice-to-slice copy (row width, pitch and the two column offsets in bytes):
  for (const Case& c : {Case{16384, 80, 48, 16, 0, DType::bf16},   // 16: Mamba's B columns
                        Case{16384, 80, 0, 48, 32, DType::bf16},   // 16: its dt columns
                        Case{300, 66, 2, 32, 4, DType::f32},       // 8
                        Case{300, 65, 1, 31, 3, DType::f32},       // 4
                        Case{300, 33, 3, 9, 1, DType::bf16},       // 2
                        Case{7, 10, 2, 6, 1, DType::f64}}) {       // 8
    CAPTURE(c.rows);
    CAPTURE(c.width);
    CAPTURE(c.start);
    CAPTURE(c.len);
    Tensor src = random_tensor({c.rows, c.width}, g, c.dt);
    Tensor dst = random_tensor({c.rows, c.width}, g, c.dt);
    Tensor src_g = src.to(gpu), dst_g = dst.to(gpu);
    // Slice to slice (both strided), slice to contiguous, contiguous to slice, on each device.
    for (auto [s_, d_] : {std::pair<Tensor*, Tensor*>{&src, &dst}, std::pair<Tensor*, Tensor*>{&src_g, &dst_g}}) {
      Backend& be = backend(s_->device());
      be.copy(s_->narrow(1, c.start, c.len), d_->narrow(1, c.dstart, c.len));
      Tensor packed = Tensor::empty({c.rows, c.len}, c.dt, s_->device());
      be.copy(s_->narrow(1, c.start, c.len), packed);
      be.copy(packed, d_->narrow(1, c.width - c.len, c.len));
    }
    backend(gpu).synchronize();
    check_close(dst_g.to(Device::cpu()), dst, 0, 0, "column-slice copies");
  }
}

TEST_CASE("cuda index_add_rows is bitwise reproducible with heavy repeats") {
  if (!cuda_test_device()) return;
  Generator g(210);
  Device gpu = Device::cuda(0);
  const int64_t n = 1000, m = 20000, width = 256;
  std::vector<int64_t> rows(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) rows[i] = i % 3 == 0 ? 7 : static_cast<int64_t>(g.uniform() * n) % n;
  Tensor idx = Tensor::from_vector(rows, {m}).to(gpu);
  Tensor src = data({m, width}, g, DType::f32).to(gpu);
  Tensor a = Tensor::zeros({n, width}, DType::f32, gpu), b = Tensor::zeros({n, width}, DType::f32, gpu);
  backend(gpu).index_add_rows(src, idx, a);
  backend(gpu).index_add_rows(src, idx, b);
  check_close(a.to(Device::cpu()), b.to(Device::cpu()), 0, 0, "index_add_rows run twice");
  Tensor want = Tensor::zeros({n, width});
  backend(Device::cpu()).index_add_rows(src.to(Device::cpu()), idx.to(Device::cpu()), want);
  check_close(a.to(Device::cpu()), want, 0, 0, "index_add_rows against the cpu order");
}

TEST_CASE("cuda caching allocator reaches a steady state with no device allocations") {
  if (!cuda_test_device()) return;
  Device gpu = Device::cuda(0);
  auto step = [&] {
    // A training-step-like pattern: small and large blocks, freed in a different order.
    std::vector<Tensor> live;
    for (int64_t n : {int64_t{100}, int64_t{5000}, int64_t{1} << 20, int64_t{3} << 20, int64_t{777}})
      live.push_back(Tensor::empty({n}, DType::f32, gpu));
    Tensor t = Tensor::ones({1 << 18}, DType::f32, gpu) * 2.0;
    live.push_back(t);
    std::swap(live[0], live[3]);
    live.clear();
  };
  step();
  backend(gpu).synchronize();
  MemoryStats before = memory_stats(gpu);
  for (int i = 0; i < 5; ++i) step();
  backend(gpu).synchronize();
  MemoryStats after = memory_stats(gpu);
  CHECK(after.device_allocs == before.device_allocs);
  CHECK(after.device_frees == before.device_frees);
  CHECK(after.in_use == before.in_use);
  CHECK(after.peak_in_use >= after.in_use);
  CHECK(after.reserved >= after.in_use);
  {
    Tensor extra = Tensor::empty({1 << 20}, DType::f32, gpu);
    CHECK(memory_stats(gpu).in_use >= before.in_use + (int64_t{4} << 20));
    CHECK(memory_stats(gpu).peak_in_use >= memory_stats(gpu).in_use);
  }
  CHECK(memory_stats(gpu).in_use == before.in_use);
}
