// Reductions along one contiguous row, shared by the row kernels, the losses and the norms.
//
// Sums use eight interleaved accumulators over fixed chunks of kRowChunk elements, the
// chunk partials then added in order: better rounding than one running sum, vectorisable,
// and the same result whether a long row is split across threads or not.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/backend.h"
#include "core/cpu/kernel_util.h"

namespace ssmtrain::cpu {

constexpr int64_t kRowChunk = 8192;
constexpr int kLanes = 8;

// Maximum and minimum that propagate NaN (v != v only for NaN; never for integers).
template <typename A> A max_nan(A a, A b) { return (b > a || b != b) ? b : a; }
template <typename A> A min_nan(A a, A b) { return (b < a || b != b) ? b : a; }

// The identity of op for accumulator type S: 0, -inf (or lowest), +inf (or max).
template <typename S> S reduce_identity(ReduceOp op) {
  if (op == ReduceOp::sum) return S(0);
  constexpr bool inf = std::numeric_limits<S>::has_infinity;
  if (op == ReduceOp::max) return inf ? -std::numeric_limits<S>::infinity() : std::numeric_limits<S>::lowest();
  return inf ? std::numeric_limits<S>::infinity() : std::numeric_limits<S>::max();
}

template <typename S> S combine(ReduceOp op, S a, S b) {
  switch (op) {
    case ReduceOp::sum: return a + b;
    case ReduceOp::max: return max_nan(a, b);
    case ReduceOp::min: return min_nan(a, b);
  }
  return a;
}

// op over f(p[0..n)) with kLanes interleaved accumulators, folded in a fixed tree order.
template <typename S, typename T, typename F>
S lane_reduce(ReduceOp op, const T* p, int64_t n, const F& f) {
  S lanes[kLanes];
  for (S& l : lanes) l = reduce_identity<S>(op);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] = combine<S>(op, lanes[j], f(static_cast<S>(load(p[i + j]))));
  for (int j = 0; i < n; ++i, ++j) lanes[j] = combine<S>(op, lanes[j], f(static_cast<S>(load(p[i]))));
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int j = 0; j < width; ++j) lanes[j] = combine<S>(op, lanes[j], lanes[j + width]);
  return lanes[0];
}

// op over f(row[0..k)) chunk by chunk.
template <typename S, typename T, typename F>
S row_reduce(ReduceOp op, const T* row, int64_t k, const F& f) {
  S acc = reduce_identity<S>(op);
  for (int64_t c = 0; c < k; c += kRowChunk)
    acc = combine<S>(op, acc, lane_reduce<S>(op, row + c, std::min(kRowChunk, k - c), f));
  return acc;
}

struct Identity {
  template <typename S> S operator()(S v) const { return v; }
};

// max + log(sum exp(x - max)): a row of -inf (or an empty row) gives -inf and a row
// holding +inf gives +inf, never inf - inf.
template <typename A, typename T> A row_logsumexp(const T* row, int64_t k) {
  A mx = row_reduce<A>(ReduceOp::max, row, k, Identity{});
  if (std::isinf(mx)) return mx;
  A s = row_reduce<A>(ReduceOp::sum, row, k, [mx](A v) { return std::exp(v - mx); });
  return mx + std::log(s);
}

}  // namespace ssmtrain::cpu
