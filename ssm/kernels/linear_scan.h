// The first-order linear recurrence h_t = a_t * h_{t-1} + b_t (elementwise over channels),
// computed as a parallel scan over time and differentiable as one tape op.
//
// The pairs (a_t, b_t) compose associatively: (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2).
// The CPU kernel uses the chunked form of that scan: the time axis is cut into chunks that
// are scanned independently (from a zero state) in parallel, a short sequential pass turns
// the chunks' end states and decay products into the state entering each chunk, and a
// second parallel pass adds decay-prefix * entering-state to every step. The chunk length
// depends only on the shapes, so results never depend on the number of threads.
//
// Backward: lambda_t = dh_t + a_{t+1} lambda_{t+1} is the same scan run in reverse over
// (a_{t+1}, dh_t); then da_t = lambda_t h_{t-1}, db_t = lambda_t, dh0 = a_0 lambda_0.
// Saved for the backward: a, h0 and the output h (no extra memory beyond the output).
//
// CUDA tensors run linear_scan_cuda.cu (tiles of 32 steps scanned by a warp, the state
// carried from tile to tile).
//
// Used by tests to check the fused selective scan against its parallel-scan formulation,
// and available to layers that need a diagonal recurrence.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "ssm/kernels/kernel_common.h"

namespace ssmtrain {

// a, b (B, L, C) and h0 (B, C) (optional: zero state) share one float dtype; returns
// h (B, L, C) in that dtype (computed in f32 for bf16). chunk_len <= 0 picks it from L.
// a and b are used in place when their last axis is contiguous.
Tensor linear_scan(const Tensor& a, const Tensor& b, const Tensor& h0 = Tensor(), int64_t chunk_len = 0);

// ---- kernel interface ----

struct LinearScanParams {
  DType dtype = DType::f32;
  int64_t B = 0, L = 0, C = 0;
  int64_t chunk_len = 1;

  SeqView a, b;                 // (B, L, C)
  const void* h0 = nullptr;     // (B, C) or null
  void* h = nullptr;            // (B, L, C) contiguous: forward output, backward input

  SeqView dh;                   // (B, L, C) backward input
  void* da = nullptr;           // (B, L, C) contiguous, or null
  void* db = nullptr;           // (B, L, C) contiguous, or null
  void* dh0 = nullptr;          // (B, C), or null
};

// The chunk length used when none is given: L cut into up to 64 chunks of >= 256 steps.
int64_t linear_scan_default_chunk(int64_t L);

void linear_scan_fwd_cpu(const LinearScanParams& p);
void linear_scan_bwd_cpu(const LinearScanParams& p);

// CUDA launchers (linear_scan_cuda.cu, CUDA builds only) on the compute stream of `device`:
// a block per (batch row, 32 channels) walks the sequence in 32-step tiles, a warp scan of
// the (a, b) pairs per tile with the state carried across tiles (chunk_len is not used).
// Every float dtype; f32 compute for bf16. Deterministic.
void linear_scan_fwd_cuda(const LinearScanParams& p, int device);
void linear_scan_bwd_cuda(const LinearScanParams& p, int device);

}  // namespace ssmtrain
