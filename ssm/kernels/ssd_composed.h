// The chunked SSD algorithm (SPECS section 3) written with tensor ops: the four stages as
// batched matrix products (cuBLAS on the GPU), cumulative sums and masked exponentials,
// differentiated by the tape. It runs on any device and is the CUDA path of the SSD until a
// fused kernel replaces it; on the CPU it is an independent check of the hand-written op.
#pragma once

#include <utility>

#include "core/tensor.h"

namespace ssmtrain {

// x (B, L, H, P), dt (B, L, H) (raw), A (H) (negative), Bm, Cm (B, L, G, N), D (H) or
// undefined, dt_bias (H) or undefined, h0 (B, H, P, N) or undefined, seq_idx (B, L) i32 or
// undefined (packed documents, ssd.h: the decays spanning a boundary are masked to 0).
// Returns {y (B, L, H, P), h_last (B, H, P, N)}. L need not be a multiple of chunk_size.
std::pair<Tensor, Tensor> ssd_chunked_composed(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                                               const Tensor& Cm, const Tensor& D, const Tensor& dt_bias,
                                               bool dt_softplus, int64_t chunk_size, const Tensor& h0,
                                               const Tensor& seq_idx = Tensor());

}  // namespace ssmtrain
