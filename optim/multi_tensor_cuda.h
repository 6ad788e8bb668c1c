// Entry points of the multi-tensor CUDA kernels of optim/ (defined in optim/*.cu, compiled
// only in CUDA builds; call them under #if defined(SSMTRAIN_WITH_CUDA)).
//
// Each call covers many tensors of one device with a single launch: the host lists
// (tensor, chunk) work items, uploads them to a device array in one copy, and the kernel
// gives one thread block to each chunk. Everything runs on core's compute stream.
// All tensors: contiguous f32 on the same CUDA device.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace ssmtrain {

struct AdamWTensorArgs {
  Tensor param, grad, exp_avg, exp_avg_sq;  // same shape
  float lr_times_weight_decay;              // p *= 1 - lr * wd
  float step_size;                          // lr / (1 - beta1^t)
  float bias_correction2_sqrt;              // sqrt(1 - beta2^t)
};

struct AdamWHyper {
  float beta1, beta2, eps;
  float one_minus_beta1, one_minus_beta2;  // computed in double, then rounded once
};

// One fused AdamW update of every listed tensor (optim/adamw.h gives the formula).
void adamw_step_cuda(const std::vector<AdamWTensorArgs>& tensors, const AdamWHyper& hyper);

// sum over all tensors of sum(x^2), accumulated in f64 in a fixed order (deterministic);
// returns a () f64 tensor on the tensors' device (no host sync).
Tensor sum_of_squares_cuda(const std::vector<Tensor>& tensors);

// x *= factor for every tensor, in place.
void scale_cuda(const std::vector<Tensor>& tensors, float factor);

}  // namespace ssmtrain
