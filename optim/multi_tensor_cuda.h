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
  // lr / (1 - beta1^t) and sqrt(1 - beta2^t). [0]: for t as the host counts it; [1]: for
  // the count had the previous, still undecided update been skipped (AdamWHyper::previous_status).
  float step_size[2];
  float bias_correction2_sqrt[2];
};

struct AdamWHyper {
  float beta1, beta2, eps;
  float one_minus_beta1, one_minus_beta2;  // computed in double, then rounded once
  // Device-side decisions (null: none). clip_status: this update's clip (optim/clip.h
  // ClipStatusEntry): the gradient is multiplied by its f32-rounded factor, and nothing is
  // written when its skip flag is set. previous_status: the clip of the previous update
  // while the host does not know yet whether it was skipped; when it was, [1] of the bias
  // corrections is used.
  const double* clip_status = nullptr;
  const double* previous_status = nullptr;
};

// One fused AdamW update of every listed tensor (optim/adamw.h gives the formula).
void adamw_step_cuda(const std::vector<AdamWTensorArgs>& tensors, const AdamWHyper& hyper);

// sum over all tensors of sum(x^2), accumulated in f64 in a fixed order (deterministic);
// returns a () f64 tensor on the tensors' device (no host sync).
Tensor sum_of_squares_cuda(const std::vector<Tensor>& tensors);

// The deferred clip of one device's gradients: the sum of squares as above, then one block
// writes the (kClipStatusSize) f64 status of optim/clip.h. loss: undefined, or one f64
// value on the same device whose non-finiteness sets the skip flag too.
Tensor clip_status_cuda(const std::vector<Tensor>& grads, double max_norm, const Tensor& loss);

// x *= factor for every tensor, in place.
void scale_cuda(const std::vector<Tensor>& tensors, float factor);

// x *= float(status[kClipScale]) for every tensor, in place, the factor read on the device.
void scale_by_clip_status_cuda(const std::vector<Tensor>& tensors, const Tensor& status);

}  // namespace ssmtrain
