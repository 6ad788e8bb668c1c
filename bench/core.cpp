// ssmtrain-bench core: the core library against the device's own ceilings (docs/perf.md).
//
//  - device copy bandwidth (cudaMemcpyAsync device to device, bytes read + written) against
//    elementwise add, mul and gelu through the Tensor API, f32 and bf16, 2^26 elements;
//    target (PERF.md): elementwise >= 80% of copy bandwidth;
//  - GEMM TFLOP/s through matmul() against cuBLAS called directly with the same layout,
//    bf16 and TF32, at 4096^3, 8192^3 and the Mamba-130M projection shapes; target: within
//    5% of cuBLAS;
//  - cross-entropy forward + backward and rms_norm forward + backward through the backend
//    kernels, in GB/s of their minimal traffic.
//
// Times are CUDA-event medians after warm-up, on the device's compute stream; inputs are
// random (never zeros) and, for the bandwidth rows, far larger than L2.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "core/backend.h"
#include "core/ops.h"
#include "core/random.h"
#include "core/tensor.h"

#if defined(SSMTRAIN_WITH_CUDA)
#include <cublas_v2.h>
#include <cuda_runtime.h>
#endif

namespace ssmtrain::bench {

#if !defined(SSMTRAIN_WITH_CUDA)

std::vector<Row> run_core(const Options&) {
  std::printf("core: skipped: ssmtrain was built without CUDA (configure with -DSSMTRAIN_CUDA=ON on a GPU host)\n");
  return {};
}

#else

namespace {

constexpr double kCopyTarget = 0.80;  // elementwise GB/s over copy GB/s (PERF.md)
constexpr double kGemmTarget = 0.95;  // Tensor-API TFLOP/s over cuBLAS TFLOP/s (PERF.md)

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("core bench: ") + what + ": " + cudaGetErrorString(err));
}
void check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("core bench: ") + what + ": " + cublasGetStatusString(st));
}

