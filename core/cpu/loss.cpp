// Fused cross-entropy on the CPU: one pass of max + sum-exp per row for the forward, and a
// backward that recomputes softmax from the saved logsumexp instead of storing it.
// loss, lse and gloss are f64 for f64 logits, f32 otherwise (backend_cpu.h).
#include <cmath>

#include "core/cpu/backend_cpu.h"
#include "core/cpu/kernel_util.h"
#include "core/cpu/row_reduce.h"

namespace ssmtrain::cpu {

namespace {

// Reports the first target outside [0, v) that is not ignore_index.
void check_targets(const int64_t* targets, int64_t m, int64_t v, int64_t ignore_index, const Tensor& logits) {
  for (int64_t r = 0; r < m; ++r) {
    int64_t t = targets[r];
    SSMT_CHECK(t == ignore_index || (t >= 0 && t < v), "cross_entropy: target ", t, " at row ", r,
               " is out of range for logits ", logits.describe(), ": expected a class in [0, ", v,
               ") or ignore_index ", ignore_index);
  }
}

}  // namespace

void CpuBackend::cross_entropy_forward(const Tensor& logits_in, const Tensor& targets_in, int64_t ignore_index,
                                       const Tensor& loss, const Tensor& lse) {
  Tensor logits = contiguous_input(logits_in), targets = contiguous_input(targets_in);
  SSMT_ASSERT(logits.dim() == 2 && targets.dtype() == DType::i64 && targets.numel() == logits.size(0) &&
                  loss.numel() == logits.size(0) && lse.numel() == logits.size(0) && loss.is_contiguous() &&
                  lse.is_contiguous(),
              "cross_entropy_forward: ", logits.describe(), ", ", targets.describe(), " -> ", loss.describe(),
              ", ", lse.describe());
  const int64_t m = logits.size(0), v = logits.size(1);
  const int64_t* tg = static_cast<const int64_t*>(targets.data_ptr());
  check_targets(tg, m, v, ignore_index, logits);
  SSMT_DISPATCH_FLOAT(logits.dtype(), "cross_entropy_forward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* pl = static_cast<const T*>(logits.data_ptr());
    parallel_for(m, 2 * v, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* row = pl + r * v;
        A row_lse = row_logsumexp<A>(row, v);
        A row_loss = tg[r] == ignore_index ? A(0) : row_lse - load(row[tg[r]]);
        store_any_float(lse, r, row_lse);
        store_any_float(loss, r, row_loss);
      }
    });
  });
}

void CpuBackend::cross_entropy_backward(const Tensor& logits_in, const Tensor& targets_in, const Tensor& lse,
                                        const Tensor& gloss, int64_t ignore_index, const Tensor& dlogits) {
  Tensor logits = contiguous_input(logits_in), targets = contiguous_input(targets_in);
  SSMT_ASSERT(logits.dim() == 2 && dlogits.shape() == logits.shape() && dlogits.is_contiguous() &&
                  dlogits.dtype() == logits.dtype() && targets.numel() == logits.size(0) &&
                  lse.numel() == logits.size(0) && gloss.numel() == logits.size(0) && lse.dim() == 1 &&
                  gloss.dim() == 1,
              "cross_entropy_backward: ", logits.describe(), " -> ", dlogits.describe());
  const int64_t m = logits.size(0), v = logits.size(1);
  const int64_t* tg = static_cast<const int64_t*>(targets.data_ptr());
  SSMT_DISPATCH_FLOAT(logits.dtype(), "cross_entropy_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* pl = static_cast<const T*>(logits.data_ptr());
    T* pd = static_cast<T*>(dlogits.data_ptr());
    parallel_for(m, v, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* row = pl + r * v;
        T* drow = pd + r * v;
        int64_t t = tg[r];
        if (t == ignore_index) {
          std::fill(drow, drow + v, store<T>(A(0)));
          continue;
        }
        A row_lse = static_cast<A>(load_any_float(lse, r)), g = static_cast<A>(load_any_float(gloss, r));
        for (int64_t i = 0; i < v; ++i) drow[i] = store<T>(std::exp(load(row[i]) - row_lse) * g);
        if (t >= 0 && t < v) drow[t] = store<T>((std::exp(load(row[t]) - row_lse) - A(1)) * g);
      }
    });
  });
}

void CpuBackend::cross_entropy_with_grad(const Tensor& logits_in, const Tensor& targets_in, int64_t ignore_index,
                                         const Tensor& scale, const Tensor& loss, const Tensor& lse,
                                         const Tensor& dlogits) {
  Tensor logits = contiguous_input(logits_in), targets = contiguous_input(targets_in);
  SSMT_ASSERT(logits.dim() == 2 && dlogits.shape() == logits.shape() && dlogits.is_contiguous() &&
                  targets.dtype() == DType::i64 && targets.numel() == logits.size(0) &&
                  loss.numel() == logits.size(0) && lse.numel() == logits.size(0) && scale.numel() == 1,
              "cross_entropy_with_grad: ", logits.describe(), ", ", targets.describe(), " -> ", dlogits.describe());
  const int64_t m = logits.size(0), v = logits.size(1);
  const int64_t* tg = static_cast<const int64_t*>(targets.data_ptr());
  check_targets(tg, m, v, ignore_index, logits);
  const double g_scale = load_any_float(contiguous_input(scale), 0);
  SSMT_DISPATCH_FLOAT(logits.dtype(), "cross_entropy_with_grad", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* pl = static_cast<const T*>(logits.data_ptr());
    const A g = static_cast<A>(g_scale);
    SSMT_DISPATCH_FLOAT(dlogits.dtype(), "cross_entropy_with_grad", [&] {
      using D = scalar_t;
      D* pd = static_cast<D*>(dlogits.data_ptr());
      parallel_for(m, 3 * v, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const T* row = pl + r * v;
          D* drow = pd + r * v;
          const int64_t t = tg[r];
          const A row_lse = row_logsumexp<A>(row, v);
          store_any_float(lse, r, row_lse);
          store_any_float(loss, r, t == ignore_index ? A(0) : row_lse - load(row[t]));
          if (t == ignore_index) {
            std::fill(drow, drow + v, store<D>(0.0f));
            continue;
          }
          for (int64_t i = 0; i < v; ++i) drow[i] = store<D>(std::exp(load(row[i]) - row_lse) * g);
          drow[t] = store<D>((std::exp(load(row[t]) - row_lse) - A(1)) * g);
        }
      });
    });
  });
}

}  // namespace ssmtrain::cpu
