// Depthwise causal 1-D convolution over time (the short conv of Mamba-1/2 blocks), one
// differentiable tape op, plus the single-step form used for generation.
//
//   out[b, t, c] = act(bias[c] + sum_{k < K} weight[c, k] * xext[b, t + k, c])
// where xext is the sequence preceded by K - 1 earlier inputs: the initial state (B, C, K-1)
// (oldest first) when given, else zeros (the usual left padding). act is silu or identity.
// final_state (B, C, K-1) holds the last K - 1 entries of xext, so feeding it as the next
// call's initial state (or to causal_conv1d_step) continues the sequence exactly.
//
// Packed documents (SPECS section 12): with seq_idx (B, L) the window restarts wherever the
// document index changes. Tap k of output t reads sequence position s = t + k - (K - 1) and
// counts only inside t's document: for s >= 0 when seq_idx[s] == seq_idx[t]; for s < 0 (an
// initial-state entry or the zero padding) when seq_idx[0] == seq_idx[t], so the initial
// state feeds the first document only. final_state keeps the window of the last document:
// the entry standing for position s >= 0 is x[s] when seq_idx[s] == seq_idx[L-1], else 0;
// an entry carried over from the initial state (L < K - 1) is kept when seq_idx[0] ==
// seq_idx[L-1], else 0. Feeding final_state to the next call thus continues the last
// document exactly. The backward applies the same masks (no gradient crosses a boundary,
// the final-state gradient reaches only the entries that were kept). On the CPU the entry
// point rejects a decreasing row (UserError naming seq_idx); the CUDA kernels trust the order
// and compare positions for equality. Without seq_idx the arithmetic is exactly that of the
// plain conv.
//
// Backward: gradients for x, weight, bias and the initial state, including the gradient
// flowing in through final_state. Saved: the inputs only (the pre-activation is recomputed).
// Layout: x is used in place when its channel axis is contiguous (batch and time strides
// are free: a slice of a projection output needs no copy). CPU and CUDA kernels
// (causal_conv1d_cuda.cu: f32 or bf16, K <= 4) share CausalConv1dParams.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "ssm/kernels/kernel_common.h"

namespace ssmtrain {

struct CausalConv1dResult {
  Tensor out;          // (B, L, C) in x's dtype
  Tensor final_state;  // (B, C, K-1) in x's dtype
};

// x (B, L, C) f32/bf16/f64; weight (C, K), K >= 1; bias (C) optional; initial_state
// (B, C, K-1) optional, in x's dtype. weight and bias are converted (differentiably) to the
// compute dtype (f32, or f64 for f64 inputs). seq_idx (B, L) i32 on x's device, optional,
// non-decreasing rows, not differentiable: the packed documents (above).
CausalConv1dResult causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
                                 bool silu_activation = false, const Tensor& initial_state = Tensor(),
                                 const Tensor& seq_idx = Tensor());

// One generation step, no autodiff: x_t (B, C) -> out (B, C); state (B, C, K-1), contiguous
// and in x_t's dtype, is updated in place (shifted by one, x_t appended).
Tensor causal_conv1d_step(const Tensor& x_t, const Tensor& state, const Tensor& weight, const Tensor& bias = Tensor(),
                          bool silu_activation = false);

// ---- kernel interface ----

struct CausalConv1dParams {
  DType dtype = DType::f32;  // of x, out, states and their gradients
  int64_t B = 0, L = 0, C = 0, K = 1;
  bool silu = false;

  SeqView x;                            // (B, L, C)
  const void* weight = nullptr;         // (C, K), compute dtype
  const void* bias = nullptr;           // (C), compute dtype, or null
  const void* initial_state = nullptr;  // (B, C, K-1) or null (zeros)
  const int32_t* seq_idx = nullptr;     // (B, L) contiguous, or null
  void* out = nullptr;                  // (B, L, C) contiguous
  void* final_state = nullptr;          // (B, C, K-1), or null

  SeqView dout;                         // (B, L, C)
  const void* dfinal_state = nullptr;   // (B, C, K-1), or null (zero)
  void* dx = nullptr;                   // (B, L, C) contiguous, or null
  void* dweight = nullptr;              // (C, K), compute dtype, or null
  void* dbias = nullptr;                // (C), compute dtype, or null
  void* dinitial_state = nullptr;       // (B, C, K-1), or null
};

void causal_conv1d_fwd_cpu(const CausalConv1dParams& p);
void causal_conv1d_bwd_cpu(const CausalConv1dParams& p);

// CUDA launchers (causal_conv1d_cuda.cu, CUDA builds only) on the compute stream of
// `device`: the same params with weight, bias, dweight, dbias in f32; dtype f32 or bf16 and
// 1 <= K <= 4 (UserError otherwise). Deterministic: no float atomics.
void causal_conv1d_fwd_cuda(const CausalConv1dParams& p, int device);
void causal_conv1d_bwd_cuda(const CausalConv1dParams& p, int device);

}  // namespace ssmtrain