// Median time in ms of f() on `stream`, after `warmup` untimed calls.
double time_ms(cudaStream_t stream, int warmup, int reps, const std::function<void()>& f) {
  for (int i = 0; i < warmup; ++i) f();
  check(cudaStreamSynchronize(stream), "warm-up");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    check(cudaEventRecord(start, stream), "event record");
    f();
    check(cudaEventRecord(stop, stream), "event record");
    check(cudaEventSynchronize(stop), "event sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Medians of f and g timed alternately (f, g, f, g, ...), so clock and power drift during a
// long run (the 8192^3 products run ~3 ms each at full power) affects both alike instead of
// penalising whichever is timed second.
std::pair<double, double> time_pair_ms(cudaStream_t stream, int warmup, int reps, const std::function<void()>& f,
                                       const std::function<void()>& g) {
  for (int i = 0; i < warmup; ++i) f(), g();
  check(cudaStreamSynchronize(stream), "warm-up");
  cudaEvent_t e[3];
  for (auto& ev : e) check(cudaEventCreate(&ev), "event");
  std::vector<double> tf, tg;
  for (int i = 0; i < reps; ++i) {
    check(cudaEventRecord(e[0], stream), "event record");
    f();
    check(cudaEventRecord(e[1], stream), "event record");
    g();
    check(cudaEventRecord(e[2], stream), "event record");
    check(cudaEventSynchronize(e[2]), "event sync");
    float a = 0, b = 0;
    check(cudaEventElapsedTime(&a, e[0], e[1]), "elapsed");
    check(cudaEventElapsedTime(&b, e[1], e[2]), "elapsed");
    tf.push_back(a);
    tg.push_back(b);
  }
  for (auto& ev : e) cudaEventDestroy(ev);
  std::sort(tf.begin(), tf.end());
  std::sort(tg.begin(), tg.end());
  return {tf[tf.size() / 2], tg[tg.size() / 2]};
}

struct Table {
  std::vector<Row> rows;
  void add(const std::string& bench, const std::string& shape, double ms,
           std::vector<std::pair<std::string, double>> fields) {
    std::printf("%-28s %-26s %9.3f ms", bench.c_str(), shape.c_str(), ms);
    for (const auto& [k, v] : fields) std::printf("  %s %.3f", k.c_str(), v);
    std::printf("\n");
    rows.push_back({bench, shape, ms, std::move(fields)});
  }
};

std::string dims_str(std::initializer_list<int64_t> d) {
  std::string s;
  for (int64_t v : d) s += (s.empty() ? "" : "x") + std::to_string(v);
  return s;
}

// ---- bandwidth: copy against elementwise ----

void bench_elementwise(const Options& opt, cudaStream_t stream, Table& table) {
  const int64_t n = opt.quick ? (int64_t{1} << 22) : (int64_t{1} << 26);
  const int reps = opt.quick ? 5 : 30;
  Device dev = Device::cuda(opt.device);
  Generator gen(1234);
  for (DType dt : {DType::f32, DType::bf16}) {
    const double bytes = static_cast<double>(n) * dtype_size(dt);
    Tensor a = Tensor::rand({n}, gen, dt, dev), b = Tensor::rand({n}, gen, dt, dev);
    Tensor dst = Tensor::empty({n}, dt, dev);
    double copy_ms = time_ms(stream, 3, reps, [&] {
      check(cudaMemcpyAsync(dst.data_ptr(), a.data_ptr(), static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, stream),
            "memcpy");
    });
    const double copy_gbs = 2 * bytes / copy_ms * 1e-6;
    std::string shape = std::string(dtype_name(dt)) + " 2^" + std::to_string(opt.quick ? 22 : 26);
    table.add("copy d2d", shape, copy_ms, {{"GB_s", copy_gbs}});
    struct Case {
      const char* name;
      int tensors;  // tensors moved: inputs read + output written
      std::function<Tensor()> f;
    };
    std::vector<Case> cases = {{"add", 3, [&] { return add(a, b); }},
                               {"mul", 3, [&] { return mul(a, b); }},
                               {"gelu", 2, [&] { return gelu(a); }}};
    for (const Case& c : cases) {
      double ms = time_ms(stream, 3, reps, [&] { c.f(); });
      double gbs = c.tensors * bytes / ms * 1e-6;
      double ratio = gbs / copy_gbs;
      table.add(std::string("elementwise ") + c.name, shape, ms,
                {{"GB_s", gbs}, {"ratio_vs_copy", ratio}, {"target_ratio", kCopyTarget},
                 {"target_ms", c.tensors * bytes / (kCopyTarget * copy_gbs) * 1e-6}, {"ratio", ratio / kCopyTarget}});
    }
  }
}

// ---- GEMM: matmul() against cuBLAS ----

// out (M, N) = a (M, K) @ b (K, N), row-major, through cuBLAS directly (the same column-major
// mapping as core/cuda/gemm.cu: out^T = b^T a^T).
void cublas_matmul(cublasHandle_t h, const Tensor& a, const Tensor& b, const Tensor& out, bool tf32) {
  const int m = static_cast<int>(a.size(0)), k = static_cast<int>(a.size(1)), n = static_cast<int>(b.size(1));
  const float alpha = 1, beta = 0;
  cudaDataType_t t = a.dtype() == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
  cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  check(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, b.data_ptr(), t, n, a.data_ptr(), t, k, &beta,
                     out.data_ptr(), t, n, compute, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

void bench_gemm(const Options& opt, cudaStream_t stream, Table& table) {
  Device dev = Device::cuda(opt.device);
  Generator gen(99);
  cublasHandle_t handle;
  check(cublasCreate(&handle), "cublasCreate");
  check(cublasSetStream(handle, stream), "cublasSetStream");
  void* workspace = nullptr;
  const size_t workspace_bytes = size_t{32} << 20;  // as the backend's handle
  check(cudaMalloc(&workspace, workspace_bytes), "workspace");
  check(cublasSetWorkspace(handle, workspace, workspace_bytes), "cublasSetWorkspace");
  struct Shape {
    int64_t m, n, k;
    const char* what;
  };
  std::vector<Shape> shapes = {{4096, 4096, 4096, "square"},
                               {16 * 2048, 1536, 768, "in_proj fwd"},
                               {16 * 2048, 768, 1536, "out_proj fwd"},
                               {768, 1536, 16 * 2048, "weight grad"}};
  if (!opt.quick) shapes.push_back({8192, 8192, 8192, "square"});
  if (opt.quick) shapes = {{1024, 1024, 1024, "square"}};
  const int reps = opt.quick ? 5 : 20;
  for (bool tf32 : {false, true}) {
    DType dt = tf32 ? DType::f32 : DType::bf16;
    set_allow_tf32(tf32);
    for (const Shape& s : shapes) {
      Tensor a = Tensor::rand({s.m, s.k}, gen, dt, dev, -1, 1), b = Tensor::rand({s.k, s.n}, gen, dt, dev, -1, 1);
      Tensor out = Tensor::empty({s.m, s.n}, dt, dev);
      const double flop = 2.0 * s.m * s.n * s.k;
      auto [blas_ms, api_ms] = time_pair_ms(
          stream, 3, reps, [&] { cublas_matmul(handle, a, b, out, tf32); }, [&] { matmul(a, b); });
      double blas_tf = flop / blas_ms * 1e-9, api_tf = flop / api_ms * 1e-9;
      std::string shape = std::string(tf32 ? "tf32 " : "bf16 ") + dims_str({s.m, s.n, s.k}) + " " + s.what;
      table.add("gemm cublas", shape, blas_ms, {{"TFLOP_s", blas_tf}});
      double ratio = api_tf / blas_tf;
      table.add("gemm matmul", shape, api_ms,
                {{"TFLOP_s", api_tf}, {"ratio_vs_cublas", ratio}, {"target_ratio", kGemmTarget},
                 {"target_ms", blas_ms / kGemmTarget}, {"ratio", ratio / kGemmTarget}});
    }
  }
  set_allow_tf32(false);
  cublasDestroy(handle);
  cudaFree(workspace);
}

// ---- fused losses and norms (the backend kernels) ----

void bench_fused(const Options& opt, cudaStream_t stream, Table& table) {
  Device dev = Device::cuda(opt.device);
  Backend& be = backend(dev);
  Generator gen(7);
  const int reps = opt.quick ? 5 : 20;
  {
    // Mamba-130M's head: B8 L2048 tokens over the GPT-NeoX vocabulary.
    const int64_t m = opt.quick ? 1024 : 8 * 2048, v = 50280;
    Tensor logits = Tensor::rand({m, v}, gen, DType::bf16, dev, -4, 4);
    Tensor targets = Tensor::randint({m}, gen, 0, v, DType::i64, dev);
    Tensor loss = Tensor::empty({m}, DType::f32, dev), lse = Tensor::empty({m}, DType::f32, dev);
    Tensor gloss = Tensor::full({m}, 1.0 / static_cast<double>(m), DType::f32, dev);
    Tensor dlogits = Tensor::empty({m, v}, DType::bf16, dev);
    double ms = time_ms(stream, 2, reps, [&] {
      be.cross_entropy_forward(logits, targets, -100, loss, lse);
      be.cross_entropy_backward(logits, targets, lse, gloss, -100, dlogits);
    });
    // Minimal traffic: logits read by the forward, read again and dlogits written by the backward.
    double bytes = 3.0 * static_cast<double>(m) * v * 2;
    table.add("cross_entropy fwd+bwd", "bf16 " + dims_str({m, v}), ms, {{"GB_s", bytes / ms * 1e-6}});
  }
  {
    const int64_t m = opt.quick ? 4096 : 4 * 16 * 2048, d = 768;
    Tensor x = Tensor::rand({m, d}, gen, DType::bf16, dev, -2, 2), gy = Tensor::rand({m, d}, gen, DType::bf16, dev);
    Tensor w = Tensor::rand({d}, gen, DType::f32, dev, 0.5, 1.5);
    Tensor y = Tensor::empty({m, d}, DType::bf16, dev), gx = Tensor::empty({m, d}, DType::bf16, dev);
    Tensor rstd = Tensor::empty({m}, DType::f32, dev), gw = Tensor::empty({d}, DType::f32, dev);
    double ms = time_ms(stream, 2, reps, [&] {
      be.rms_norm_forward(x, w, 1e-5, y, rstd);
      be.rms_norm_backward(x, w, rstd, gy, gx, gw);
    });
    // Forward: read x, write y; backward: read x and gy, write gx.
    double bytes = 5.0 * static_cast<double>(m) * d * 2;
    table.add("rms_norm fwd+bwd", "bf16 " + dims_str({m, d}), ms, {{"GB_s", bytes / ms * 1e-6}});
  }
}

}  // namespace

std::vector<Row> run_core(const Options& opt) {
  if (cuda::device_count() == 0) {
    std::printf("core: skipped: no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)\n");
    return {};
  }
  SSMT_CHECK(opt.device >= 0 && opt.device < cuda::device_count(), "core bench: --device ", opt.device,
             " but only ", cuda::device_count(), " GPU(s) are visible");
  check(cudaSetDevice(opt.device), "cudaSetDevice");
  cudaStream_t stream = static_cast<cudaStream_t>(cuda::compute_stream(opt.device));
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, opt.device), "device properties");
  std::printf("core benchmarks on %s (cuda:%d)%s\n", prop.name, opt.device, opt.quick ? ", quick" : "");
  std::printf("%-28s %-26s %12s  metrics\n", "bench", "shape", "median");
  Table table;
  bench_elementwise(opt, stream, table);
  bench_gemm(opt, stream, table);
  bench_fused(opt, stream, table);
  std::printf("targets (PERF.md): elementwise ratio_vs_copy >= %.2f; gemm ratio_vs_cublas >= %.2f; "
              "'ratio' is the measured value over its target (>= 1 meets it)\n",
              kCopyTarget, kGemmTarget);
  return table.rows;
}

#endif  // SSMTRAIN_WITH_CUDA

}  // namespace ssmtrain::bench
