// The caching allocator of CUDA memory (the cuda:: hooks of core/storage.h).
//
// Two pools, both stream-ordered on the device's single compute stream (a freed block can
// serve the very next request: kernels that still use it are queued before any new user):
//  - small requests (<= 1 MiB) are rounded up to 512 B and carved from 2 MiB segments;
//    freed small blocks go to a free list per rounded size and are never split or merged;
//  - large requests are rounded up to 2 MiB and get their own cudaMalloc; a freed large
//    block serves any later request it fits with at most 25% slack (best fit).
// A training step repeats the same sizes, so after the first step every request is a
// free-list hit and no cudaMalloc/cudaFree happens. When cudaMalloc fails, the cache is
// returned to the driver and the allocation retried once before reporting out-of-memory.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/backend.h"
#include "core/cuda/cuda_check.cuh"
#include "core/cuda/device.cuh"
#include "core/profiler.h"
#include "core/storage.h"

namespace ssmtrain {
namespace {

constexpr size_t kSmallLimit = size_t{1} << 20;
constexpr size_t kSmallRound = 512;
constexpr size_t kSegmentBytes = size_t{2} << 20;
constexpr size_t kLargeRound = size_t{2} << 20;

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

struct Segment {  // a 2 MiB cudaMalloc carved into small blocks
  char* base = nullptr;
  size_t used = 0;     // bump offset
  int64_t live = 0;    // blocks handed out and not yet freed
};

struct Block {
  size_t size = 0;  // rounded size
  Segment* segment = nullptr;  // null for large blocks
};

class CachingAllocator {
 public:
  explicit CachingAllocator(int device) : device_(device) {}

  void* allocate(size_t nbytes) {
    if (nbytes == 0) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    void* p = nbytes <= kSmallLimit ? allocate_small(round_up(nbytes, kSmallRound))
                                    : allocate_large(round_up(nbytes, kLargeRound), nbytes);
    const Block& b = live_.at(p);
    stats_.in_use += static_cast<int64_t>(b.size);
    if (stats_.in_use > stats_.peak_in_use) stats_.peak_in_use = stats_.in_use;
    return p;
  }

  void deallocate(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(p);
    SSMT_ASSERT(it != live_.end(), "cuda:", device_, ": freeing a pointer the allocator does not own");
    Block b = it->second;
    live_.erase(it);
    stats_.in_use -= static_cast<int64_t>(b.size);
    if (b.segment) {
      --b.segment->live;
      small_free_[b.size].push_back({p, b.segment});
    } else {
      large_free_.emplace(b.size, p);
    }
  }

  MemoryStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_in_use = stats_.in_use;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cache();
  }

 private:
  struct FreeSmall {
    void* ptr;
    Segment* segment;
  };

  void* allocate_small(size_t size) {
    auto& list = small_free_[size];
    if (!list.empty()) {
      FreeSmall f = list.back();
      list.pop_back();
      ++f.segment->live;
      live_[f.ptr] = Block{size, f.segment};
      return f.ptr;
    }
    if (!open_ || open_->used + size > kSegmentBytes) {
      // The tail of the previous segment (< 1 MiB) stays unused until empty_cache.
      auto seg = std::make_unique<Segment>();
      seg->base = static_cast<char*>(device_malloc(kSegmentBytes, size));
      open_ = seg.get();
      segments_.push_back(std::move(seg));
    }
    void* p = open_->base + open_->used;
    open_->used += size;
    ++open_->live;
    live_[p] = Block{size, open_};
    return p;
  }

  void* allocate_large(size_t size, size_t requested) {
    auto it = large_free_.lower_bound(size);
    if (it != large_free_.end() && it->first <= size + size / 4) {
      void* p = it->second;
      live_[p] = Block{it->first, nullptr};
      large_free_.erase(it);
      return p;
    }
    void* p = device_malloc(size, requested);
    live_[p] = Block{size, nullptr};
    return p;
  }

  // cudaMalloc with one retry after returning the cache to the driver.
  void* device_malloc(size_t size, size_t requested) {
    cuda_detail::DeviceGuard guard(device_);
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // an allocation failure is not sticky; clear it
      release_cache();
      err = cudaMalloc(&p, size);
    }
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw UserError(detail::concat("CUDA out of memory on cuda:", device_, ": tried to allocate ", requested,
                                     " bytes with ", stats_.in_use, " bytes in use by tensors and ", stats_.reserved,
                                     " reserved (device: ", free_b, " free of ", total_b,
                                     "); reduce the batch size or sequence length"));
    }
    CUDA_CHECK(err);
    profiler::count_device_malloc(size);
    ++stats_.device_allocs;
    stats_.reserved += static_cast<int64_t>(size);
    return p;
  }

  void device_free(void* p, size_t size) {
    CUDA_CHECK(cudaFree(p));  // synchronises the device: queued users of p finish first
    ++stats_.device_frees;
    stats_.reserved -= static_cast<int64_t>(size);
  }

  // Frees every cached large block and every small segment with no live block.
  void release_cache() {
    cuda_detail::DeviceGuard guard(device_);
    for (auto& [size, p] : large_free_) device_free(p, size);
    large_free_.clear();
    std::vector<std::unique_ptr<Segment>> kept;
    bool any_released = false;
    for (auto& seg : segments_) {
      if (seg->live == 0) {
        any_released = true;
        if (open_ == seg.get()) open_ = nullptr;
        device_free(seg->base, kSegmentBytes);
        seg->base = nullptr;  // marks its free-list entries for removal below
      }
    }
    if (!any_released) return;
    for (auto& [size, list] : small_free_) {
      std::vector<FreeSmall> still;
      for (const FreeSmall& f : list)
        if (f.segment->base) still.push_back(f);
      list.swap(still);
    }
    for (auto& seg : segments_)
      if (seg->base) kept.push_back(std::move(seg));
    segments_.swap(kept);
  }

  int device_;
  std::mutex mutex_;
  MemoryStats stats_;
  std::unordered_map<void*, Block> live_;
  std::unordered_map<size_t, std::vector<FreeSmall>> small_free_;
  std::multimap<size_t, void*> large_free_;
  std::vector<std::unique_ptr<Segment>> segments_;
  Segment* open_ = nullptr;
};

constexpr int kMaxDevices = 64;
std::mutex g_allocators_mutex;
// Never destroyed: Storage destructors of static tensors may run after any static object.
CachingAllocator* g_allocators[kMaxDevices] = {};

CachingAllocator& allocator(int device) {
  SSMT_ASSERT(device >= 0 && device < kMaxDevices, "device index ", device);
  std::lock_guard<std::mutex> lock(g_allocators_mutex);
  if (!g_allocators[device]) g_allocators[device] = new CachingAllocator(device);
  return *g_allocators[device];
}

}  // namespace

namespace cuda {

void* allocate(size_t nbytes, int device) { return allocator(device).allocate(nbytes); }
void deallocate(void* p, size_t nbytes, int device) { allocator(device).deallocate(p); }
MemoryStats memory_stats(int device) { return allocator(device).stats(); }
void reset_peak_memory(int device) { allocator(device).reset_peak(); }
void empty_cache(int device) { allocator(device).empty_cache(); }

}  // namespace cuda
}  // namespace ssmtrain
