// MoE routing: the argument checks, the tape nodes of dispatch and combine, and the CPU
// kernels (the reference the CUDA kernels are tested against).
#include "ssm/kernels/moe_routing.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/fused_op.h"
#include "ssm/kernels/kernel_common.h"

namespace ssmtrain {

using namespace ssm_detail;

namespace {

// The routing in its defining order (moe_routing.h); T * E work.
template <typename P>
void route_cpu(const MoeRouteParams& p) {
  const P* probs = static_cast<const P*>(p.probs);
  const int64_t T = p.T, E = p.E, K = p.K;
  for (int64_t t = 0; t < T; ++t) {
    const P* row = probs + t * E;
    for (int64_t j = 0; j < K; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        bool taken = false;
        for (int64_t i = 0; i < j; ++i) taken = taken || p.expert[t * K + i] == e;
        if (!taken && (best < 0 || row[e] > row[best])) best = e;
      }
      p.expert[t * K + j] = best;
    }
  }
  std::vector<int64_t> filled(static_cast<size_t>(E), 0);
  int64_t dropped = 0;
  for (int64_t j = 0; j < K; ++j) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t e = p.expert[t * K + j];
      const int64_t pos = filled[e]++;
      p.slot[t * K + j] = pos < p.capacity ? e * p.capacity + pos : -1;
      dropped += pos < p.capacity ? 0 : 1;
    }
    if (j == 0)
      for (int64_t e = 0; e < E; ++e) p.first_counts[e] = filled[e];
  }
  if (K == 0)
    for (int64_t e = 0; e < E; ++e) p.first_counts[e] = 0;
  if (p.usage) {
    for (int64_t e = 0; e < E; ++e) p.usage[e] += static_cast<double>(p.first_counts[e]);
    p.usage[E] += static_cast<double>(dropped);
    p.usage[E + 1] += static_cast<double>(T * K);
  }
}

template <typename T>
void dispatch_fwd(const MoeDispatchParams& p) {
  const T* x = static_cast<const T*>(p.x);
  T* xd = static_cast<T*>(p.xd);
  std::memset(xd, 0, static_cast<size_t>(p.rows * p.D) * sizeof(T));
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t j = 0; j < p.K; ++j) {
      const int64_t s = p.slot[t * p.K + j];
      if (s >= 0) std::memcpy(xd + s * p.D, x + t * p.D, static_cast<size_t>(p.D) * sizeof(T));
    }
}

template <typename T>
void dispatch_bwd(const MoeDispatchParams& p) {
  if (!p.dx) return;
  using Acc = acc_t<T>;
  const T* dxd = static_cast<const T*>(p.dxd);
  T* dx = static_cast<T*>(p.dx);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t d = 0; d < p.D; ++d) {
      Acc acc = 0;
      for (int64_t j = 0; j < p.K; ++j) {
        const int64_t s = p.slot[t * p.K + j];
        if (s >= 0) acc += static_cast<Acc>(dxd[s * p.D + d]);
      }
      dx[t * p.D + d] = static_cast<T>(acc);
    }
}

template <typename T>
void combine_fwd(const MoeCombineParams& p) {
  using Acc = acc_t<T>;
  const T* yd = static_cast<const T*>(p.yd);
  const Acc* gate = static_cast<const Acc*>(p.gate);
  T* y = static_cast<T*>(p.y);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t d = 0; d < p.D; ++d) {
      Acc acc = 0;
      for (int64_t j = 0; j < p.K; ++j) {
        const int64_t s = p.slot[t * p.K + j];
        if (s >= 0) acc += gate[t * p.K + j] * static_cast<Acc>(yd[s * p.D + d]);
      }
      y[t * p.D + d] = static_cast<T>(acc);
    }
}

