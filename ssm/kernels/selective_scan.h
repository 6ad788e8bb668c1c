// The selective scan of Mamba-1 (S6, SPECS section 1) as one differentiable tape op.
//
//   dt_t[d]   = softplus(delta_t[d] + delta_bias[d])   (or without softplus)
//   h_t[d,n]  = exp(dt_t[d] A[d,n]) h_{t-1}[d,n] + dt_t[d] Bm_t[g,n] u_t[d]   (h_{-1} = h0 or 0)
//   y_t[d]    = sum_n Cm_t[g,n] h_t[d,n] + Dskip[d] u_t[d];   out = y * silu(z) when z is given
// with channel d in group g = d / (D / G). The backward is the adjoint recurrence of
// SPECS section 1 and returns gradients for every input, h0 included, and takes the
// gradient flowing in through h_last.
//
// Packed documents (SPECS section 12): with seq_idx (B, L) the state restarts wherever the
// document index changes along L. reset_t = (t > 0 && seq_idx[b, t] != seq_idx[b, t-1]), and
//   h_t = (reset_t ? 0 : exp(dt_t A)) h_{t-1} + dt_t Bm_t u_t,
// i.e. the decay a_t is the constant 0 at a reset (never at t = 0: h0 continues the first
// document; h_last is the state of the last one). Every place that forms a decay uses that
// a_t: the forward, the backward's recompute from checkpoints and the adjoint
// lam_{t-1} = a_t lam_t + ..., so the adjoint stops at the boundary and the reset step's
// decay contributes nothing to ddelta or dA (its derivative is 0, not that of an exp). On
// the CPU the entry point rejects a row that decreases (UserError naming seq_idx); the CUDA
// kernels trust the order and compare neighbours for equality. Without seq_idx the
// arithmetic is exactly that of the plain scan.
//
// Memory: the (B, L, D, N) state is never stored. When a gradient is needed the forward
// keeps the state at the start of every checkpoint interval (64 steps on the CPU, 16 on
// CUDA), (B, D, ceil(L / 64), N) in the compute dtype on the CPU, i.e. B*D*N*L/64 values,
// and the backward recomputes the states inside each interval (docs/ssm_ops.md).
//
// Layout: entry points take any views. On the CPU, sequence tensors are used in place when
// their trailing axes are contiguous (batch and time strides are free), else copied; the
// CUDA kernels take u, delta and z dense and B and C with their batch and time strides. Both backends' kernels are called through
// SelectiveScanParams (pointers + strides, no Tensor): the CPU kernels below, the CUDA
// launchers of selective_scan_cuda.cu.
#pragma once

#include <cstdint>
#include <functional>

#include "core/tensor.h"
#include "ssm/kernels/kernel_common.h"

namespace ssmtrain {

struct SelectiveScanResult {
  Tensor out;     // (B, L, D) in u's dtype
  Tensor h_last;  // (B, D, N) in the compute dtype (f32, or f64 for f64 inputs)
};

// u, delta, z (B, L, D), Bm, Cm (B, L, G, N) share u's dtype (f32, bf16, f64).
// A (D, N), Dskip (D), delta_bias (D), h0 (B, D, N) are converted to the compute dtype
// (differentiably). Dskip, z, delta_bias and h0 may be undefined. G must divide D.
// seq_idx (B, L) i32 on u's device, optional, non-decreasing rows, not differentiable:
// the packed documents (above); made contiguous when it is not.
// A_is_log: A holds log(-A) (Mamba's A_log parameter): the kernels use -exp(A) and the
// gradient is that of the log, bitwise what selective_scan(..., -exp(A_log), ...) gives,
// without the four small elementwise launches of that expression and its backward.
// recompute_delta: when given, the node does not keep delta for its backward but calls this
// (recording off) to compute it again; it must return delta's values (Mamba passes its
// dt_proj product, whose input and weight are kept anyway: 2 bytes x B x L x D less memory
// per layer in bf16 for one more small product in the backward, as the official kernels'
// default checkpointing does). The gradients are the same as with delta kept.
SelectiveScanResult selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm,
                                   const Tensor& Cm, const Tensor& Dskip = Tensor(), const Tensor& z = Tensor(),
                                   const Tensor& delta_bias = Tensor(), bool delta_softplus = false,
                                   const Tensor& h0 = Tensor(), const Tensor& seq_idx = Tensor(),
                                   bool A_is_log = false, const std::function<Tensor()>& recompute_delta = {});

