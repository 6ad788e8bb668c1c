// Batched matrix products on Eigen: each batch is an Eigen::Map of a row-major matrix with
// an outer stride, so transposed and column-sliced operands need no copy. bf16 operands
// are widened to float per batch and the float result is rounded once when stored.
//
// Threads: many small products run in parallel over the batch (Eigen stays sequential
// inside an OpenMP region); few large ones run in turn with Eigen's own OpenMP GEMM. Both
// split the output, never the K sum, so results do not depend on the thread count.
#include <Eigen/Core>
#include <vector>

#include "core/cpu/backend_cpu.h"
#include "core/cpu/kernel_util.h"

namespace ssmtrain::cpu {

namespace {

template <typename T> using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T> using ConstMatrixMap = Eigen::Map<const RowMajor<T>, 0, Eigen::OuterStride<>>;
template <typename T> using MatrixMap = Eigen::Map<RowMajor<T>, 0, Eigen::OuterStride<>>;

// One stored operand (Bt, R, C): data of batch 0, batch stride and row stride in elements.
struct Operand {
  const void* data;
  int64_t batch_stride, row_stride, rows, cols;
  bool trans;
};

// An operand gemm can map directly: unit last-axis stride and rows that do not overlap.
Tensor mappable(const Tensor& t) {
  bool unit_cols = t.size(2) <= 1 || t.strides()[2] == 1;
  bool rows_ok = t.size(1) <= 1 || t.strides()[1] >= t.size(2);
  return unit_cols && rows_ok ? t : contiguous_input(t);
}

Operand describe_operand(const Tensor& t, bool trans) {
  int64_t rows = t.size(1), cols = t.size(2);
  int64_t row_stride = rows <= 1 ? std::max<int64_t>(cols, 1) : t.strides()[1];
  int64_t batch_stride = t.size(0) <= 1 ? 0 : t.strides()[0];
  return {t.data_ptr(), batch_stride, row_stride, rows, cols, trans};
}

template <typename T> ConstMatrixMap<T> map_batch(const Operand& op, const T* data, int64_t batch) {
  return ConstMatrixMap<T>(data + batch * op.batch_stride, op.rows, op.cols, Eigen::OuterStride<>(op.row_stride));
}

// out (M, N) = alpha * opA(A) @ opB(B) + beta * out, with beta == 0 never reading out.
template <typename T, typename MA, typename MB>
void product(const MA& a, bool ta, const MB& b, bool tb, MatrixMap<T> out, T alpha, T beta) {
  auto assign = [&](const auto& lhs, const auto& rhs) {
    if (beta == T(0)) {
      out.noalias() = alpha * (lhs * rhs);
    } else {
      if (beta != T(1)) out *= beta;
      out.noalias() += alpha * (lhs * rhs);
    }
  };
  if (ta && tb) assign(a.transpose(), b.transpose());
  else if (ta) assign(a.transpose(), b);
  else if (tb) assign(a, b.transpose());
  else assign(a, b);
}

template <typename T>
void gemm_native(const Operand& a, const Operand& b, T* out, int64_t batches, int64_t m, int64_t n, T alpha,
                 T beta, int64_t work) {
  const T* pa = static_cast<const T*>(a.data);
  const T* pb = static_cast<const T*>(b.data);
  auto one = [&](int64_t i) {
    MatrixMap<T> o(out + i * m * n, m, n, Eigen::OuterStride<>(n));
    product<T>(map_batch<T>(a, pa, i), a.trans, map_batch<T>(b, pb, i), b.trans, o, alpha, beta);
  };
  if (batches > 1) {
    parallel_for(batches, work, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) one(i);
    });
  } else {
    one(0);
  }
}

// bf16: widen each batch's operands to float, multiply, round once on the store.
void gemm_bf16(const Operand& a, const Operand& b, bf16* out, int64_t batches, int64_t m, int64_t n, float alpha,
               float beta, int64_t work) {
  auto widen = [](const Operand& op, int64_t batch, std::vector<float>& buf) {
    const bf16* p = static_cast<const bf16*>(op.data) + batch * op.batch_stride;
    buf.resize(static_cast<size_t>(op.rows * op.cols));
    for (int64_t r = 0; r < op.rows; ++r)
      for (int64_t c = 0; c < op.cols; ++c) buf[r * op.cols + c] = static_cast<float>(p[r * op.row_stride + c]);
    return ConstMatrixMap<float>(buf.data(), op.rows, op.cols, Eigen::OuterStride<>(op.cols));
  };
  auto run = [&](int64_t begin, int64_t end) {
    std::vector<float> abuf, bbuf, obuf(static_cast<size_t>(m * n));
    for (int64_t i = begin; i < end; ++i) {
      auto ma = widen(a, i, abuf);
      auto mb = widen(b, i, bbuf);
      MatrixMap<float> o(obuf.data(), m, n, Eigen::OuterStride<>(n));
      product<float>(ma, a.trans, mb, b.trans, o, 1.0f, 0.0f);
      bf16* ob = out + i * m * n;
      for (int64_t e = 0; e < m * n; ++e) {
        float v = alpha * obuf[e];
        if (beta != 0.0f) v += beta * static_cast<float>(ob[e]);
        ob[e] = bf16(v);
      }
    }
  };
  if (batches > 1)
    parallel_for(batches, work, run);
  else
    run(0, 1);
}

}  // namespace

void CpuBackend::gemm(const Tensor& a_in, bool trans_a, const Tensor& b_in, bool trans_b, const Tensor& out,
                      double alpha, double beta) {
  if (!gemm_prologue(*this, a_in, trans_a, b_in, trans_b, out, beta)) return;
  const int64_t batches = out.size(0), m = out.size(1), n = out.size(2);
  const int64_t k = trans_a ? a_in.size(1) : a_in.size(2);
  if (a_in.dtype() != out.dtype()) {
    // The mixed form (bf16 operands, f32 out): widen the operands and multiply in f32, which
    // is what the tensor cores compute (exact products, f32 sums).
    Tensor a32 = Tensor::empty(a_in.shape(), out.dtype(), out.device());
    Tensor b32 = Tensor::empty(b_in.shape(), out.dtype(), out.device());
    copy(a_in, a32);
    copy(b_in, b32);
    return gemm(a32, trans_a, b32, trans_b, out, alpha, beta);
  }
  Tensor a = mappable(a_in), b = mappable(b_in);
  Operand oa = describe_operand(a, trans_a), ob = describe_operand(b, trans_b);
  // Below about 2^21 multiply-adds per product, batch-level threads beat Eigen's.
  const int64_t work = m * n * k;
  const int64_t batch_work = work >= (int64_t{1} << 21) && batches < 8 ? 0 : work;
  switch (out.dtype()) {
    case DType::f32:
      return gemm_native<float>(oa, ob, static_cast<float*>(out.data_ptr()), batches, m, n,
                                static_cast<float>(alpha), static_cast<float>(beta), batch_work);
    case DType::f64:
      return gemm_native<double>(oa, ob, static_cast<double*>(out.data_ptr()), batches, m, n, alpha, beta,
                                 batch_work);
    case DType::bf16:
      return gemm_bf16(oa, ob, static_cast<bf16*>(out.data_ptr()), batches, m, n, static_cast<float>(alpha),
                       static_cast<float>(beta), batch_work);
    default:
      throw UserError(detail::concat("gemm of ", out.describe(), ": expected a floating dtype (f32, bf16, f64)"));
  }
}

}  // namespace ssmtrain::cpu

