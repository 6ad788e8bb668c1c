// Global-norm gradient clipping (torch.nn.utils.clip_grad_norm_ semantics).
//
// The norm is the L2 norm of all gradients taken together, accumulated in f64; gradients
// are scaled by max_norm / (norm + 1e-6) when that is below 1. A non-finite norm (an
// overflow or NaN somewhere) leaves the gradients untouched and the update is skipped.
//
// Two forms:
//  - clip_grad_norm: the result on the host. On CUDA that reads the norm back, a wait for
//    the device.
//  - clip_grad_norm_deferred: the result stays where the gradients are. On CUDA one
//    multi-tensor reduction and one finishing block write the norm, the factor and the skip
//    flag into a small device tensor and nothing is read back; the factor is applied by
//    the optimizer's update itself (AdamW folds it into its kernel, which also reads the
//    skip flag) or by apply_clip_scale. On the CPU it clips at once, exactly as
//    clip_grad_norm does, and the status is a CPU tensor.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace ssmtrain {

struct ClipResult {
  double norm = 0;       // the total norm before clipping
  bool finite = true;    // false: the norm is not finite and the update must be skipped
  bool clipped = false;  // gradients were (or are to be) scaled
  double scale = 1;      // the factor (1 when not clipped)
  bool skip = false;     // the update is skipped: !finite, or (deferred form) a non-finite loss
};

// Total L2 norm of the gradients of `params` (parameters without a gradient are skipped).
double grad_norm(const std::vector<Tensor>& params);

// Scales all gradients by max_norm / (norm + 1e-6) when the norm exceeds max_norm.
// max_norm <= 0 only measures.
ClipResult clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// The entries of DeviceClip::status.
enum ClipStatusEntry : int64_t {
  kClipNorm = 0,     // the total norm (f64, before clipping)
  kClipScale = 1,    // the factor min(1, max_norm / (norm + 1e-6)); 1 when not finite or max_norm <= 0
  kClipSkip = 2,     // 1: skip the update (non-finite norm or loss), 0: apply it
  kClipClipped = 3,  // 1 when scale < 1
  kClipStatusSize = 4
};

// The ClipResult that a clip status (kClipStatusSize values, laid out as above) encodes.
ClipResult clip_result_from_status(const double* status);

struct DeviceClip {
  Tensor status;             // (kClipStatusSize) f64 on the gradients' device (see ClipStatusEntry)
  bool grads_scaled = true;  // false (CUDA): the factor is still to be applied to the gradients

  bool on_cuda() const { return status.defined() && status.device().is_cuda(); }
  // The values on the host: reads the status, a wait for the device on CUDA.
  ClipResult read() const;
};

// Like clip_grad_norm without reading anything back on CUDA. `loss`, when given, is a ()
// value that must be finite for the update to go ahead (the step's loss): its check is
// folded into the skip flag. CUDA needs every gradient (and `loss`) on one device; other
// mixes fall back to the synchronous form with a CPU status.
DeviceClip clip_grad_norm_deferred(const std::vector<Tensor>& params, double max_norm, const Tensor& loss = {});

// Multiplies the gradients of `params` by the factor in clip.status, read on the device
// (one multi-tensor kernel per device, no host read). Does nothing when clip.grads_scaled.
// AdamW's step_clipped folds this into its update instead.
void apply_clip_scale(const std::vector<Tensor>& params, const DeviceClip& clip);

}  // namespace ssmtrain
