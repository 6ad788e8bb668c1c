// Causal softmax attention and rotary position embeddings (SPECS section 10), as fused ops:
// the attention layer of Transformer++ and of hybrid stacks (ssm/attention.h).
//
// causal_attention: o = softmax(q k^T * scale + causal mask) v per head, with grouped-query
// heads (H query heads share Hkv key/value heads, head h reading kv head h / (H / Hkv)). The
// forward keeps only the log-sum-exp of every score row (B, H, Lq) besides its inputs; the
// backward recomputes the probabilities from it (FlashAttention-2), so no L x L tensor is
// ever stored. Queries may be fewer than keys (Lq <= Lk): query i then sits at position
// i + Lk - Lq, the bottom-right alignment of the mask, which makes one generation step
// (Lq = 1 against the KV cache) the same op as the training forward.
//   CPU: a loop per (batch, head, query row), in the accumulation dtype (f64 for f64,
//        f32 otherwise); the backward parallel over (batch, kv head), deterministic.
//   CUDA: bf16 with head dim 64 or 128 runs tiled kernels on tensor cores
//        (mma.sync m16n8k16, fp32 accumulation, online softmax); every other case (f32, f64,
//        other head dims, unaligned rows) runs a simpler tiled kernel with scalar fp32 (f64)
//        arithmetic. Both backwards are deterministic: one pass over query tiles per key
//        tile for dK and dV (the group's query heads summed in order), a separate pass over
//        key tiles per query tile for dQ; no atomics.
//
// rotary_embedding: the rotary embedding of RoPE with the half-split pairing of GPT-NeoX and
// Hugging Face's Llama: channel i < D/2 of a head pairs with channel i + D/2 and the pair is
// rotated by the angle (offset + t) * base^(-2i/D). Angles and their sines and cosines are
// computed in double on both backends (positions up to millions keep full float accuracy),
// then applied in the accumulation dtype.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "ssm/kernels/kernel_common.h"

namespace ssmtrain {

// q (B, Lq, H, D), k and v (B, Lk, Hkv, D), one float dtype and device, Hkv dividing H,
// Lq <= Lk. Each tensor's trailing (heads, D) block must be contiguous (a column slice of a
// fused qkv projection is read in place); batch and sequence strides are free. scale: the
// score scale, usually 1/sqrt(D). Returns o (B, Lq, H, D) contiguous in q's dtype.
// Packed documents (SPECS section 12): seq_idx (B, L) i32 (Lq = Lk = L), the document of
// every position, non-decreasing along L, or undefined; a query then sees only the keys of
// its own document, as if each document were a row of its own.
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                        const Tensor& seq_idx = Tensor());

// The output and the log-sum-exp of every score row (B, H, Lq) in the accumulation dtype
// (f32 for bf16): what causal_attention saves for its backward (exposed for the tests).
struct AttentionResult {
  Tensor o, lse;
};
AttentionResult causal_attention_with_lse(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                          const Tensor& seq_idx = Tensor());

// x (B, L, H, D) float, D even, the trailing (H, D) block contiguous -> (B, L, H, D)
// contiguous: position t of x rotated as absolute position offset + t.
Tensor rotary_embedding(const Tensor& x, int64_t offset, double base = 10000.0);

// ---- kernel interface ----

// Element (b, t, h, d) of a (B, L, heads, D) operand lives at
// data[b * batch_stride + t * seq_stride + h * D + d] (SeqView of kernel_common.h).
struct AttentionParams {
  DType dtype = DType::f32;  // of q, k, v, o and the gradients; lse, dsum: f32 (f64 for f64)
  int64_t B = 0, Lq = 0, Lk = 0, H = 0, Hkv = 0, D = 0;
  double scale = 1.0;
  SeqView q, k, v;                            // (B, Lq, H, D), (B, Lk, Hkv, D), (B, Lk, Hkv, D)
  const int32_t* seq_idx = nullptr;           // (B, Lk) contiguous documents (Lq = Lk), or null
  void* o = nullptr;                          // (B, Lq, H, D) contiguous, forward output
  void* lse = nullptr;                        // (B, H, Lq) log-sum-exp of the scaled scores (natural log)
  const void* dout = nullptr;                 // (B, Lq, H, D) contiguous, backward input
  void* dq = nullptr;                         // (B, Lq, H, D) contiguous, or null: not wanted
  void* dk = nullptr;                         // (B, Lk, Hkv, D) contiguous, or null
  void* dv = nullptr;                         // (B, Lk, Hkv, D) contiguous, or null
  int64_t offset() const { return Lk - Lq; }  // query i sits at position i + offset
};
// Key j is visible to query i when j <= i + offset() and, with seq_idx, both positions hold
// the same document.

void attention_fwd_cpu(const AttentionParams& p);
void attention_bwd_cpu(const AttentionParams& p);
void attention_fwd_cuda(const AttentionParams& p, int device);
void attention_bwd_cuda(const AttentionParams& p, int device);

struct RotaryParams {
  DType dtype = DType::f32;
  int64_t B = 0, L = 0, H = 0, D = 0;
  int64_t offset = 0;
  double base = 10000.0;
  SeqView x;                 // (B, L, H, D)
  void* y = nullptr;         // (B, L, H, D) contiguous, forward output
  const void* dy = nullptr;  // (B, L, H, D) contiguous, backward input
  void* dx = nullptr;        // (B, L, H, D) contiguous
};

void rotary_fwd_cpu(const RotaryParams& p);
void rotary_bwd_cpu(const RotaryParams& p);
void rotary_fwd_cuda(const RotaryParams& p, int device);
void rotary_bwd_cuda(const RotaryParams& p, int device);

}  // namespace ssmtrain
