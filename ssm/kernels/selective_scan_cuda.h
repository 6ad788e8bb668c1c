// CUDA launchers of the selective scan (SPECS section 1), forward and backward.
//
// Hardware-aware layout: a thread block owns 16 or 32 channels of one (batch, group) and
// walks the sequence in tiles; each channel's N states live in registers of 4 or 8 threads
// (chosen by occupancy; SSMTRAIN_SCAN_LANES_FWD / _BWD = 4 | 8 override it for tuning).
// The (B, L, D, N) state is never written to global memory: the forward stores the state
// before every kScanCheckpoint steps (B, D, L/kScanCheckpoint, N) when the backward will
// need it, and the backward recomputes the states inside each tile.
//
// All sequence tensors (u, delta, z, Bm, Cm, dout) must be contiguous and share one dtype
// (f32 or bf16); A, Dskip, delta_bias, h0, dh_last are f32. 1 <= N <= 32 (UserError
// otherwise). Kernels run on the compute stream of u's device. Gradients are returned in the
// dtype of the tensor they belong to. Results are deterministic (no float atomics).
#pragma once

#include "core/tensor.h"

namespace ssmtrain {

constexpr int kScanTile = 32;        // steps per tile of the forward
constexpr int kScanCheckpoint = 16;  // steps between saved states; the backward's recompute tile
constexpr int kSelectiveScanCudaMaxState = 32;  // largest N: 4 lanes x 8 registers per channel

struct SelectiveScanInputs {
  Tensor u;           // (B, L, D)
  Tensor delta;       // (B, L, D)
  Tensor A;           // (D, N) f32
  Tensor Bm;          // (B, L, G, N)
  Tensor Cm;          // (B, L, G, N)
  Tensor Dskip;       // (D) f32 or undefined
  Tensor z;           // (B, L, D) or undefined
  Tensor delta_bias;  // (D) f32 or undefined
  Tensor h0;          // (B, D, N) f32 or undefined
  bool delta_softplus = false;
};

struct SelectiveScanGrads {
  Tensor du, ddelta, dA, dBm, dCm, dDskip, dz, ddelta_bias, dh0;  // undefined when the input was
};

// out (B, L, D) in u's dtype; h_last (B, D, N) f32; checkpoints (B, D, ceil(L/kScanCheckpoint), N)
// f32 filled when save_checkpoints (the state before each tile), else left undefined.
void selective_scan_forward_cuda(const SelectiveScanInputs& in, Tensor& out, Tensor& h_last, Tensor& checkpoints,
                                 bool save_checkpoints);

// dout (B, L, D) in u's dtype; dh_last (B, D, N) f32 or undefined. Every gradient is
// computed (dz, dDskip, ddelta_bias, dh0 only when that input is defined); reductions over
// channels and batch go through per-block partials summed in a fixed order.
SelectiveScanGrads selective_scan_backward_cuda(const SelectiveScanInputs& in, const Tensor& checkpoints,
                                                const Tensor& dout, const Tensor& dh_last);

}  // namespace ssmtrain
