// Batched matrix products on cuBLAS (cublasGemmStridedBatchedEx on the device's handle,
// which owns a 32 MiB workspace from device.cu, so cuBLAS never allocates behind the
// caching allocator).
//
// Row-major to column-major: a row-major (R, C) matrix with row stride ld is the
// column-major (C, R) matrix with leading dimension ld, i.e. its transpose. So
//   out (M, N) = opA(a) @ opB(b)   is computed as   out^T (N, M) = opB(b)^T @ opA(a)^T
// with cuBLAS's first operand b (transposed by cuBLAS iff trans_b) and second operand a
// (transposed iff trans_a), m = N, n = M, and ldc = N. Batch strides of 0 broadcast an
// operand over the batch.
//
// Precision: f32 in full fp32 (CUBLAS_COMPUTE_32F), or TF32 tensor cores with fp32
// accumulation when allow_tf32(); bf16 with fp32 accumulation and fp32 alpha/beta, stored in
// bf16 or (the mixed form) in f32; f64 in double.
#include <algorithm>
#include <climits>

#include "core/cuda/backend_cuda.cuh"
#include "core/cuda/cuda_check.cuh"

namespace ssmtrain::cuda_detail {
namespace {

// One stored operand (Bt, R, C) as cuBLAS sees it.
struct BlasOperand {
  const void* data;
  long long batch_stride;
  int ld;
};

// An operand cuBLAS can read in place: unit last-axis stride and rows that do not overlap;
// anything else is copied to a contiguous tensor first.
Tensor blas_ready(const Tensor& t) {
  bool unit_cols = t.size(2) <= 1 || t.strides()[2] == 1;
  bool rows_ok = t.size(1) <= 1 || t.strides()[1] >= t.size(2);
  if (unit_cols && rows_ok) return t;
  Tensor c = Tensor::empty(t.shape(), t.dtype(), t.device());
  cuda::cuda_backend(t.device().index).copy(t, c);
  return c;
}

BlasOperand blas_operand(const Tensor& t) {
  int64_t rows = t.size(1), cols = t.size(2);
  int64_t ld = rows <= 1 ? std::max<int64_t>(cols, 1) : t.strides()[1];
  SSMT_ASSERT(ld <= INT_MAX, "gemm: row stride ", ld, " of ", t.describe(), " exceeds cuBLAS's int range");
  long long batch_stride = t.size(0) <= 1 ? 0 : static_cast<long long>(t.strides()[0]);
  return {t.data_ptr(), batch_stride, static_cast<int>(ld)};
}

}  // namespace

void CudaBackend::gemm(const Tensor& a_in, bool trans_a, const Tensor& b_in, bool trans_b, const Tensor& out,
                       double alpha, double beta) {
  DeviceGuard guard(device_);
  if (!gemm_prologue(*this, a_in, trans_a, b_in, trans_b, out, beta)) return;
  const int64_t batches = out.size(0), m = out.size(1), n = out.size(2);
  const int64_t k = trans_a ? a_in.size(1) : a_in.size(2);
  SSMT_ASSERT(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && batches <= INT_MAX, "gemm: ", out.describe(),
              " with K = ", k, " exceeds cuBLAS's int range");
  Tensor a = blas_ready(a_in), b = blas_ready(b_in);
  const BlasOperand oa = blas_operand(a), ob = blas_operand(b);
  cublasHandle_t handle = device_context(device_).blas.get();
  const cublasOperation_t op_first = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;   // b
  const cublasOperation_t op_second = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // a
  const int cm = static_cast<int>(n), cn = static_cast<int>(m), ck = static_cast<int>(k);
  const long long out_stride = static_cast<long long>(m) * n;

  cudaDataType_t data_type, out_type;
  cublasComputeType_t compute;
  float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
  const void* alpha_p = &alpha_f;
  const void* beta_p = &beta_f;
  switch (a.dtype()) {
    case DType::f32:
      data_type = CUDA_R_32F;
      compute = allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      break;
    case DType::bf16:
      data_type = CUDA_R_16BF;
      compute = CUBLAS_COMPUTE_32F;
      break;
    case DType::f64:
      data_type = CUDA_R_64F;
      compute = CUBLAS_COMPUTE_64F;
      alpha_p = &alpha;
      beta_p = &beta;
      break;
    default:
      throw UserError(detail::concat("gemm of ", out.describe(), ": expected a floating dtype (f32, bf16, f64)"));
  }
  // The mixed form (bf16 operands, f32 out) keeps the f32 accumulator when storing.
  out_type = out.dtype() == DType::f32 ? CUDA_R_32F : data_type;
  profiler::count_launch();  // one cuBLAS call (it may launch more than one kernel)
  if (batches == 1) {
    // A single product goes through cublasGemmEx, the call the benchmark compares against.
    CUBLAS_CHECK(cublasGemmEx(handle, op_first, op_second, cm, cn, ck, alpha_p, ob.data, data_type, ob.ld, oa.data,
                              data_type, oa.ld, beta_p, out.data_ptr(), out_type, cm, compute, CUBLAS_GEMM_DEFAULT));
    return;
  }
  CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle, op_first, op_second, cm, cn, ck, alpha_p, ob.data, data_type, ob.ld,
                                          ob.batch_stride, oa.data, data_type, oa.ld, oa.batch_stride, beta_p,
                                          out.data_ptr(), out_type, cm, out_stride, static_cast<int>(batches),
                                          compute, CUBLAS_GEMM_DEFAULT));
}

}  // namespace ssmtrain::cuda_detail
