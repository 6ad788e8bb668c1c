// Host memory for CPU storages: 64-byte aligned blocks (a cache line, and the widest SIMD
// load) straight from the C library, with atomic counters for memory_stats().
//
// The counters hold the bytes actually reserved, i.e. sizes rounded up to 64. There is no
// cache, so `reserved` equals `in_use`, and device_allocs / device_frees count the
// aligned_alloc / free calls.
#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "core/error.h"
#include "core/storage.h"

namespace ssmtrain::cpu {

namespace {

constexpr size_t kAlignment = 64;

std::atomic<int64_t> g_in_use{0};
std::atomic<int64_t> g_peak{0};
std::atomic<int64_t> g_allocs{0};
std::atomic<int64_t> g_frees{0};

// Zero-byte storages still get a real block, so data pointers are never null.
size_t rounded_size(size_t nbytes) { return (std::max<size_t>(nbytes, 1) + kAlignment - 1) / kAlignment * kAlignment; }

}  // namespace

void* allocate(size_t nbytes) {
  size_t size = rounded_size(nbytes);
  void* p = std::aligned_alloc(kAlignment, size);
  SSMT_CHECK(p != nullptr, "cpu allocator: cannot allocate ", nbytes, " bytes (out of host memory)");
  int64_t now = g_in_use.fetch_add(static_cast<int64_t>(size)) + static_cast<int64_t>(size);
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
  g_allocs.fetch_add(1);
  return p;
}

void deallocate(void* p, size_t nbytes) {
  if (!p) return;
  std::free(p);
  g_in_use.fetch_sub(static_cast<int64_t>(rounded_size(nbytes)));
  g_frees.fetch_add(1);
}

MemoryStats memory_stats() {
  MemoryStats s;
  s.in_use = g_in_use.load();
  s.peak_in_use = g_peak.load();
  s.reserved = s.in_use;
  s.device_allocs = g_allocs.load();
  s.device_frees = g_frees.load();
  return s;
}

void reset_peak_memory() { g_peak.store(g_in_use.load()); }

}  // namespace ssmtrain::cpu
