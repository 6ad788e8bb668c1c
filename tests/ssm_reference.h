// Reference implementations of the SSM ops, for tests only: the definitions written as
// plainly as possible, in double precision on the host, no autodiff
// (tests/ssm/selective_scan_reference.cpp, tests/ssm/ssd_reference.cpp), and the causal conv
// written with tensor ops (tests/ssm/causal_conv_composed.cpp).
#pragma once

#include "core/tensor.h"
#include "ssm/kernels/selective_scan.h"
#include "ssm/kernels/ssd.h"

namespace ssmtrain {

// The selective scan (SPECS section 1): a double loop that keeps every state; same arguments
// and results as selective_scan. With seq_idx (B, L) the state restarts from zero where the
// index changes (h_t = dt_t Bm_t u_t there, SPECS section 12).
SelectiveScanResult selective_scan_reference(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm,
                                             const Tensor& Cm, const Tensor& Dskip = Tensor(),
                                             const Tensor& z = Tensor(), const Tensor& delta_bias = Tensor(),
                                             bool delta_softplus = false, const Tensor& h0 = Tensor(),
                                             const Tensor& seq_idx = Tensor());

// SSD (SPECS section 3), same arguments and results as ssd_chunked. Recurrent: the
// definition, step by step. Quadratic: the masked attention-like form
// y = (Lmask o C B^T)(dt x) over the whole sequence, with Lmask[l, s] =
// exp(sum_{k=s+1..l} dt_k A) for s <= l, plus the decayed initial state.
// With seq_idx (B, L) the recurrent form restarts the state where the index changes
// (a_t = 0 there, SPECS section 12).
SsdResult ssd_recurrent(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                        const Tensor& D = Tensor(), const Tensor& dt_bias = Tensor(), bool dt_softplus = false,
                        const Tensor& h0 = Tensor(), const Tensor& seq_idx = Tensor());
SsdResult ssd_quadratic(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                        const Tensor& D = Tensor(), const Tensor& dt_bias = Tensor(), bool dt_softplus = false,
                        const Tensor& h0 = Tensor());

// Causal depthwise conv1d as K shifted multiply-adds of tensor ops, differentiated by the
// tape: an independent check of the hand-written op on any device. x (B, L, C), weight
// (C, K), bias (C) or undefined -> (B, L, C); out[b, l, c] = bias[c] + sum_k weight[c, k] *
// x[b, l - (K - 1) + k, c] (zero before l = 0), then SiLU when silu_activation.
Tensor causal_conv1d_composed(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu_activation);

}  // namespace ssmtrain
