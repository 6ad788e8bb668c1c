// Causal depthwise conv1d: checks, the tape node, the CPU forward/backward and the step.
#include "ssm/kernels/causal_conv1d.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/fused_op.h"

namespace ssmtrain {

using namespace ssm_detail;

namespace {

constexpr const char* kOp = "causal_conv1d";
constexpr int64_t kChannelBlock = 64;  // channels per task: contiguous inner loops

// xext[b, e, c] for e in [0, L + K - 1): the initial state for e < K - 1, then x.
template <typename T> struct ExtendedInput {
  const T* x;
  SeqView xv;
  const T* state;      // (B, C, K-1) or null
  const int32_t* seq;  // (B, L) document indices, or null (one document per row)
  int64_t L, C, K;
  acc_t<T> operator()(int64_t b, int64_t e, int64_t c) const {
    if (e >= K - 1) return static_cast<acc_t<T>>(x[b * xv.batch_stride + (e - K + 1) * xv.seq_stride + c]);
    return state ? static_cast<acc_t<T>>(state[(b * C + c) * (K - 1) + e]) : acc_t<T>(0);
  }
  // Whether xext entry e belongs to the document of sequence position t (0 <= t < L): the
  // entries before the sequence (initial state, padding) belong to position 0's document.
  // kDocs = false (no seq_idx): always, as a constant, so the plain conv's code is unchanged.
  template <bool kDocs>
  bool same_doc(int64_t b, int64_t e, int64_t t) const {
    if constexpr (!kDocs) return true;
    else return seq[b * L + std::max<int64_t>(e - (K - 1), 0)] == seq[b * L + t];
  }
};

template <typename T>
ExtendedInput<T> extended_input(const CausalConv1dParams& p) {
  return {static_cast<const T*>(p.x.data), p.x, static_cast<const T*>(p.initial_state), p.seq_idx, p.L, p.C, p.K};
}

// bias + sum_k w[c, k] xext[b, t + k, c], before the activation; the taps outside t's
// document are left out.
template <bool kDocs, typename T>
acc_t<T> pre_activation(const ExtendedInput<T>& xext, const acc_t<T>* w, const acc_t<T>* bias, int64_t b, int64_t t,
                        int64_t c, int64_t K) {
  acc_t<T> acc = bias ? bias[c] : acc_t<T>(0);
  for (int64_t k = 0; k < K; ++k)
    if (xext.template same_doc<kDocs>(b, t + k, t)) acc += w[c * K + k] * xext(b, t + k, c);
  return acc;
}

// kDocs: with seq_idx (the kernels are instantiated apart so the plain path stays as it was).
template <typename T, bool kDocs>
void forward_kernel(const CausalConv1dParams& p) {
  using Acc = acc_t<T>;
  const int64_t B = p.B, L = p.L, C = p.C, K = p.K, nblocks = (C + kChannelBlock - 1) / kChannelBlock;
  const auto xext = extended_input<T>(p);
  const Acc* w = static_cast<const Acc*>(p.weight);
  const Acc* bias = static_cast<const Acc*>(p.bias);
  T* out = static_cast<T*>(p.out);
  T* final_state = static_cast<T*>(p.final_state);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t c0 = blk * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock);
      for (int64_t t = 0; t < L; ++t) {
        for (int64_t c = c0; c < c1; ++c) {
          const Acc v = pre_activation<kDocs>(xext, w, bias, b, t, c, K);
          out[(b * L + t) * C + c] = static_cast<T>(p.silu ? math::silu_branchless(v, math::VecExp{}) : v);
        }
      }
      // The last K - 1 entries of xext, those outside the last document zeroed.
      if (final_state)
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t j = 0; j < K - 1; ++j)
            final_state[(b * C + c) * (K - 1) + j] =
                xext.template same_doc<kDocs>(b, L + j, L - 1) ? static_cast<T>(xext(b, L + j, c)) : T(0);
    }
  }
}

