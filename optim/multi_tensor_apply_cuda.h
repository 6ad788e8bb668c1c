// Shared plumbing of the multi-tensor kernels (included by optim/*.cu only).
//
// A launch covers a list of tensors: the host cuts each into chunks of kChunkElems
// elements, writes one descriptor per tensor and one (tensor, start) record per chunk into
// a single host buffer, copies it to a device workspace in one staged copy (pinned, no wait
// for the device: cuda::memcpy_h2d), and launches one block per chunk. The workspace is an
// ordinary device Tensor from the caching allocator, released in stream order after the
// launch. Error checks, the device guard and the reductions are core/cuda's.
#pragma once

#if !defined(__CUDACC__)
#error "optim/multi_tensor_apply_cuda.h is for CUDA sources only"
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/backend.h"
#include "core/cuda/cuda_check.cuh"
#include "core/cuda/device.cuh"
#include "core/cuda/kernel_utils.cuh"
#include "core/error.h"
#include "core/tensor.h"

namespace ssmtrain::multi_tensor {

constexpr int64_t kChunkElems = 65536;  // elements per block: large enough to amortise the block
constexpr int kThreads = 512;

struct Chunk {
  int32_t tensor;  // index into the descriptor array
  int32_t pad;
  int64_t start;   // first element of the chunk
};

// The device copy of descriptors followed by chunks. `Desc` must be trivially copyable.
template <typename Desc>
struct Workspace {
  Tensor storage;  // keeps the device memory alive until the launch is queued
  const Desc* descs = nullptr;
  const Chunk* chunks = nullptr;
  int64_t num_chunks = 0;
};

inline void check_tensor(const Tensor& t, Device device, const char* what) {
  SSMT_CHECK(t.defined() && t.device() == device && t.dtype() == DType::f32 && t.is_contiguous(), what, ": ",
             t.describe(), " must be a contiguous f32 tensor on ", device.str());
}

// numels[i] is the element count of descs[i].
template <typename Desc>
Workspace<Desc> upload(const std::vector<Desc>& descs, const std::vector<int64_t>& numels, Device device) {
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < descs.size(); ++i)
    for (int64_t s = 0; s < numels[i]; s += kChunkElems) chunks.push_back(Chunk{static_cast<int32_t>(i), 0, s});
  size_t desc_bytes = (descs.size() * sizeof(Desc) + 15) / 16 * 16;
  size_t total = desc_bytes + chunks.size() * sizeof(Chunk);
  Workspace<Desc> ws;
  ws.num_chunks = static_cast<int64_t>(chunks.size());
  if (chunks.empty()) return ws;
  std::vector<unsigned char> host(total);
  std::memcpy(host.data(), descs.data(), descs.size() * sizeof(Desc));
  std::memcpy(host.data() + desc_bytes, chunks.data(), chunks.size() * sizeof(Chunk));
  ws.storage = Tensor::empty({static_cast<int64_t>((total + 7) / 8)}, DType::i64, device);
  auto* base = static_cast<unsigned char*>(ws.storage.data_ptr());
  // Staged in pinned memory and queued on the compute stream, so `host` may die at once.
  cuda::memcpy_h2d(base, host.data(), total, device.index);
  ws.descs = reinterpret_cast<const Desc*>(base);
  ws.chunks = reinterpret_cast<const Chunk*>(base + desc_bytes);
  return ws;
}

inline cudaStream_t stream_of(Device device) {
  backend(device);  // checks the device exists and initialises core's CUDA state
  return static_cast<cudaStream_t>(cuda::compute_stream(device.index));
}

}  // namespace ssmtrain::multi_tensor
