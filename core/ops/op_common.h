// Helpers shared by the op families in core/ops/: argument checks with messages that name
// the op and the tensors, axis normalisation, the "move an axis last and view as rows"
// layout that the row kernels of core/backend.h expect, and the matrix-operand preparation
// for Backend::gemm. Internal to core/ops (not part of the public op API).
#pragma once

#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/tensor.h"

namespace ssmtrain::ops_detail {

void check_defined(const Tensor& t, const char* op, const char* arg);
void check_floating(const Tensor& t, const char* op, const char* arg);
// Same device (and dtype when `same_dtype`), naming both tensors.
void check_compatible(const Tensor& a, const Tensor& b, const char* op, bool same_dtype = true);

// Sorted, de-duplicated, non-negative axes; empty means every axis.
Dims normalize_axes(const Dims& axes, int rank, const char* op);

// The dtype of statistics and per-row losses: f64 for f64 tensors, f32 otherwise.
inline DType stat_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// x with `axis` swapped to the end, contiguous, viewed as (M, K). `moved_shape` receives
// the shape after the swap. Call under NoGradGuard.
Tensor axis_last_rows(const Tensor& x, int axis, Dims* moved_shape);
// Inverse of axis_last_rows: rows (M, K') viewed as moved_shape (with K' in the last
// place), axis swapped back, contiguous.
Tensor rows_to_axis(const Tensor& rows, Dims moved_shape, int axis);

// out (.., M, N) = a (.., M, K) @ b (.., K, N) with NumPy batch broadcasting, no autodiff.
// Operands may be any strided views: transposed ones go to gemm with the transpose flag
// instead of being copied. Call under NoGradGuard.
Tensor matmul_nograd(const Tensor& a, const Tensor& b);
// out (M, N) = a (M, K) @ b (K, N) + beta * out for 2-D views; out contiguous.
void gemm_2d(const Tensor& a, const Tensor& b, const Tensor& out, double beta);

// The number of targets (any shape, i64) that are not ignore_index, as a () tensor of the
// statistics dtype `stat` on the targets' device, at least 1 (a batch with nothing to count
// gives a mean of 0, not 0/0). Stays on the device: no host sync. Call under NoGradGuard.
Tensor counted_targets(const Tensor& targets, int64_t ignore_index, DType stat);

// Gradient routed through a broadcast: sum to `shape`, contiguous (leaf gradients are
// never stride-0 views).
Tensor reduce_grad(const Tensor& g, const Dims& shape);

}  // namespace ssmtrain::ops_detail
