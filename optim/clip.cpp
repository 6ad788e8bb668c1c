// Gradient norm and clipping: an OpenMP reduction per tensor on the CPU, multi-tensor
// kernels on CUDA; the deferred form keeps the result on the device.
#include "optim/clip.h"

#include <cmath>
#include <map>
#include <optional>
#include <unordered_set>

#include "core/autograd.h"
#include "core/dtype.h"
#include "optim/multi_tensor_cuda.h"

namespace ssmtrain {

namespace {

// The gradients, each made contiguous and given memory of its own (set back on the
// parameter): autograd may hand the same tensor to two parameters (the backward of an add
// returns one gradient for both), and in-place scaling must reach each exactly once.
std::vector<Tensor> owned_grads(const std::vector<Tensor>& params) {
  std::vector<Tensor> grads;
  std::unordered_set<const Storage*> seen;
  std::unordered_set<const TensorImpl*> seen_params;  // a tied weight listed twice counts once
  NoGradGuard no_grad;
  for (const Tensor& p : params) {
    SSMT_CHECK(p.defined(), "clip_grad_norm: an undefined parameter was passed");
    if (!seen_params.insert(p.impl()).second) continue;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (!g.is_contiguous() || seen.count(g.storage().get())) {
      g = g.clone();
      Tensor handle = p;
      handle.set_grad(g);
    }
    seen.insert(g.storage().get());
    grads.push_back(g);
  }
  return grads;
}

template <typename T>
double sum_of_squares_typed(const T* x, int64_t n) {
  double acc = 0;
#pragma omp parallel for reduction(+ : acc) schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    double v = static_cast<double>(static_cast<acc_t<T>>(x[i]));
    acc += v * v;
  }
  return acc;
}

template <typename T>
void scale_typed(T* x, int64_t n, double factor) {
  const auto f = static_cast<acc_t<T>>(factor);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<T>(static_cast<acc_t<T>>(x[i]) * f);
}

double sum_of_squares_cpu(const Tensor& g) {
  return SSMT_DISPATCH_FLOAT(g.dtype(), "grad_norm",
                             [&] { return sum_of_squares_typed(g.data<scalar_t>(), g.numel()); });
}

void scale_cpu(const Tensor& g, double factor) {
  SSMT_DISPATCH_FLOAT(g.dtype(), "scale_gradients", [&] { scale_typed(g.data<scalar_t>(), g.numel(), factor); });
}

// Splits gradients by device: the CPU ones, and one list per CUDA device.
void split_by_device(const std::vector<Tensor>& grads, std::vector<Tensor>& cpu,
                     std::map<int, std::vector<Tensor>>& cuda_lists) {
  for (const Tensor& g : grads) {
    if (g.device().is_cpu()) {
      cpu.push_back(g);
    } else {
      SSMT_CHECK(g.dtype() == DType::f32, "clip_grad_norm: CUDA gradient ", g.describe(), " must be f32");
      cuda_lists[g.device().index].push_back(g);
    }
  }
}

#if !defined(SSMTRAIN_WITH_CUDA)
[[noreturn]] void no_cuda(const Tensor& t) {
  throw UserError(detail::concat("clip_grad_norm: ", t.describe(), " is on a CUDA device but ssmtrain was built without CUDA"));
}
#endif

double total_norm(const std::vector<Tensor>& grads) {
  std::vector<Tensor> cpu;
  std::map<int, std::vector<Tensor>> cuda_lists;
  split_by_device(grads, cpu, cuda_lists);
  double sum = 0;
  for (const Tensor& g : cpu) sum += sum_of_squares_cpu(g);
  // Launch every device's reduction before reading any result back.
  std::vector<Tensor> device_sums;
  for (auto& [device, list] : cuda_lists) {
#if defined(SSMTRAIN_WITH_CUDA)
    device_sums.push_back(sum_of_squares_cuda(list));
#else
    no_cuda(list.front());
#endif
  }
  for (const Tensor& s : device_sums) sum += s.item<double>();
  return std::sqrt(sum);
}

void scale_all(const std::vector<Tensor>& grads, double factor) {
  std::vector<Tensor> cpu;
  std::map<int, std::vector<Tensor>> cuda_lists;
  split_by_device(grads, cpu, cuda_lists);
  for (const Tensor& g : cpu) scale_cpu(g, factor);
  for (auto& [device, list] : cuda_lists) {
#if defined(SSMTRAIN_WITH_CUDA)
    scale_cuda(list, static_cast<float>(factor));
#else
    no_cuda(list.front());
#endif
  }
}

// clip_grad_norm on gradients already made owned.
ClipResult clip_owned(const std::vector<Tensor>& grads, double max_norm) {
  ClipResult r;
  r.norm = total_norm(grads);
  r.finite = std::isfinite(r.norm);
  r.skip = !r.finite;
  if (!r.finite || max_norm <= 0) return r;
  double coef = max_norm / (r.norm + 1e-6);
  if (coef < 1.0) {
    scale_all(grads, coef);
    r.clipped = true;
    r.scale = coef;
  }
  return r;
}

// The one CUDA device holding every gradient, if there is one.
std::optional<Device> single_cuda_device(const std::vector<Tensor>& grads) {
  if (grads.empty() || !grads.front().device().is_cuda()) return std::nullopt;
  for (const Tensor& g : grads)
    if (g.device() != grads.front().device()) return std::nullopt;
  return grads.front().device();
}

}  // namespace

