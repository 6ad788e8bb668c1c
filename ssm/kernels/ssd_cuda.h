// Fused CUDA kernels of the chunked SSD (SPECS section 3) for bf16 inputs: the intra-chunk
// and chunk-state products on tensor cores (bf16 operands, fp32 accumulation), fp32 states,
// forward and backward. The launchers take the same SsdParams as the CPU kernels (ssd.h).
//
// Supported here: x, dt, Bm, Cm, dy in bf16 with their trailing axes contiguous; A, D,
// dt_bias, h0, dh_last in f32; headdim P <= 128, d_state N <= 256, chunk size Q <= 256, any
// L, G >= 1 groups. ssd_cuda_supports() says whether a call qualifies; others take the
// composed path (ssd_composed.h). Design, tiling and what is recomputed: docs/perf_ssm.md.
#pragma once

#include "core/dtype.h"
#include "ssm/kernels/ssd.h"

namespace ssmtrain {

constexpr int64_t kSsdCudaMaxHeaddim = 128;
constexpr int64_t kSsdCudaMaxState = 256;
constexpr int64_t kSsdCudaMaxChunk = 256;

// Whether the fused kernels take a call with this dtype and these sizes.
bool ssd_cuda_supports(DType dtype, int64_t P, int64_t N, int64_t chunk_size);

// y (bf16, contiguous) and h_last (f32) of p; nothing is kept for the backward.
void ssd_fwd_cuda(const SsdParams& p, Device device);
// Every non-null gradient slot of p from dy and dh_last (recomputes the chunk states).
// Deterministic: reductions over heads, chunks and batches are summed in a fixed order.
void ssd_bwd_cuda(const SsdParams& p, Device device);

}  // namespace ssmtrain
