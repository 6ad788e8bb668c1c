// Element types and devices.
//
// bf16 is a plain 16-bit struct usable on host and device (round-to-nearest-even on
// conversion), so CPU kernels handle it exactly like CUDA kernels do: load as float,
// compute in float, store rounded.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/random.h"  // SSMT_HD

namespace ssmtrain {

enum class DType : uint8_t { f32, bf16, f64, i32, i64 };

inline constexpr int64_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f64: return 8;
    case DType::i32: return 4;
    case DType::i64: return 8;
  }
  return 0;
}
inline constexpr bool is_floating(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f64; }
const char* dtype_name(DType t);
DType dtype_from_name(const std::string& name);  // "f32", "bf16", ... (UserError otherwise)

struct bf16 {
  uint16_t bits;
  bf16() = default;
  SSMT_HD explicit bf16(float f) : bits(float_to_bits(f)) {}
  SSMT_HD operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
#if defined(__CUDA_ARCH__)
    f = __uint_as_float(u);
#else
    std::memcpy(&f, &u, 4);
#endif
    return f;
  }
  SSMT_HD static uint16_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // One instruction on sm_80+: the same round to nearest even as below (a NaN comes out as
    // the canonical quiet NaN rather than with its payload).
    uint16_t r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
#else
    uint32_t u;
#if defined(__CUDA_ARCH__)
    u = __float_as_uint(f);
#else
    std::memcpy(&u, &f, 4);
#endif
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return static_cast<uint16_t>(u >> 16);
#endif
  }
};
static_assert(sizeof(bf16) == 2);

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };

// Compute type of a storage type: bf16 and f32 compute in float, f64 in double.
template <typename T> struct acc_type { using type = T; };
template <> struct acc_type<bf16> { using type = float; };
template <typename T> using acc_t = typename acc_type<T>::type;

// Run `body` with `scalar_t` bound to the C++ type of `dt`. Float types only unless the
// _ALL variant is used; other types throw a UserError naming `what`.
#define SSMT_DISPATCH_FLOAT(dt, what, ...)                                                   \
  [&] {                                                                                      \
    switch (dt) {                                                                            \
      case ::ssmtrain::DType::f32: { using scalar_t = float; return __VA_ARGS__(); }         \
      case ::ssmtrain::DType::bf16: { using scalar_t = ::ssmtrain::bf16; return __VA_ARGS__(); } \
      case ::ssmtrain::DType::f64: { using scalar_t = double; return __VA_ARGS__(); }        \
      default:                                                                               \
        throw ::ssmtrain::UserError(::ssmtrain::detail::concat(                              \
            what, ": expected a floating dtype (f32, bf16, f64), got ", ::ssmtrain::dtype_name(dt))); \
    }                                                                                        \
  }()

#define SSMT_DISPATCH_ALL(dt, what, ...)                                                     \
  [&] {                                                                                      \
    switch (dt) {                                                                            \
      case ::ssmtrain::DType::f32: { using scalar_t = float; return __VA_ARGS__(); }         \
      case ::ssmtrain::DType::bf16: { using scalar_t = ::ssmtrain::bf16; return __VA_ARGS__(); } \
      case ::ssmtrain::DType::f64: { using scalar_t = double; return __VA_ARGS__(); }        \
      case ::ssmtrain::DType::i32: { using scalar_t = int32_t; return __VA_ARGS__(); }       \
      case ::ssmtrain::DType::i64: { using scalar_t = int64_t; return __VA_ARGS__(); }       \
    }                                                                                        \
    throw ::ssmtrain::InternalError(what);                                                   \
  }()

// A device: the CPU or one CUDA GPU.
struct Device {
  enum class Kind : uint8_t { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int i = 0) { return {Kind::cuda, i}; }
  bool is_cpu() const { return kind == Kind::cpu; }
  bool is_cuda() const { return kind == Kind::cuda; }
  bool operator==(const Device& o) const { return kind == o.kind && (kind == Kind::cpu || index == o.index); }
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
  static Device parse(const std::string& s);  // "cpu", "cuda", "cuda:1" (UserError otherwise)
};

// True when ssmtrain was built with CUDA and a GPU is visible.
bool cuda_available();

}  // namespace ssmtrain