template <typename T, bool kDocs>
void backward_kernel(const CausalConv1dParams& p) {
  using Acc = acc_t<T>;
  const int64_t B = p.B, L = p.L, C = p.C, K = p.K, nblocks = (C + kChannelBlock - 1) / kChannelBlock;
  const auto xext = extended_input<T>(p);
  const Acc* w = static_cast<const Acc*>(p.weight);
  const Acc* bias = static_cast<const Acc*>(p.bias);
  const T* dout = static_cast<const T*>(p.dout.data);
  const T* dfinal = static_cast<const T*>(p.dfinal_state);
  T* dx = static_cast<T*>(p.dx);
  T* dstate = static_cast<T*>(p.dinitial_state);
  // Per-batch partial sums of the weight and bias gradients, added in batch order after.
  std::vector<Acc> dw_part(static_cast<size_t>(B * C * K), Acc(0)), dbias_part(static_cast<size_t>(B * C), Acc(0));

#pragma omp parallel
  {
    std::vector<Acc> dpre;  // (L, block): gradient of the pre-activation
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t blk = 0; blk < nblocks; ++blk) {
        const int64_t c0 = blk * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock), width = c1 - c0;
        dpre.assign(static_cast<size_t>(L * width), Acc(0));
        for (int64_t t = 0; t < L; ++t) {
          for (int64_t c = c0; c < c1; ++c) {
            Acc g = static_cast<Acc>(dout[b * p.dout.batch_stride + t * p.dout.seq_stride + c]);
            if (p.silu) {
              const Acc v = pre_activation<kDocs>(xext, w, bias, b, t, c, K);
              g *= math::silu_grad(v, math::sigmoid_branchless(v, math::VecExp{}));
            }
            dpre[t * width + c - c0] = g;
            dbias_part[b * C + c] += g;
            for (int64_t k = 0; k < K; ++k)
              if (xext.template same_doc<kDocs>(b, t + k, t)) dw_part[(b * C + c) * K + k] += g * xext(b, t + k, c);
          }
        }
        // d xext[e] = sum_k w[k] dpre[e - k] (+ d final_state for the last K - 1 entries),
        // over the taps and final-state entries the forward kept.
        for (int64_t e = 0; e < L + K - 1; ++e) {
          if (e >= K - 1 && !dx) continue;
          if (e < K - 1 && !dstate) continue;
          const bool to_final = dfinal && e >= L && xext.template same_doc<kDocs>(b, e, L - 1);
          for (int64_t c = c0; c < c1; ++c) {
            Acc acc = to_final ? static_cast<Acc>(dfinal[(b * C + c) * (K - 1) + e - L]) : Acc(0);
            for (int64_t k = std::max<int64_t>(0, e - L + 1); k <= std::min(K - 1, e); ++k)
              if (xext.template same_doc<kDocs>(b, e, e - k)) acc += w[c * K + k] * dpre[(e - k) * width + c - c0];
            if (e >= K - 1)
              dx[(b * L + e - K + 1) * C + c] = static_cast<T>(acc);
            else
              dstate[(b * C + c) * (K - 1) + e] = static_cast<T>(acc);
          }
        }
      }
    }
  }
  sum_batch_partials(dw_part, B, C * K, p.dweight);
  sum_batch_partials(dbias_part, B, C, p.dbias);
}

// The CUDA kernel's limits, checked before anything is allocated.
void check_cuda_support(const char* op, const Tensor& x, int64_t K) {
  SSMT_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16, op, ": x ", x.shape().str(), " ",
             dtype_name(x.dtype()), " on ", x.device().str(),
             ": the CUDA kernel takes f32 or bf16 inputs (run f64 on the CPU)");
  SSMT_CHECK(K >= 1 && K <= 4, op, ": weight: the CUDA kernel supports kernel widths 1 to 4, got K = ", K,
             " (run it on the CPU)");
}

}  // namespace

void causal_conv1d_fwd_cpu(const CausalConv1dParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] {
    if (p.seq_idx)
      forward_kernel<scalar_t, true>(p);
    else
      forward_kernel<scalar_t, false>(p);
  });
}

void causal_conv1d_bwd_cpu(const CausalConv1dParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] {
    if (p.seq_idx)
      backward_kernel<scalar_t, true>(p);
    else
      backward_kernel<scalar_t, false>(p);
  });
}

namespace {
const FusedKernels<CausalConv1dParams> kKernels = {causal_conv1d_fwd_cpu, causal_conv1d_bwd_cpu,
                                                   SSMT_CUDA_KERNEL(causal_conv1d_fwd_cuda),
                                                   SSMT_CUDA_KERNEL(causal_conv1d_bwd_cuda)};
}  // namespace

