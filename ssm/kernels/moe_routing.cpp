// MoE routing: the argument checks, the tape nodes of dispatch and combine, and the CPU
// kernels (the reference the CUDA kernels are tested against).
#include "ssm/kernels/moe_routing.h"

#include <algorithm>
#include <cstring>
#include <string>
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
  for (int64_t e = 0; e < E; ++e) p.counts[e] = filled[e];
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

template <typename S, typename D>
void stack_copy(const void* const* src, void* const* dst, int64_t E, int64_t numel, bool gather) {
  // gather: dst[0] is (E, numel), src[e] per expert; else src[0] is (E, numel), dst[e] per expert.
#pragma omp parallel for schedule(static)
  for (int64_t e = 0; e < E; ++e) {
    const S* from = static_cast<const S*>(gather ? src[e] : src[0]) + (gather ? 0 : e * numel);
    D* to = gather ? static_cast<D*>(dst[0]) + e * numel : static_cast<D*>(dst[e]);
    if (!to) continue;
    for (int64_t i = 0; i < numel; ++i) to[i] = static_cast<D>(static_cast<acc_t<S>>(from[i]));
  }
}

const FusedKernels<MoeStackParams> kStackKernels = {
    moe_stack_fwd_cpu, moe_stack_bwd_cpu, SSMT_CUDA_KERNEL(moe_stack_fwd_cuda), SSMT_CUDA_KERNEL(moe_stack_bwd_cuda)};

const FusedKernels<MoeDispatchParams> kDispatchKernels = {moe_dispatch_fwd_cpu, moe_dispatch_bwd_cpu,
                                                          SSMT_CUDA_KERNEL(moe_dispatch_fwd_cuda),
                                                          SSMT_CUDA_KERNEL(moe_dispatch_bwd_cuda)};
const FusedKernels<MoeCombineParams> kCombineKernels = {moe_combine_fwd_cpu, moe_combine_bwd_cpu,
                                                        SSMT_CUDA_KERNEL(moe_combine_fwd_cuda),
                                                        SSMT_CUDA_KERNEL(moe_combine_bwd_cuda)};

void check_slot(const char* op, const Tensor& slot, int64_t T, Device device, const char* ref) {
  check_present(op, "slot", slot);
  check_rank(op, "slot", slot, 2, "(T, k)");
  SSMT_CHECK(slot.size(0) == T && slot.size(1) >= 1, op, ": slot ", slot.describe(), ": expected (T, k) with T = ", T,
             " and k >= 1");
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

void moe_stack_fwd_cpu(const MoeStackParams& p) {
  SSMT_DISPATCH_FLOAT(p.src_dtype, "moe_stack_weights", [&] {
    using S = scalar_t;
    SSMT_DISPATCH_FLOAT(p.dst_dtype, "moe_stack_weights", [&] {
      void* out = p.out;
      stack_copy<S, scalar_t>(p.w.data(), &out, p.E, p.numel, true);
    });
  });
}
void moe_stack_bwd_cpu(const MoeStackParams& p) {
  SSMT_DISPATCH_FLOAT(p.dst_dtype, "moe_stack_weights", [&] {
    using S = scalar_t;
    SSMT_DISPATCH_FLOAT(p.src_dtype, "moe_stack_weights", [&] {
      const void* dout = p.dout;
      stack_copy<S, scalar_t>(&dout, p.dw.data(), p.E, p.numel, false);
    });
  });
}

Tensor moe_stack_weights(const std::vector<Tensor>& ws, DType dtype) {
  constexpr const char* op = "moe_stack_weights";
  SSMT_CHECK(!ws.empty(), op, ": needs at least one weight");
  check_present(op, "ws[0]", ws[0]);
  check_floating_arg(op, "ws[0]", ws[0]);
  SSMT_CHECK(is_floating(dtype), op, ": dtype ", dtype_name(dtype), ": expected f32, bf16 or f64");
  const int64_t E = static_cast<int64_t>(ws.size());
  std::vector<Tensor> w(ws.size());
  for (int64_t e = 0; e < E; ++e) {
    const std::string name = "ws[" + std::to_string(e) + "]";
    check_present(op, name.c_str(), ws[e]);
    check_shape(op, name.c_str(), ws[e], ws[0].shape(), "like ws[0]");
    check_device(op, name.c_str(), ws[e], ws[0].device(), "ws[0]");
    check_dtype(op, name.c_str(), ws[e], ws[0].dtype(), "ws[0]");
    w[e] = ws[e].contiguous();
  }
  Dims shape = ws[0].shape();
  shape.insert(0, E);
  FusedOp<MoeStackParams> f(op, kStackKernels, ws[0].device());
  f.p.src_dtype = ws[0].dtype();
  f.p.dst_dtype = dtype;
  f.p.E = E;
  f.p.numel = ws[0].numel();
  f.p.w.resize(static_cast<size_t>(E));
  f.p.dw.assign(static_cast<size_t>(E), nullptr);
  for (int64_t e = 0; e < E; ++e) {
    f.p.w[e] = w[e].data_ptr();
    f.input(
        w[e], [e](MoeStackParams& q) -> void*& { return q.dw[e]; }, /*saved=*/false);
  }
  Tensor out = f.output(shape, dtype, &MoeStackParams::out);
  f.forward();
  f.p.w.assign(static_cast<size_t>(E), nullptr);  // the backward reads dout only
  f.record({out}, [](MoeStackParams& q, const std::vector<Tensor>& grads) {
    Tensor dout = grads[0].contiguous();
    q.dout = dout.data_ptr();
    return std::vector<Tensor>{dout};
  });
  return out;
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
  r.counts = Tensor::empty({E}, DType::i64, device);
  MoeRouteParams p;
  p.dtype = probs.dtype();
  p.T = T, p.E = E, p.K = k, p.capacity = capacity;
  p.probs = probs.data_ptr();
  p.expert = r.expert.data<int64_t>();
  p.slot = r.slot.data<int64_t>();
  p.first_counts = r.first_counts.data<int64_t>();
  p.counts = r.counts.data<int64_t>();
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
