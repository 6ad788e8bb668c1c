// The fused multi-tensor AdamW update: one launch per device per optimizer step.
//
// Memory-bound (reads p, g, m, v and writes p, m, v: 28 bytes per parameter), so each
// thread moves float4s when the tensor's four arrays are 16-byte aligned. The arithmetic
// uses explicitly rounded intrinsics in the same order as adamw_update_cpu, so no FMA is
// contracted and CUDA and CPU produce the same bits.
//
// Clipping and skipping are decided on the device (optim/clip.h, clip_grad_norm_deferred):
// every block reads the clip status, returns at once when its skip flag is set (parameters
// and moments stay as they were), and otherwise multiplies each gradient by the f32-rounded
// factor first: the same product the separate scale kernel of clip_grad_norm stores, so the
// update has the same bits as clipping and then stepping.
#include "optim/clip.h"
#include "optim/multi_tensor_apply_cuda.h"
#include "optim/multi_tensor_cuda.h"

namespace ssmtrain {

namespace {

struct AdamWDesc {
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t numel;
  float lr_wd;
  float step_size[2];  // see AdamWTensorArgs
  float bc2_sqrt[2];
  int32_t vectorized;  // all four arrays 16-byte aligned
};

__device__ __forceinline__ void adamw_element(float& p, float g, float& m, float& v, float grad_scale, float decay,
                                              float step_size, float bc2_sqrt, const AdamWHyper& h) {
  g = __fmul_rn(g, grad_scale);  // exact when grad_scale is 1
  m = __fadd_rn(__fmul_rn(h.beta1, m), __fmul_rn(h.one_minus_beta1, g));
  v = __fadd_rn(__fmul_rn(h.beta2, v), __fmul_rn(__fmul_rn(h.one_minus_beta2, g), g));
  float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bc2_sqrt), h.eps);
  p = __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(step_size, m), denom));
}

__global__ void __launch_bounds__(multi_tensor::kThreads)
    adamw_multi_tensor_kernel(const AdamWDesc* __restrict__ descs, const multi_tensor::Chunk* __restrict__ chunks,
                              AdamWHyper h) {
  float grad_scale = 1.0f;
  if (h.clip_status != nullptr) {
    if (h.clip_status[kClipSkip] != 0.0) return;  // the same for every block: the update is skipped
    grad_scale = static_cast<float>(h.clip_status[kClipScale]);
  }
  const bool previous_skipped = h.previous_status != nullptr && h.previous_status[kClipSkip] != 0.0;
  const multi_tensor::Chunk c = chunks[blockIdx.x];
  const AdamWDesc d = descs[c.tensor];
  const int64_t end = min(c.start + multi_tensor::kChunkElems, d.numel);
  const float decay = 1.0f - d.lr_wd;
  const float step_size = previous_skipped ? d.step_size[1] : d.step_size[0];
  const float bc2_sqrt = previous_skipped ? d.bc2_sqrt[1] : d.bc2_sqrt[0];
  int64_t scalar_from = c.start;
  if (d.vectorized) {
    // Chunks start at multiples of kChunkElems (a multiple of 4), so float4 indices align.
    const int64_t vec_end = c.start + (end - c.start) / 4 * 4;
    for (int64_t i = c.start + 4 * static_cast<int64_t>(threadIdx.x); i < vec_end; i += 4 * blockDim.x) {
      float4 p = *reinterpret_cast<float4*>(d.p + i);
      const float4 g = *reinterpret_cast<const float4*>(d.g + i);
      float4 m = *reinterpret_cast<float4*>(d.m + i);
      float4 v = *reinterpret_cast<float4*>(d.v + i);
      adamw_element(p.x, g.x, m.x, v.x, grad_scale, decay, step_size, bc2_sqrt, h);
      adamw_element(p.y, g.y, m.y, v.y, grad_scale, decay, step_size, bc2_sqrt, h);
      adamw_element(p.z, g.z, m.z, v.z, grad_scale, decay, step_size, bc2_sqrt, h);
      adamw_element(p.w, g.w, m.w, v.w, grad_scale, decay, step_size, bc2_sqrt, h);
      *reinterpret_cast<float4*>(d.p + i) = p;
      *reinterpret_cast<float4*>(d.m + i) = m;
      *reinterpret_cast<float4*>(d.v + i) = v;
    }
    scalar_from = vec_end;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < end; i += blockDim.x) {
    float p = d.p[i], m = d.m[i], v = d.v[i];
    adamw_element(p, d.g[i], m, v, grad_scale, decay, step_size, bc2_sqrt, h);
    d.p[i] = p;
    d.m[i] = m;
    d.v[i] = v;
  }
}

}  // namespace

void adamw_step_cuda(const std::vector<AdamWTensorArgs>& tensors, const AdamWHyper& hyper) {
  if (tensors.empty()) return;
  const Device device = tensors.front().param.device();
  SSMT_CHECK(device.is_cuda(), "adamw_step_cuda: ", tensors.front().param.describe(), " is not on a CUDA device");
  std::vector<AdamWDesc> descs;
  std::vector<int64_t> numels;
  for (const AdamWTensorArgs& t : tensors) {
    multi_tensor::check_tensor(t.param, device, "adamw_step_cuda param");
    multi_tensor::check_tensor(t.grad, device, "adamw_step_cuda grad");
    multi_tensor::check_tensor(t.exp_avg, device, "adamw_step_cuda exp_avg");
    multi_tensor::check_tensor(t.exp_avg_sq, device, "adamw_step_cuda exp_avg_sq");
    SSMT_CHECK(t.grad.numel() == t.param.numel() && t.exp_avg.numel() == t.param.numel() &&
                   t.exp_avg_sq.numel() == t.param.numel(),
               "adamw_step_cuda: the gradient or state of ", t.param.describe(), " has another size");
    AdamWDesc d;
    d.p = t.param.data<float>();
    d.g = t.grad.data<float>();
    d.m = t.exp_avg.data<float>();
    d.v = t.exp_avg_sq.data<float>();
    d.numel = t.param.numel();
    d.lr_wd = t.lr_times_weight_decay;
    for (int k = 0; k < 2; ++k) {
      d.step_size[k] = t.step_size[k];
      d.bc2_sqrt[k] = t.bias_correction2_sqrt[k];
    }
    d.vectorized = cuda_detail::aligned_to(d.p, 16) && cuda_detail::aligned_to(d.g, 16) &&
                   cuda_detail::aligned_to(d.m, 16) && cuda_detail::aligned_to(d.v, 16);
    descs.push_back(d);
    numels.push_back(d.numel);
  }
  cuda_detail::DeviceGuard guard(device.index);
  cudaStream_t stream = multi_tensor::stream_of(device);
  auto ws = multi_tensor::upload(descs, numels, device);
  if (ws.num_chunks == 0) return;
  adamw_multi_tensor_kernel<<<static_cast<unsigned>(ws.num_chunks), multi_tensor::kThreads, 0, stream>>>(
      ws.descs, ws.chunks, hyper);
  CUDA_CHECK_LAUNCH();
}

}  // namespace ssmtrain