template <typename T>
void combine_bwd(const MoeCombineParams& p) {
  using Acc = acc_t<T>;
  const T* yd = static_cast<const T*>(p.yd);
  const T* dy = static_cast<const T*>(p.dy);
  const Acc* gate = static_cast<const Acc*>(p.gate);
  T* dyd = static_cast<T*>(p.dyd);
  Acc* dgate = static_cast<Acc*>(p.dgate);
  if (dyd) std::memset(dyd, 0, static_cast<size_t>(p.rows * p.D) * sizeof(T));
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t j = 0; j < p.K; ++j) {
      const int64_t s = p.slot[t * p.K + j];
      Acc dot = 0;
      if (s >= 0)
        for (int64_t d = 0; d < p.D; ++d) {
          const Acc g = static_cast<Acc>(dy[t * p.D + d]);
          dot += g * static_cast<Acc>(yd[s * p.D + d]);
          if (dyd) dyd[s * p.D + d] = static_cast<T>(gate[t * p.K + j] * g);
        }
      if (dgate) dgate[t * p.K + j] = dot;
    }
}

const FusedKernels<MoeDispatchParams> kDispatchKernels = {moe_dispatch_fwd_cpu, moe_dispatch_bwd_cpu,
                                                          SSMT_CUDA_KERNEL(moe_dispatch_fwd_cuda),
                                                          SSMT_CUDA_KERNEL(moe_dispatch_bwd_cuda)};
const FusedKernels<MoeCombineParams> kCombineKernels = {moe_combine_fwd_cpu, moe_combine_bwd_cpu,
                                                        SSMT_CUDA_KERNEL(moe_combine_fwd_cuda),
                                                        SSMT_CUDA_KERNEL(moe_combine_bwd_cuda)};

void check_slot(const char* op, const Tensor& slot, int64_t T, Device device, const char* ref) {
  check_present(op, "slot", slot);
  check_rank(op, "slot", slot, 2, "(T, k)");
  SSMT_CHECK(slot.size(0) == T && slot.size(1) >= 1, op, ": slot ", slot.describe(), ": expected (T, k) with T = ",
             T, " and k >= 1");
  SSMT_CHECK(slot.dtype() == DType::i64, op, ": slot ", slot.describe(), ": expected i64 (from moe_route)");
  check_device(op, "slot", slot, device, ref);
}

}  // namespace

void moe_route_cpu(const MoeRouteParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, "moe_route", [&] { route_cpu<acc_t<scalar_t>>(p); });
}
void moe_dispatch_fwd_cpu(const MoeDispatchParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, "moe_dispatch", [&] { dispatch_fwd<scalar_t>(p); });
}
void moe_dispatch_bwd_cpu(const MoeDispatchParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, "moe_dispatch", [&] { dispatch_bwd<scalar_t>(p); });
}
void moe_combine_fwd_cpu(const MoeCombineParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, "moe_combine", [&] { combine_fwd<scalar_t>(p); });
}
void moe_combine_bwd_cpu(const MoeCombineParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, "moe_combine", [&] { combine_bwd<scalar_t>(p); });
}

MoeRouting moe_route(const Tensor& probs_in, int64_t k, int64_t capacity, const Tensor& usage) {
  constexpr const char* op = "moe_route";
  check_present(op, "probs", probs_in);
  check_rank(op, "probs", probs_in, 2, "(T, E)");
  check_floating_arg(op, "probs", probs_in);
  const int64_t T = probs_in.size(0), E = probs_in.size(1);
  SSMT_CHECK(E >= 1 && k >= 1 && k <= E, op, ": k = ", k, " experts per token with E = ", E,
             " experts: expected 1 <= k <= E");
  SSMT_CHECK(capacity >= 1, op, ": capacity ", capacity, ": expected >= 1");
  const Device device = probs_in.device();
  if (usage.defined()) {
    check_shape(op, "usage", usage, {E + 2}, "(E + 2)");
    SSMT_CHECK(usage.dtype() == DType::f64 && usage.is_contiguous(), op, ": usage ", usage.describe(),
               ": expected a contiguous f64 tensor");
    check_device(op, "usage", usage, device, "probs");
  }
#if !defined(SSMTRAIN_WITH_CUDA)
  if (device.is_cuda()) throw_cuda_not_built(op, device);
#endif
  Tensor probs = probs_in.detach().contiguous();
  if (probs.dtype() == DType::bf16) probs = probs.to(DType::f32);
  MoeRouting r;
  r.expert = Tensor::empty({T, k}, DType::i64, device);
  r.slot = Tensor::empty({T, k}, DType::i64, device);
  r.first_counts = Tensor::empty({E}, DType::i64, device);
  MoeRouteParams p;
  p.dtype = probs.dtype();
  p.T = T, p.E = E, p.K = k, p.capacity = capacity;
  p.probs = probs.data_ptr();
  p.expert = r.expert.data<int64_t>();
  p.slot = r.slot.data<int64_t>();
  p.first_counts = r.first_counts.data<int64_t>();
  p.usage = usage.defined() ? usage.data<double>() : nullptr;
  if (device.is_cuda()) {
#if defined(SSMTRAIN_WITH_CUDA)
    moe_route_cuda(p, device.index);
#endif
  } else {
    moe_route_cpu(p);
  }
  return r;
}

