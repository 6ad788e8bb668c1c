// Global-norm gradient clipping (torch.nn.utils.clip_grad_norm_ semantics).
//
// The norm is the L2 norm of all gradients taken together, accumulated in f64. On CUDA each
// device's gradients are reduced by one multi-tensor kernel and the result stays on the
// device; the only host synchronisation is the final read of the norm. A non-finite norm
// (an overflow or NaN somewhere) is reported and the gradients are left untouched: the
// trainer skips that update.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace ssmtrain {

struct ClipResult {
  double norm = 0;         // the total norm before clipping
  bool finite = true;      // false: the trainer should skip this step
  bool clipped = false;    // gradients were scaled
  double scale = 1;        // the factor applied (1 when not clipped)
};

// Total L2 norm of the gradients of `params` (parameters without a gradient are skipped).
double grad_norm(const std::vector<Tensor>& params);

// Scales all gradients by max_norm / (norm + 1e-6) when the norm exceeds max_norm.
// max_norm <= 0 only measures.
ClipResult clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace ssmtrain
