// Building blocks of the CPU kernels: the parallel loop, the strided N-d walk that lets every
// elementwise kernel take arbitrary views (any strides, stride 0 for broadcasts, offsets),
// and the load/store conversions (bf16 loads as float, is stored rounded).
//
// Determinism: parallel_for splits [0, n) into contiguous ranges, and every kernel gives
// each output element to exactly one range with a fixed order of its own arithmetic, so
// results are identical for any thread count.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/tensor.h"

namespace ssmtrain::cpu {

// Below this much work (elements touched) a loop runs on the calling thread: OpenMP's
// start-up costs more than it saves for small tensors.
constexpr int64_t kParallelWork = 32768;

// body(begin, end) over contiguous ranges covering [0, n); parallel when n * work_per_item
// reaches kParallelWork. The body must not throw (validate before the loop).
template <typename Body>
void parallel_for(int64_t n, int64_t work_per_item, const Body& body) {
  if (n <= 0) return;
#ifdef _OPENMP
  if (n > 1 && n * std::max<int64_t>(work_per_item, 1) >= kParallelWork && !omp_in_parallel() &&
      omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
      int64_t begin = n * t / threads, end = n * (t + 1) / threads;
      if (begin < end) body(begin, end);
    }
    return;
  }
#endif
  body(0, n);
}

// ---- conversions ----

// Accumulator of sums: float for f32/bf16, double for f64, int64 for the integer types.
template <typename T>
using sum_t = std::conditional_t<std::is_integral_v<T>, int64_t, acc_t<T>>;

template <typename T> inline acc_t<T> load(T v) { return static_cast<acc_t<T>>(v); }

template <typename T, typename V> inline T store(V v) {
  if constexpr (std::is_same_v<T, bf16>)
    return bf16(static_cast<float>(v));
  else
    return static_cast<T>(v);
}

// Reads element i of a float tensor of any float dtype (for small per-row or per-feature
// vectors whose dtype may differ from the main operand's).
inline double load_any_float(const Tensor& t, int64_t i) {
  const void* p = t.data_ptr();
  int64_t s = t.dim() == 0 ? 0 : t.strides()[0];
  switch (t.dtype()) {
    case DType::f32: return static_cast<const float*>(p)[i * s];
    case DType::bf16: return static_cast<const bf16*>(p)[i * s];
    case DType::f64: return static_cast<const double*>(p)[i * s];
    default: SSMT_ASSERT(false, "load_any_float: ", dtype_name(t.dtype()));
  }
  return 0;
}

inline void store_any_float(const Tensor& t, int64_t i, double v) {
  void* p = t.data_ptr();
  switch (t.dtype()) {
    case DType::f32: static_cast<float*>(p)[i] = static_cast<float>(v); return;
    case DType::bf16: static_cast<bf16*>(p)[i] = bf16(static_cast<float>(v)); return;
    case DType::f64: static_cast<double*>(p)[i] = v; return;
    default: SSMT_ASSERT(false, "store_any_float: ", dtype_name(t.dtype()));
  }
}

// t itself when contiguous, else a contiguous copy made with the CPU copy kernel (no tape).
Tensor contiguous_input(const Tensor& t);

// ---- the strided walk ----

// N tensors of one shape, with size-1 axes dropped and adjacent axes merged wherever every
// tensor allows it, so a transposed or broadcast view usually walks as a 2-D loop.
template <int N>
struct StridedWalk {
  int rank = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};

  bool contiguous() const {
    if (rank == 0) return true;
    if (rank > 1) return false;
    for (int k = 0; k < N; ++k)
      if (strides[k][0] != 1) return false;
    return true;
  }
};