CausalConv1dResult causal_conv1d(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in,
                                 bool silu_activation, const Tensor& initial_state_in, const Tensor& seq_idx_in) {
  check_present(kOp, "x", x_in);
  check_present(kOp, "weight", weight_in);
  check_floating_arg(kOp, "x", x_in);
  check_rank(kOp, "x", x_in, 3, "(B, L, C)");
  const int64_t B = x_in.size(0), L = x_in.size(1), C = x_in.size(2);
  check_rank(kOp, "weight", weight_in, 2, "(C, K)");
  const int64_t K = weight_in.size(1);
  check_shape(kOp, "weight", weight_in, {C, K}, "(C, K)");
  SSMT_CHECK(K >= 1, kOp, ": weight ", weight_in.shape().str(), ": the kernel width K must be at least 1");
  check_floating_arg(kOp, "weight", weight_in);
  check_device(kOp, "weight", weight_in, x_in.device(), "x");
  if (bias_in.defined()) {
    check_shape(kOp, "bias", bias_in, {C}, "(C)");
    check_floating_arg(kOp, "bias", bias_in);
    check_device(kOp, "bias", bias_in, x_in.device(), "x");
  }
  if (initial_state_in.defined()) {
    check_shape(kOp, "initial_state", initial_state_in, {B, C, K - 1}, "(B, C, K-1)");
    check_device(kOp, "initial_state", initial_state_in, x_in.device(), "x");
    check_dtype(kOp, "initial_state", initial_state_in, x_in.dtype(), "x");
  }
  const Tensor seq_idx = checked_seq_idx(kOp, seq_idx_in, B, L, x_in.device());
  if (x_in.device().is_cuda()) check_cuda_support(kOp, x_in, K);

  const DType cd = compute_dtype(x_in.dtype());
  Tensor x = with_contiguous_rows(x_in, 1);
  Tensor weight = weight_in.to(cd).contiguous();
  Tensor bias = bias_in.defined() ? bias_in.to(cd).contiguous() : Tensor();
  Tensor state = initial_state_in.defined() ? initial_state_in.contiguous() : Tensor();

  FusedOp<CausalConv1dParams> op(kOp, kKernels, x.device());
  CausalConv1dParams& p = op.p;
  p.dtype = x.dtype();
  p.B = B, p.L = L, p.C = C, p.K = K, p.silu = silu_activation;
  p.x = seq_view(x);
  p.weight = weight.data_ptr();
  p.bias = bias.defined() ? bias.data_ptr() : nullptr;
  p.initial_state = state.defined() ? state.data_ptr() : nullptr;
  // An empty sequence has no documents: the state passes through as without seq_idx.
  p.seq_idx = seq_idx.defined() && L > 0 ? static_cast<const int32_t*>(seq_idx.data_ptr()) : nullptr;
  op.input(x, &CausalConv1dParams::dx);
  op.input(weight, &CausalConv1dParams::dweight);
  op.input(bias, &CausalConv1dParams::dbias);
  op.input(state, &CausalConv1dParams::dinitial_state);
  op.save(seq_idx);  // not differentiable; the backward reads it through the params
  Tensor out = op.output({B, L, C}, x.dtype(), &CausalConv1dParams::out);
  Tensor final_state = op.output({B, C, K - 1}, x.dtype(), &CausalConv1dParams::final_state);
  op.forward();
  op.record({out, final_state}, [](CausalConv1dParams& q, const std::vector<Tensor>& grads) {
    Tensor dout = with_contiguous_rows(grads[0], 1), dfinal = grads[1].contiguous();
    q.dout = seq_view(dout);
    q.dfinal_state = dfinal.data_ptr();
    return std::vector<Tensor>{dout, dfinal};
  });
  return {out, final_state};
}

Tensor causal_conv1d_step(const Tensor& x_t, const Tensor& state, const Tensor& weight_in, const Tensor& bias_in,
                          bool silu_activation) {
  constexpr const char* op = "causal_conv1d_step";
  NoGradGuard no_grad;
  check_present(op, "x_t", x_t);
  check_present(op, "state", state);
  check_present(op, "weight", weight_in);
  check_floating_arg(op, "x_t", x_t);
  check_rank(op, "x_t", x_t, 2, "(B, C)");
  const int64_t B = x_t.size(0), C = x_t.size(1);
  check_rank(op, "weight", weight_in, 2, "(C, K)");
  const int64_t K = weight_in.size(1);
  check_shape(op, "weight", weight_in, {C, K}, "(C, K)");
  SSMT_CHECK(K >= 1, op, ": weight ", weight_in.shape().str(), ": the kernel width K must be at least 1");
  check_shape(op, "state", state, {B, C, K - 1}, "(B, C, K-1)");
  check_dtype(op, "state", state, x_t.dtype(), "x_t");
  SSMT_CHECK(state.is_contiguous(), op, ": state ", state.shape().str(),
             " must be contiguous: it is updated in place");
  check_device(op, "state", state, x_t.device(), "x_t");
  check_device(op, "weight", weight_in, x_t.device(), "x_t");
  if (bias_in.defined()) {
    check_shape(op, "bias", bias_in, {C}, "(C)");
    check_device(op, "bias", bias_in, x_t.device(), "x_t");
  }
  if (x_t.device().is_cuda()) check_cuda_support(op, x_t, K);

  // One step is the full op with L = 1 whose initial state is `state`; the new window is
  // written to a scratch tensor first because the kernel reads the old one meanwhile.
  const DType cd = compute_dtype(x_t.dtype());
  Tensor x = x_t.contiguous();
  Tensor weight = weight_in.to(cd).contiguous();
  Tensor bias = bias_in.defined() ? bias_in.to(cd).contiguous() : Tensor();
  FusedOp<CausalConv1dParams> step(op, kKernels, x.device());  // the forward only
  CausalConv1dParams& p = step.p;
  p.dtype = x.dtype();
  p.B = B, p.L = 1, p.C = C, p.K = K, p.silu = silu_activation;
  p.x = SeqView{x.data_ptr(), C, C};
  p.weight = weight.data_ptr();
  p.bias = bias.defined() ? bias.data_ptr() : nullptr;
  p.initial_state = state.data_ptr();
  Tensor out = Tensor::empty({B, C}, x.dtype(), x.device());
  Tensor new_state = Tensor::empty(state.shape(), state.dtype(), state.device());
  p.out = out.data_ptr();
  p.final_state = new_state.data_ptr();
  step.forward();
  backend(x.device()).copy(new_state, state);  // on CUDA: stream-ordered after the kernel
  return out;
}

}  // namespace ssmtrain
