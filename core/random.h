// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
//
// Every random draw in ssmtrain is a pure function of (seed, counter): element i of a
// fill at stream offset `offset` uses counter offset + i. The same function compiles for
// the host and the device, so CPU and CUDA produce identical numbers for the same seed
// and offset, and a checkpoint restores a generator exactly by storing (seed, offset).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SSMT_HD __host__ __device__ __forceinline__
#else
#define SSMT_HD inline
#endif

namespace ssmtrain {

struct Philox4x32 {
  uint32_t v[4];
};

// Philox4x32-10: counter (c0..c3), key (k0, k1) -> 4 random 32-bit words.
SSMT_HD Philox4x32 philox4x32(uint64_t counter, uint64_t key) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = static_cast<uint64_t>(M0) * c0;
    uint64_t p1 = static_cast<uint64_t>(M1) * c2;
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += W0;
    k1 += W1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// Uniform in [0, 1) with 24 bits, from one 32-bit word.
SSMT_HD float philox_uniform(uint32_t w) { return static_cast<float>(w >> 8) * (1.0f / 16777216.0f); }

// The i-th uniform of a stream: counter = i, first word.
SSMT_HD float random_uniform(uint64_t seed, uint64_t index) {
  return philox_uniform(philox4x32(index, seed).v[0]);
}

// The i-th standard normal of a stream (Box-Muller on words 0 and 1 of counter i).
SSMT_HD float random_normal(uint64_t seed, uint64_t index) {
  Philox4x32 r = philox4x32(index, seed);
  float u1 = (static_cast<float>(r.v[0] >> 8) + 1.0f) * (1.0f / 16777216.0f);  // (0, 1]
  float u2 = philox_uniform(r.v[1]);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}

// A host-side generator: a seed and a running offset. Each draw of n numbers consumes
// n counters, so (seed, offset) is the whole state.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t offset = 0) : seed_(seed), offset_(offset) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  // Reserve n counters and return the first one.
  uint64_t advance(uint64_t n) {
    uint64_t first = offset_;
    offset_ += n;
    return first;
  }
  float uniform() { return random_uniform(seed_, advance(1)); }
  float normal() { return random_normal(seed_, advance(1)); }
  // Uniform integer in [0, n) (n > 0); the 2^-32 modulo bias is irrelevant at our sizes.
  uint32_t below(uint32_t n) { return philox4x32(advance(1), seed_).v[2] % n; }

 private:
  uint64_t seed_;
  uint64_t offset_;
};

}  // namespace ssmtrain