// ---- kernel interface ----

constexpr int64_t kSelectiveScanCheckpointInterval = 64;

// One selective-scan call as the kernels see it. Sequence tensors are SeqViews in `dtype`;
// parameters, states and accumulators are contiguous in the compute dtype (double for f64,
// else float). Optional inputs and unwanted gradients are null.
struct SelectiveScanParams {
  DType dtype = DType::f32;
  int64_t B = 0, L = 0, D = 0, N = 0, G = 1;
  bool delta_softplus = false;
  bool A_log = false;  // A holds log(-A): the kernels decay with -exp(A), and dA is the gradient of that log
  int64_t checkpoint_interval = kSelectiveScanCheckpointInterval;

  // inputs
  SeqView u, delta, z;       // (B, L, D); z optional
  SeqView Bm, Cm;            // (B, L, G, N)
  const void* A = nullptr;           // (D, N)
  const void* Dskip = nullptr;       // (D)
  const void* delta_bias = nullptr;  // (D)
  const void* h0 = nullptr;          // (B, D, N)
  const int32_t* seq_idx = nullptr;  // (B, L) contiguous, or null

  // forward outputs
  void* out = nullptr;          // (B, L, D) contiguous, dtype
  void* h_last = nullptr;       // (B, D, N)
  void* checkpoints = nullptr;  // (B, D, ceil(L / checkpoint_interval), N): state before each interval; may be null

  // backward inputs (checkpoints above are read)
  SeqView dout;                  // (B, L, D)
  const void* dh_last = nullptr; // (B, D, N), may be null (zero)
  // backward outputs: sequence gradients contiguous in dtype, the others in the compute dtype
  void* du = nullptr;           // (B, L, D)
  void* ddelta = nullptr;       // (B, L, D)
  void* dz = nullptr;           // (B, L, D)
  void* dBm = nullptr;          // (B, L, G, N)
  void* dCm = nullptr;          // (B, L, G, N)
  void* dA = nullptr;           // (D, N)
  void* dDskip = nullptr;       // (D)
  void* ddelta_bias = nullptr;  // (D)
  void* dh0 = nullptr;          // (B, D, N)

  int64_t num_checkpoints() const { return (L + checkpoint_interval - 1) / checkpoint_interval; }
};

// Forward: writes out and h_last, and checkpoints when non-null. OpenMP over (b, d).
void selective_scan_fwd_cpu(const SelectiveScanParams& p);
// Backward: needs the checkpoints of the forward; writes every non-null gradient.
// OpenMP over (b, group, channel slice); reductions go through per-task partial sums added
// in a fixed order, so results do not depend on the number of threads.
void selective_scan_bwd_cpu(const SelectiveScanParams& p);

// ---- CUDA kernels (selective_scan_cuda.cu, CUDA builds only) ----

constexpr int kScanTile = 32;        // steps per tile of the CUDA forward
constexpr int kScanCheckpoint = 16;  // the CUDA checkpoint interval; the backward's recompute tile
constexpr int kSelectiveScanCudaMaxState = 32;  // largest N: 4 lanes x 8 registers per channel

// Launchers on the compute stream of `device`. Hardware-aware layout: a thread block owns 16
// or 32 channels of one (batch, group) and walks the sequence in tiles; each channel's N
// states live in registers of 4 or 8 threads (chosen by occupancy; SSMTRAIN_SCAN_LANES_FWD /
// _BWD = 4 | 8 override it for tuning). The params as above with: sequence tensors (u,
// delta, z, Bm, Cm, dout) dense, of one dtype (f32 or bf16); A, Dskip, delta_bias, h0,
// dh_last and the state tensors f32; checkpoint_interval = kScanCheckpoint;
// 1 <= N <= kSelectiveScanCudaMaxState. Results are deterministic (no float atomics): the
// backward's reductions over channels and batch go through per-block partials summed in a
// fixed order.
void selective_scan_fwd_cuda(const SelectiveScanParams& p, int device);
void selective_scan_bwd_cuda(const SelectiveScanParams& p, int device);

}  // namespace ssmtrain
