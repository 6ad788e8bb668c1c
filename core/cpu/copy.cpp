// Data movement and creation on the CPU: copy (any views, any pair of dtypes), fill, arange.
#include <cstring>

#include "core/cpu/backend_cpu.h"
#include "core/cpu/kernel_util.h"

namespace ssmtrain::cpu {

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  SSMT_ASSERT(src.shape() == dst.shape(), "copy: ", src.describe(), " -> ", dst.describe());
  if (dst.numel() == 0) return;
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    std::memmove(dst.data_ptr(), src.data_ptr(), dst.nbytes());
    return;
  }
  SSMT_DISPATCH_ALL(dst.dtype(), "copy", [&] {
    using Dst = scalar_t;
    SSMT_DISPATCH_ALL(src.dtype(), "copy", [&] {
      using Src = scalar_t;
      // Through the compute type of the source: exact for every pair except integers
      // above 2^24 into f32/bf16, which round as a direct conversion would.
      map_elements<Dst, Src>(dst, {&src}, [](acc_t<Src> v) { return v; });
    });
  });
}

void CpuBackend::fill(const Tensor& dst, double value) {
  SSMT_ASSERT(dst.is_contiguous(), "fill: ", dst.describe());
  SSMT_DISPATCH_ALL(dst.dtype(), "fill", [&] {
    scalar_t v = store<scalar_t>(static_cast<acc_t<scalar_t>>(value));
    scalar_t* p = static_cast<scalar_t*>(dst.data_ptr());
    parallel_for(dst.numel(), 1, [&](int64_t begin, int64_t end) { std::fill(p + begin, p + end, v); });
  });
}

void CpuBackend::arange(const Tensor& dst, double start, double step) {
  SSMT_ASSERT(dst.is_contiguous() && dst.dim() == 1, "arange: ", dst.describe());
  SSMT_DISPATCH_ALL(dst.dtype(), "arange", [&] {
    scalar_t* p = static_cast<scalar_t*>(dst.data_ptr());
    // In double, then converted: exact for integer steps up to 2^53.
    parallel_for(dst.numel(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        p[i] = store<scalar_t>(static_cast<acc_t<scalar_t>>(start + static_cast<double>(i) * step));
    });
  });
}

}  // namespace ssmtrain::cpu
