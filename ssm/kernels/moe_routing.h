// Token routing of a mixture-of-experts layer (SPECS section 5), done where the tensors
// live: the top-k choice, the capacity, the dispatch permutation, the gather into
// per-expert blocks and the weighted scatter back, with no value read by the host.
//
// Routing (moe_route, no gradient). From the router probabilities p (T, E):
//  - each token takes its k most probable experts, best first; ties go to the lower index.
//  - assignments are ordered choice-major, then by token: all first choices in token order,
//    then all second choices, ... (first choices are never displaced by second ones, and
//    earlier tokens come first: GShard's priority, deterministic).
//  - the position of an assignment in its expert is the number of assignments to that expert
//    before it in that order (an exclusive prefix sum over the one-hot assignments). Positions
//    below the capacity C are kept: the assignment goes to row e * C + position of the
//    dispatch buffer (E * C rows); the others are dropped (slot -1).
//  - usage (optional, (E + 2) f64, accumulated): [e] += tokens whose first choice is e,
//    [E] += dropped assignments, [E + 1] += assignments (T * k).
// The CPU walks the order directly. CUDA: per (chunk of 256 tokens, choice) a histogram of
// experts, then one thread per expert scans the histograms in the order above (integer
// sums, so the same result whatever the schedule), then each chunk ranks its assignments
// among the earlier ones of the same chunk and expert. Counts stay on the device.
//
// Dispatch and combine (differentiable tape ops, one node each):
//   moe_dispatch: xd[slot[t, j]] = x[t] for every kept assignment; other rows 0.
//   moe_combine:  y[t] = sum_{j kept} gate[t, j] * yd[slot[t, j]].
// Their backwards are gathers too (no atomics): dx[t] = sum_{j kept} dxd[slot[t, j]];
// dyd[slot[t, j]] = gate[t, j] * dy[t] (rows of no assignment 0); dgate[t, j] =
// <dy[t], yd[slot[t, j]]> (0 when dropped), accumulated in the compute dtype.
// Kept slots are distinct, so every dispatch row has at most one writer.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace ssmtrain {

struct MoeRouting {
  Tensor expert;        // (T, k) i64: the chosen experts, best first
  Tensor slot;          // (T, k) i64: the dispatch row e * capacity + position, or -1 (dropped)
  Tensor first_counts;  // (E) i64: tokens whose first choice is each expert (before capacity)
  Tensor counts;        // (E) i64: assignments to each expert, all choices (before capacity)
};

// probs (T, E) f32 or f64 (any float), no gradient taken; 1 <= k <= E; capacity >= 1
// (rows per expert; capacity >= T drops nothing). usage: undefined, or (E + 2) f64 on
// probs' device, contiguous, accumulated as above.
MoeRouting moe_route(const Tensor& probs, int64_t k, int64_t capacity, const Tensor& usage = Tensor());

// x (T, D) float, slot (T, k) i64 from moe_route -> xd (rows, D) in x's dtype.
Tensor moe_dispatch(const Tensor& x, const Tensor& slot, int64_t rows);

// yd (rows, D) float, slot (T, k) i64, gate (T, k) in yd's compute dtype (f32 for f32 and
// bf16, f64 for f64) -> y (T, D) in yd's dtype. Gradients for yd and gate.
Tensor moe_combine(const Tensor& yd, const Tensor& slot, const Tensor& gate);

// The expert weights stacked for the batched GEMMs, cast on the way: ws E tensors of one
// shape S (any float dtype, the same for all; contiguous or not) -> (E, S...) in `dtype`.
// One tape node and one kernel each way (the E casts and the stack copy of the plain ops
// would be 2E launches and an extra pass over every expert weight per step); the backward
// writes each weight's gradient in the weight's dtype.
Tensor moe_stack_weights(const std::vector<Tensor>& ws, DType dtype);

// ---- kernel interface ----

struct MoeRouteParams {
  DType dtype = DType::f32;  // of probs
  int64_t T = 0, E = 0, K = 1, capacity = 1;
  const void* probs = nullptr;      // (T, E) contiguous
  int64_t* expert = nullptr;        // (T, K)
  int64_t* slot = nullptr;          // (T, K)
  int64_t* first_counts = nullptr;  // (E)
  int64_t* counts = nullptr;        // (E)
  double* usage = nullptr;          // (E + 2) or null
};

void moe_route_cpu(const MoeRouteParams& p);
void moe_route_cuda(const MoeRouteParams& p, int device);

struct MoeDispatchParams {
  DType dtype = DType::f32;  // of x, xd and their gradients
  int64_t T = 0, D = 0, K = 1, rows = 0;
  const int64_t* slot = nullptr;  // (T, K)
  const void* x = nullptr;        // (T, D) contiguous
  void* xd = nullptr;             // (rows, D)
  const void* dxd = nullptr;      // (rows, D) contiguous, backward input
  void* dx = nullptr;             // (T, D), or null
};

void moe_dispatch_fwd_cpu(const MoeDispatchParams& p);
void moe_dispatch_bwd_cpu(const MoeDispatchParams& p);
void moe_dispatch_fwd_cuda(const MoeDispatchParams& p, int device);
void moe_dispatch_bwd_cuda(const MoeDispatchParams& p, int device);

struct MoeCombineParams {
  DType dtype = DType::f32;  // of yd, y and their gradients; gate is in the compute dtype
  int64_t T = 0, D = 0, K = 1, rows = 0;
  const int64_t* slot = nullptr;  // (T, K)
  const void* yd = nullptr;       // (rows, D) contiguous
  const void* gate = nullptr;     // (T, K) contiguous
  void* y = nullptr;              // (T, D)
  const void* dy = nullptr;       // (T, D) contiguous, backward input
  void* dyd = nullptr;            // (rows, D), or null
  void* dgate = nullptr;          // (T, K), or null
};

void moe_combine_fwd_cpu(const MoeCombineParams& p);
void moe_combine_bwd_cpu(const MoeCombineParams& p);
void moe_combine_fwd_cuda(const MoeCombineParams& p, int device);
void moe_combine_bwd_cuda(const MoeCombineParams& p, int device);

struct MoeStackParams {
  DType src_dtype = DType::f32;  // of the weights and their gradients
  DType dst_dtype = DType::f32;  // of the stacked copy and its gradient
  int64_t E = 0, numel = 0;      // experts, elements per expert
  std::vector<const void*> w;    // E pointers, each (numel) contiguous
  void* out = nullptr;           // (E, numel)
  const void* dout = nullptr;    // (E, numel) contiguous, backward input
  std::vector<void*> dw;         // E pointers (numel), each null when not wanted
};

void moe_stack_fwd_cpu(const MoeStackParams& p);
void moe_stack_bwd_cpu(const MoeStackParams& p);
void moe_stack_fwd_cuda(const MoeStackParams& p, int device);
void moe_stack_bwd_cuda(const MoeStackParams& p, int device);

}  // namespace ssmtrain
