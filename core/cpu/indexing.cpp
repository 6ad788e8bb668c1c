// Row and last-axis indexing: index_select_rows / index_add_rows (embedding forward and
// backward) and gather_last / scatter_add_last. Indices are validated before any write;
// the adds are deterministic: every output row is owned by one thread and receives its
// contributions in index order, accumulated in the compute type and rounded once.
#include <cstring>
#include <vector>

#include "core/cpu/backend_cpu.h"
#include "core/cpu/kernel_util.h"

namespace ssmtrain::cpu {

namespace {

// Throws for the first index outside [0, n), naming its value, position and the range.
void check_indices(const int64_t* idx, int64_t count, int64_t n, const char* op, const Tensor& indexed,
                   const char* axis_name) {
  bool all_valid = true;
  for (int64_t i = 0; i < count; ++i) all_valid &= idx[i] >= 0 && idx[i] < n;
  if (all_valid) return;
  for (int64_t i = 0; i < count; ++i)
    SSMT_CHECK(idx[i] >= 0 && idx[i] < n, op, ": index ", idx[i], " (position ", i, ") is out of range for ",
               indexed.describe(), ": expected ", axis_name, " in [0, ", n, ")");
}

void check_index_tensor(const Tensor& idx, const char* op) {
  SSMT_ASSERT(idx.dtype() == DType::i64 && idx.is_contiguous(), op, ": indices ", idx.describe());
}

}  // namespace

void CpuBackend::index_select_rows(const Tensor& x_in, const Tensor& idx, const Tensor& out) {
  Tensor x = contiguous_input(x_in);
  check_index_tensor(idx, "index_select_rows");
  SSMT_ASSERT(x.dim() == 2 && out.dim() == 2 && out.size(0) == idx.numel() && out.size(1) == x.size(1) &&
                  out.is_contiguous() && out.dtype() == x.dtype(),
              "index_select_rows: ", x.describe(), "[", idx.describe(), "] -> ", out.describe());
  const int64_t n = x.size(0), m = out.size(0), row_bytes = x.size(1) * dtype_size(x.dtype());
  const int64_t* ix = static_cast<const int64_t*>(idx.data_ptr());
  check_indices(ix, m, n, "index_select_rows", x, "a row");
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  parallel_for(m, x.size(1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) std::memcpy(dst + r * row_bytes, src + ix[r] * row_bytes, row_bytes);
  });
}

void CpuBackend::index_add_rows(const Tensor& g_in, const Tensor& idx, const Tensor& out) {
  Tensor g = contiguous_input(g_in);
  check_index_tensor(idx, "index_add_rows");
  SSMT_ASSERT(g.dim() == 2 && out.dim() == 2 && g.size(0) == idx.numel() && out.size(1) == g.size(1) &&
                  out.is_contiguous() && out.dtype() == g.dtype(),
              "index_add_rows: ", out.describe(), "[", idx.describe(), "] += ", g.describe());
  const int64_t n = out.size(0), m = g.size(0), width = g.size(1);
  const int64_t* ix = static_cast<const int64_t*>(idx.data_ptr());
  check_indices(ix, m, n, "index_add_rows", out, "a row");
  // Counting sort of the positions by target row (stable, so each row's sources stay in
  // index order): sources of row t are order[start[t] .. start[t + 1]).
  std::vector<int64_t> start(static_cast<size_t>(n + 1), 0), order(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) ++start[ix[i] + 1];
  for (int64_t t = 0; t < n; ++t) start[t + 1] += start[t];
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < m; ++i) order[next[ix[i]]++] = i;
  }
  SSMT_DISPATCH_ALL(g.dtype(), "index_add_rows", [&] {
    using T = scalar_t;
    using S = sum_t<T>;
    const T* pg = static_cast<const T*>(g.data_ptr());
    T* po = static_cast<T*>(out.data_ptr());
    parallel_for(n, width * std::max<int64_t>(1, m / std::max<int64_t>(n, 1)), [&](int64_t begin, int64_t end) {
      std::vector<S> acc(static_cast<size_t>(width));
      for (int64_t t = begin; t < end; ++t) {
        if (start[t] == start[t + 1]) continue;
        T* orow = po + t * width;
        for (int64_t j = 0; j < width; ++j) acc[j] = load(orow[j]);
        for (int64_t s = start[t]; s < start[t + 1]; ++s) {
          const T* grow = pg + order[s] * width;
          for (int64_t j = 0; j < width; ++j) acc[j] += load(grow[j]);
        }
        for (int64_t j = 0; j < width; ++j) orow[j] = store<T>(acc[j]);
      }
    });
  });
}

void CpuBackend::gather_last(const Tensor& x_in, const Tensor& idx, const Tensor& out) {
  Tensor x = contiguous_input(x_in);
  check_index_tensor(idx, "gather_last");
  SSMT_ASSERT(x.dim() == 2 && idx.dim() == 2 && out.shape() == idx.shape() && idx.size(0) == x.size(0) &&
                  out.is_contiguous() && out.dtype() == x.dtype(),
              "gather_last: ", x.describe(), "[", idx.describe(), "] -> ", out.describe());
  const int64_t m = x.size(0), k = x.size(1), j = idx.size(1);
  const int64_t* ix = static_cast<const int64_t*>(idx.data_ptr());
  check_indices(ix, m * j, k, "gather_last", x, "a last-axis index");
  SSMT_DISPATCH_ALL(x.dtype(), "gather_last", [&] {
    using T = scalar_t;
    const T* px = static_cast<const T*>(x.data_ptr());
    T* po = static_cast<T*>(out.data_ptr());
    parallel_for(m * j, 1, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) po[e] = px[(e / std::max<int64_t>(j, 1)) * k + ix[e]];
    });
  });
}

void CpuBackend::scatter_add_last(const Tensor& g_in, const Tensor& idx, const Tensor& out) {
  Tensor g = contiguous_input(g_in);
  check_index_tensor(idx, "scatter_add_last");
  SSMT_ASSERT(g.dim() == 2 && idx.shape() == g.shape() && out.dim() == 2 && out.size(0) == g.size(0) &&
                  out.is_contiguous() && out.dtype() == g.dtype(),
              "scatter_add_last: ", out.describe(), "[", idx.describe(), "] += ", g.describe());
  const int64_t m = out.size(0), k = out.size(1), j = g.size(1);
  const int64_t* ix = static_cast<const int64_t*>(idx.data_ptr());
  check_indices(ix, m * j, k, "scatter_add_last", out, "a last-axis index");
  SSMT_DISPATCH_ALL(g.dtype(), "scatter_add_last", [&] {
    using T = scalar_t;
    using S = sum_t<T>;
    const T* pg = static_cast<const T*>(g.data_ptr());
    T* po = static_cast<T*>(out.data_ptr());
    parallel_for(m, j + k, [&](int64_t begin, int64_t end) {
      std::vector<S> acc(static_cast<size_t>(k));  // the row in the compute type: one rounding per element
      for (int64_t r = begin; r < end; ++r) {
        T* orow = po + r * k;
        const T* grow = pg + r * j;
        const int64_t* irow = ix + r * j;
        for (int64_t c = 0; c < k; ++c) acc[c] = load(orow[c]);
        for (int64_t c = 0; c < j; ++c) acc[irow[c]] += load(grow[c]);
        for (int64_t c = 0; c < k; ++c) orow[c] = store<T>(acc[c]);
      }
    });
  });
}

}  // namespace ssmtrain::cpu