double grad_norm(const std::vector<Tensor>& params) { return total_norm(owned_grads(params)); }

ClipResult clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  return clip_owned(owned_grads(params), max_norm);
}

ClipResult clip_result_from_status(const double* status) {
  ClipResult r;
  r.norm = status[kClipNorm];
  r.finite = std::isfinite(r.norm);
  r.scale = status[kClipScale];
  r.clipped = status[kClipClipped] != 0.0;
  r.skip = status[kClipSkip] != 0.0;
  return r;
}

ClipResult DeviceClip::read() const {
  SSMT_CHECK(status.defined() && status.numel() == kClipStatusSize, "DeviceClip::read: no clip status");
  return clip_result_from_status(status.to_vector<double>().data());
}

DeviceClip clip_grad_norm_deferred(const std::vector<Tensor>& params, double max_norm, const Tensor& loss) {
  std::vector<Tensor> grads = owned_grads(params);
  if (loss.defined())
    SSMT_CHECK(loss.numel() == 1, "clip_grad_norm_deferred: loss ", loss.describe(), " must hold one value");
  DeviceClip clip;
  const std::optional<Device> device = single_cuda_device(grads);
  if (device && (!loss.defined() || loss.device() == *device)) {
    for (const Tensor& g : grads)
      SSMT_CHECK(g.dtype() == DType::f32, "clip_grad_norm: CUDA gradient ", g.describe(), " must be f32");
#if defined(SSMTRAIN_WITH_CUDA)
    NoGradGuard no_grad;
    clip.status = clip_status_cuda(grads, max_norm, loss.defined() ? loss.reshape({}).to(DType::f64) : Tensor());
    clip.grads_scaled = false;
    return clip;
#endif
  }
  ClipResult r = clip_owned(grads, max_norm);
  if (loss.defined() && !std::isfinite(loss.item<double>())) r.skip = true;
  clip.status =
      Tensor::from_vector<double>({r.norm, r.scale, r.skip ? 1.0 : 0.0, r.clipped ? 1.0 : 0.0}, {kClipStatusSize});
  return clip;
}

void apply_clip_scale(const std::vector<Tensor>& params, const DeviceClip& clip) {
  if (clip.grads_scaled) return;
  std::vector<Tensor> grads = owned_grads(params);
  if (grads.empty()) return;
  const std::optional<Device> device = single_cuda_device(grads);
  SSMT_CHECK(device && *device == clip.status.device(), "apply_clip_scale: the gradients are not all on ",
             clip.status.device().str(), ", where the clip was computed");
#if defined(SSMTRAIN_WITH_CUDA)
  scale_by_clip_status_cuda(grads, clip.status);
#endif
}

}  // namespace ssmtrain