template <int N>
StridedWalk<N> make_walk(const Dims& shape, const std::array<const Tensor*, N>& tensors) {
  StridedWalk<N> w;
  for (int d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    w.shape[w.rank] = shape[d];
    for (int k = 0; k < N; ++k) w.strides[k][w.rank] = tensors[k]->strides()[d];
    ++w.rank;
  }
  // Merge axis d into axis d + 1 (from the inside out) when every tensor steps evenly across.
  int out = w.rank - 1;
  for (int d = w.rank - 2; d >= 0; --d) {
    bool mergeable = true;
    for (int k = 0; k < N; ++k)
      mergeable = mergeable && w.strides[k][d] == w.strides[k][out] * w.shape[out];
    if (mergeable) {
      w.shape[out] *= w.shape[d];
    } else {
      --out;
      w.shape[out] = w.shape[d];
      for (int k = 0; k < N; ++k) w.strides[k][out] = w.strides[k][d];
    }
  }
  if (w.rank > 0 && out > 0) {  // shift the merged axes to the front
    int merged_rank = w.rank - out;
    for (int d = 0; d < merged_rank; ++d) {
      w.shape[d] = w.shape[d + out];
      for (int k = 0; k < N; ++k) w.strides[k][d] = w.strides[k][d + out];
    }
    w.rank = merged_rank;
  }
  return w;
}

// body(offsets) for elements [begin, end) of the row-major order of w (rank >= 1).
template <int N, typename Body>
void walk_range(const StridedWalk<N>& w, int64_t begin, int64_t end, const Body& body) {
  const int r = w.rank, last = r - 1;
  int64_t idx[kMaxDims];
  int64_t rem = begin;
  for (int d = last; d >= 0; --d) {
    idx[d] = rem % w.shape[d];
    rem /= w.shape[d];
  }
  std::array<int64_t, N> base{};  // offsets of (idx[0..last-1], 0)
  for (int d = 0; d < last; ++d)
    for (int k = 0; k < N; ++k) base[k] += idx[d] * w.strides[k][d];
  int64_t remaining = end - begin;
  int64_t j = idx[last];
  while (remaining > 0) {
    int64_t stop = std::min(w.shape[last], j + remaining);
    remaining -= stop - j;
    for (; j < stop; ++j) {
      std::array<int64_t, N> off;
      for (int k = 0; k < N; ++k) off[k] = base[k] + j * w.strides[k][last];
      body(off);
    }
    j = 0;
    for (int d = last - 1; d >= 0; --d) {  // odometer step of the outer axes
      for (int k = 0; k < N; ++k) base[k] += w.strides[k][d];
      if (++idx[d] < w.shape[d]) break;
      for (int k = 0; k < N; ++k) base[k] -= w.strides[k][d] * w.shape[d];
      idx[d] = 0;
    }
  }
}

// body(offsets) for every element of `shape`, offsets[k] being the element's offset in
// tensors[k] (relative to its data_ptr()). All-contiguous operands take a plain loop.
template <int N, typename Body>
void for_each_element(const Dims& shape, const std::array<const Tensor*, N>& tensors, const Body& body) {
  int64_t n = shape.numel();
  if (n == 0) return;
  StridedWalk<N> w = make_walk<N>(shape, tensors);
  if (w.contiguous()) {
    parallel_for(n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        std::array<int64_t, N> off;
        off.fill(i);
        body(off);
      }
    });
  } else {
    parallel_for(n, 1, [&](int64_t begin, int64_t end) { walk_range<N>(w, begin, end, body); });
  }
}

namespace map_detail {
template <typename TOut, typename... TIn, typename F, size_t... I>
void map_elements_impl(std::index_sequence<I...>, const Tensor& out,
                       const std::array<const Tensor*, sizeof...(TIn)>& ins, const F& f) {
  constexpr int N = 1 + sizeof...(TIn);
  TOut* o = static_cast<TOut*>(out.data_ptr());
  std::tuple<const TIn*...> in_ptrs{static_cast<const TIn*>(ins[I]->data_ptr())...};
  std::array<const Tensor*, N> all{&out, ins[I]...};
  for_each_element<N>(out.shape(), all, [&](const std::array<int64_t, N>& off) {
    o[off[0]] = store<TOut>(f(load(std::get<I>(in_ptrs)[off[I + 1]])...));
  });
}
}  // namespace map_detail

// out[e] = f(load(in_0[e]), load(in_1[e]), ...) for every element e of out's shape; out and
// the inputs may be any views of that shape; f receives compute types (acc_t).
template <typename TOut, typename... TIn, typename F>
void map_elements(const Tensor& out, const std::array<const Tensor*, sizeof...(TIn)>& ins, const F& f) {
  map_detail::map_elements_impl<TOut, TIn...>(std::index_sequence_for<TIn...>{}, out, ins, f);
}

}  // namespace ssmtrain::cpu