Tensor moe_dispatch(const Tensor& x_in, const Tensor& slot_in, int64_t rows) {
  constexpr const char* op = "moe_dispatch";
  check_present(op, "x", x_in);
  check_rank(op, "x", x_in, 2, "(T, D)");
  check_floating_arg(op, "x", x_in);
  const int64_t T = x_in.size(0), D = x_in.size(1);
  check_slot(op, slot_in, T, x_in.device(), "x");
  SSMT_CHECK(rows >= 0, op, ": rows ", rows, ": expected >= 0");
  Tensor x = x_in.contiguous(), slot = slot_in.contiguous();
  FusedOp<MoeDispatchParams> f(op, kDispatchKernels, x.device());
  f.p.dtype = x.dtype();
  f.p.T = T, f.p.D = D, f.p.K = slot.size(1), f.p.rows = rows;
  f.p.slot = slot.data<int64_t>();
  f.p.x = x.data_ptr();
  f.input(x, &MoeDispatchParams::dx, /*saved=*/false);  // the backward reads slot and dxd only
  f.save(slot);
  Tensor xd = f.output({rows, D}, x.dtype(), &MoeDispatchParams::xd);
  f.forward();
  f.p.x = nullptr;  // x is not kept for the backward
  f.record({xd}, [](MoeDispatchParams& q, const std::vector<Tensor>& grads) {
    Tensor dxd = grads[0].contiguous();
    q.dxd = dxd.data_ptr();
    return std::vector<Tensor>{dxd};
  });
  return xd;
}

Tensor moe_combine(const Tensor& yd_in, const Tensor& slot_in, const Tensor& gate_in) {
  constexpr const char* op = "moe_combine";
  check_present(op, "yd", yd_in);
  check_rank(op, "yd", yd_in, 2, "(rows, D)");
  check_floating_arg(op, "yd", yd_in);
  check_present(op, "gate", gate_in);
  check_rank(op, "gate", gate_in, 2, "(T, k)");
  check_floating_arg(op, "gate", gate_in);
  const int64_t T = gate_in.size(0), D = yd_in.size(1);
  check_slot(op, slot_in, T, yd_in.device(), "yd");
  check_shape(op, "gate", gate_in, slot_in.shape(), "(T, k) like slot");
  check_device(op, "gate", gate_in, yd_in.device(), "yd");
  check_dtype(op, "gate", gate_in, compute_dtype(yd_in.dtype()), "yd's compute dtype");
  Tensor yd = yd_in.contiguous(), slot = slot_in.contiguous(), gate = gate_in.contiguous();
  FusedOp<MoeCombineParams> f(op, kCombineKernels, yd.device());
  f.p.dtype = yd.dtype();
  f.p.T = T, f.p.D = D, f.p.K = slot.size(1), f.p.rows = yd.size(0);
  f.p.slot = slot.data<int64_t>();
  f.p.yd = yd.data_ptr();
  f.p.gate = gate.data_ptr();
  f.input(yd, &MoeCombineParams::dyd);
  f.input(gate, &MoeCombineParams::dgate);
  f.save(slot);
  Tensor y = f.output({T, D}, yd.dtype(), &MoeCombineParams::y);
  f.forward();
  f.record({y}, [](MoeCombineParams& q, const std::vector<Tensor>& grads) {
    Tensor dy = grads[0].contiguous();
    q.dy = dy.data_ptr();
    return std::vector<Tensor>{dy};
  });
  return y;
}

}  // namespace ssmtrain
