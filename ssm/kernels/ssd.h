// The state-space dual (SSD) layer of Mamba-2 (SPECS section 3): a selective SSM whose
// decay is one scalar per head and step, computed by the chunked algorithm as one
// differentiable tape op (its double-precision reference forms live with the tests:
// tests/ssm_reference.h).
//
// Per batch b and head h (group g = h / (H / G)), with state h_t of shape (P, N):
//   dt_t  = softplus(dt_raw_t + dt_bias)   (or without softplus),   a_t = exp(dt_t A)
//   h_t   = a_t h_{t-1} + (dt_t x_t) Bm_t^T           (h_{-1} = h0 or 0)
//   y_t   = h_t Cm_t + D x_t
// Chunked algorithm (chunks of Q steps; cs = cumsum of dt A inside the chunk):
//   1. intra-chunk:  Y_diag = (exp(segsum) o C B^T) (dt x)      (masked Q x Q products)
//   2. chunk states: S_c = sum_s exp(cs_last - cs_s) dt_s x_s B_s^T
//   3. inter-chunk:  H_{c+1} = exp(cs_last) H_c + S_c           (L / Q sequential steps)
//   4. state->output: Y_off_l = exp(cs_l) H_c C_l
// exp(segsum) is built from running sums starting at each column (never a difference of
// long cumsums). A tail shorter than Q is processed as a short chunk, which is exactly
// padding it with dt = 0 (a = 1, no input): neither y nor h_last changes.
//
// Packed documents (SPECS section 12): with seq_idx (B, L) the state restarts wherever
// seq_idx changes along L, i.e. a_t = 0 at a reset. In the chunked form every decay factor
// that spans a reset is 0: exp(segsum)[l, s] needs seq_l == seq_s, the chunk-state weight
// of step s needs seq_s == seq_last, and the state entering a chunk reaches step l (and
// the chunk's end) only when seq_l equals the document of the step before the chunk (for
// the first chunk: seq_0, so h0 continues the first document). The backward uses the same
// masked factors, so no gradient crosses a boundary and the decay of the reset step gets
// none.
//
// Backward: the four stages reversed (docs/ssm_ops.md has the derivation). Nothing but the
// inputs is saved: the backward recomputes the cumsums and the chunk states H_c
// ((B, H, L/Q, P, N) values), runs the inter-chunk recurrence of the state gradient in
// reverse, and then forms every chunk's local gradients in parallel.
//
// Layout: x, dt, Bm, Cm are used in place when their trailing axes are contiguous. The op is
// a FusedOp (core/fused_op.h) over the CPU kernels below and the fused CUDA kernels
// (ssd_cuda.h), which take the same SsdParams. CUDA calls the fused kernels do not take
// (f32, f64, sizes past their limits) run the composed form (ssd_composed.h) instead.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "ssm/kernels/kernel_common.h"

namespace ssmtrain {

struct SsdResult {
  Tensor y;       // (B, L, H, P) in x's dtype
  Tensor h_last;  // (B, H, P, N) in the compute dtype (f32, or f64 for f64 inputs)
};

// x (B, L, H, P), dt (B, L, H) (raw: before bias and softplus), Bm, Cm (B, L, G, N) share
// x's dtype (f32, bf16, f64). A (H) (negative: -exp(A_log)), D (H), dt_bias (H), h0
// (B, H, P, N) are converted (differentiably) to the compute dtype; D, dt_bias and h0 may
// be undefined. seq_idx (B, L) i32 (optional, non-decreasing rows) marks packed documents
// (see above). G must divide H; chunk_size Q >= 1 (any L: Q need not divide it).
SsdResult ssd_chunked(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                      const Tensor& D = Tensor(), const Tensor& dt_bias = Tensor(), bool dt_softplus = false,
                      int64_t chunk_size = 256, const Tensor& h0 = Tensor(), const Tensor& seq_idx = Tensor());

// The same op on Mamba-2's packed activation xBC (B, L, H P + 2 G N), whose column slices are
// x (H P), Bm (G N) and Cm (G N): read in place, and differentiated as one tensor, so the
// backward writes the three gradients into one (B, L, H P + 2 G N) gradient of xBC instead
// of a split's backward assembling them. Equal, bitwise, to ssd_chunked on the slices.
SsdResult ssd_chunked_packed(const Tensor& xBC, int64_t heads, int64_t groups, int64_t d_state, const Tensor& dt,
                             const Tensor& A, const Tensor& D = Tensor(), const Tensor& dt_bias = Tensor(),
                             bool dt_softplus = false, int64_t chunk_size = 256, const Tensor& h0 = Tensor(),
                             const Tensor& seq_idx = Tensor());

// ---- kernel interface ----

struct SsdParams {
  DType dtype = DType::f32;  // of x, dt, Bm, Cm, y and their gradients
  int64_t B = 0, L = 0, H = 0, P = 0, G = 1, N = 0;
  int64_t chunk_size = 256;
  bool dt_softplus = false;

  SeqView x;                       // (B, L, H, P)
  SeqView dt;                      // (B, L, H)
  SeqView Bm, Cm;                  // (B, L, G, N)
  const void* A = nullptr;         // (H), compute dtype
  const void* D = nullptr;         // (H), or null
  const void* dt_bias = nullptr;   // (H), or null
  const void* h0 = nullptr;        // (B, H, P, N), or null
  const int32_t* seq_idx = nullptr;  // (B, L) contiguous, or null (one document per row)
  void* y = nullptr;               // (B, L, H, P) contiguous
  void* h_last = nullptr;          // (B, H, P, N)

  SeqView dy;                      // (B, L, H, P)
  const void* dh_last = nullptr;   // (B, H, P, N), or null (zero)
  void* dx = nullptr;              // (B, L, H, P), rows dx_row() apart, or null
  void* ddt = nullptr;             // (B, L, H) contiguous, or null
  void* dBm = nullptr;             // (B, L, G, N), rows dbc_row() apart, or null
  void* dCm = nullptr;             // (B, L, G, N), rows dbc_row() apart, or null
  void* dA = nullptr;              // (H), or null
  void* dD = nullptr;              // (H), or null
  void* ddt_bias = nullptr;        // (H), or null
  void* dh0 = nullptr;             // (B, H, P, N), or null

  // Packed gradients (ssd_chunked_packed): the backward receives dx as the (B, L, H P + 2 G N)
  // gradient of the packed input; the op's backward entry points then set dBm and dCm to its
  // column slices and grad_row to its row length before the kernels run.
  bool packed = false;
  int64_t grad_row = 0;  // elements between the (b, l) rows of dx, dBm and dCm; 0: each contiguous

  int64_t num_chunks() const { return (L + chunk_size - 1) / chunk_size; }
  int64_t dx_row() const { return grad_row ? grad_row : H * P; }
  int64_t dbc_row() const { return grad_row ? grad_row : G * N; }
};

// Forward: stages 1-4, OpenMP over (b, h, chunk) except the inter-chunk pass (over (b, h)).
void ssd_fwd_cpu(const SsdParams& p);
// Backward: recomputes the chunk states, runs the reverse inter-chunk pass, then OpenMP over
// (b, group, chunk) for the local gradients; per-head sums are added in a fixed order.
void ssd_bwd_cpu(const SsdParams& p);

}  // namespace ssmtrain
