// Causal depthwise conv1d written with tensor ops (K shifted multiply-adds), differentiated
// by the tape. It runs on any device: the CUDA path until a fused kernel replaces it, and an
// independent check of the hand-written CPU op.
#pragma once

#include "core/tensor.h"

namespace ssmtrain {

// x (B, L, C), weight (C, K), bias (C) or undefined -> (B, L, C);
// out[b, l, c] = bias[c] + sum_k weight[c, k] * x[b, l - (K - 1) + k, c] (zero before l = 0).
Tensor causal_conv1d_composed(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu_activation);

}  // namespace ssmtrain
