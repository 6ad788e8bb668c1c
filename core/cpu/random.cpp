// Random fills: pure functions of (seed, offset + i) from core/random.h, so every element
// is independent of the thread that writes it and CUDA can reproduce them.
//
// The exact formulas (the CUDA kernels must use the same, fma included: nvcc contracts
// a * b + c into fmaf by default, so the CPU asks for the fused form explicitly):
//   uniform, f32/bf16: fmaf(float(high - low), random_uniform(seed, offset + i), float(low))
//   uniform, f64:      fma(high - low, double(random_uniform(...)), low)
//   normal,  f32/bf16: fmaf(float(std), random_normal(seed, offset + i), float(mean))
//   normal,  f64:      fma(std, double(random_normal(...)), mean)
//   randint, any:      low + philox4x32(offset + i, seed).v[2] % (high - low), computed in
//                      int64 and converted (ranges wider than 2^32 reach only their first
//                      2^32 values)
// bf16 stores round the float value. Uniform draws match CUDA bit for bit; normal draws
// match to the ulp-level differences between the CUDA and host logf/cosf.
#include <cmath>

#include "core/cpu/backend_cpu.h"
#include "core/cpu/kernel_util.h"

namespace ssmtrain::cpu {

namespace {

// dst[i] = value_of(offset + i), dst contiguous.
template <typename T, typename F>
void fill_indexed(const Tensor& dst, uint64_t offset, const F& value_of) {
  T* p = static_cast<T*>(dst.data_ptr());
  // A Philox draw is ~40 integer multiplies: worth threads earlier than a plain store.
  parallel_for(dst.numel(), 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) p[i] = store<T>(value_of(offset + static_cast<uint64_t>(i)));
  });
}

}  // namespace

void CpuBackend::fill_uniform(const Tensor& dst, uint64_t seed, uint64_t offset, double low, double high) {
  SSMT_ASSERT(dst.is_contiguous(), "fill_uniform: ", dst.describe());
  SSMT_DISPATCH_FLOAT(dst.dtype(), "fill_uniform", [&] {
    using T = scalar_t;
    if constexpr (std::is_same_v<acc_t<T>, double>) {
      fill_indexed<T>(dst, offset, [&](uint64_t c) {
        return std::fma(high - low, static_cast<double>(random_uniform(seed, c)), low);
      });
    } else {
      float range = static_cast<float>(high - low), lo = static_cast<float>(low);
      fill_indexed<T>(dst, offset, [&](uint64_t c) { return std::fmaf(range, random_uniform(seed, c), lo); });
    }
  });
}

void CpuBackend::fill_normal(const Tensor& dst, uint64_t seed, uint64_t offset, double mean, double std) {
  SSMT_ASSERT(dst.is_contiguous(), "fill_normal: ", dst.describe());
  SSMT_DISPATCH_FLOAT(dst.dtype(), "fill_normal", [&] {
    using T = scalar_t;
    if constexpr (std::is_same_v<acc_t<T>, double>) {
      fill_indexed<T>(dst, offset, [&](uint64_t c) {
        return std::fma(std, static_cast<double>(random_normal(seed, c)), mean);
      });
    } else {
      float s = static_cast<float>(std), m = static_cast<float>(mean);
      fill_indexed<T>(dst, offset, [&](uint64_t c) { return std::fmaf(s, random_normal(seed, c), m); });
    }
  });
}

void CpuBackend::fill_randint(const Tensor& dst, uint64_t seed, uint64_t offset, int64_t low, int64_t high) {
  SSMT_ASSERT(dst.is_contiguous(), "fill_randint: ", dst.describe());
  SSMT_CHECK(high > low, "fill_randint of ", dst.describe(), ": empty range [", low, ", ", high, ")");
  uint64_t range = static_cast<uint64_t>(high) - static_cast<uint64_t>(low);
  SSMT_DISPATCH_ALL(dst.dtype(), "fill_randint", [&] {
    fill_indexed<scalar_t>(dst, offset, [&](uint64_t c) {
      uint64_t draw = philox4x32(c, seed).v[2] % range;
      return static_cast<acc_t<scalar_t>>(low + static_cast<int64_t>(draw));
    });
  });
}

}  // namespace ssmtrain::cpu
