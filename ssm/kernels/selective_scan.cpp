// Selective scan: argument checks, the tape node, the CPU kernels (forward with interval
// checkpoints, backward recomputing each interval) and the plain reference.
#include "ssm/kernels/selective_scan.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"
#include "core/fused_op.h"

namespace ssmtrain {

using namespace ssm_detail;

namespace {

constexpr const char* kOp = "selective_scan";

// The tensors of one call after checks and conversions (see selective_scan.h for shapes).
struct ScanTensors {
  Tensor u, delta, A, Bm, Cm, Dskip, z, delta_bias, h0;
  Tensor seq_idx;  // (B, L) i32 contiguous, or undefined
};

template <typename T> inline acc_t<T> load(const T* p, int64_t i) { return static_cast<acc_t<T>>(p[i]); }

// Whether step t of a row restarts the state (a_t = 0): its document index differs from the
// previous step's. `row` is the row's seq_idx, or null (one document: never).
inline bool resets_at(const int32_t* row, int64_t t) { return row && t > 0 && row[t] != row[t - 1]; }

SelectiveScanParams make_params(const ScanTensors& t, bool delta_softplus) {
  SelectiveScanParams p;
  p.dtype = t.u.dtype();
  p.B = t.u.size(0), p.L = t.u.size(1), p.D = t.u.size(2), p.N = t.A.size(1), p.G = t.Bm.size(2);
  p.delta_softplus = delta_softplus;
  p.u = seq_view(t.u), p.delta = seq_view(t.delta), p.Bm = seq_view(t.Bm), p.Cm = seq_view(t.Cm);
  if (t.z.defined()) p.z = seq_view(t.z);
  p.A = t.A.data_ptr();
  p.Dskip = t.Dskip.defined() ? t.Dskip.data_ptr() : nullptr;
  p.delta_bias = t.delta_bias.defined() ? t.delta_bias.data_ptr() : nullptr;
  p.h0 = t.h0.defined() ? t.h0.data_ptr() : nullptr;
  // An empty sequence has no documents: h0 passes through as without seq_idx.
  p.seq_idx = t.seq_idx.defined() && p.L > 0 ? static_cast<const int32_t*>(t.seq_idx.data_ptr()) : nullptr;
  return p;
}

// Channel slices per (batch, group) task of the backward: enough tasks to keep the cores
// busy, chosen from the shapes only so the summation order never depends on the thread count.
int64_t backward_channel_slices(const SelectiveScanParams& p) {
  int64_t per_group = p.D / p.G, tasks = std::max<int64_t>(p.B * p.G, 1);
  return std::clamp<int64_t>((64 + tasks - 1) / tasks, 1, std::max<int64_t>(per_group, 1));
}

// A as the kernels use it: p.A itself, or -exp(p.A) when p.A holds log(-A) (in `storage`;
// std::exp, as the CPU's exp op, so the values are those of the composed -exp(A_log)).
template <typename C>
const C* decay_rates(const SelectiveScanParams& p, std::vector<C>& storage) {
  const C* given = static_cast<const C*>(p.A);
  if (!p.A_log) return given;
  storage.resize(static_cast<size_t>(p.D * p.N));
  for (int64_t i = 0; i < p.D * p.N; ++i) storage[i] = -std::exp(given[i]);
  return storage.data();
}

template <typename T>
void forward_kernel(const SelectiveScanParams& p) {
  using C = acc_t<T>;
  const int64_t B = p.B, L = p.L, D = p.D, N = p.N, per_group = D / p.G;
  const int64_t interval = p.checkpoint_interval, nck = p.num_checkpoints();
  const T* u = static_cast<const T*>(p.u.data);
  const T* delta = static_cast<const T*>(p.delta.data);
  const T* z = static_cast<const T*>(p.z.data);
  const T* Bm = static_cast<const T*>(p.Bm.data);
  const T* Cm = static_cast<const T*>(p.Cm.data);
  std::vector<C> A_storage;
  const C* A = decay_rates<C>(p, A_storage);
  const C* Dskip = static_cast<const C*>(p.Dskip);
  const C* delta_bias = static_cast<const C*>(p.delta_bias);
  const C* h0 = static_cast<const C*>(p.h0);
  T* out = static_cast<T*>(p.out);
  C* h_last = static_cast<C*>(p.h_last);
  C* ckpt = static_cast<C*>(p.checkpoints);

#pragma omp parallel
  {
    std::vector<C> h(N);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t d = 0; d < D; ++d) {
        const int64_t g = d / per_group, bd = b * D + d;
        const C* A_row = A + d * N;
        const C skip = Dskip ? Dskip[d] : C(0), bias = delta_bias ? delta_bias[d] : C(0);
        const int32_t* seq = p.seq_idx ? p.seq_idx + b * L : nullptr;
        for (int64_t n = 0; n < N; ++n) h[n] = h0 ? h0[bd * N + n] : C(0);
        for (int64_t t = 0; t < L; ++t) {
          if (ckpt && t % interval == 0) std::copy(h.begin(), h.end(), ckpt + (bd * nck + t / interval) * N);
          const C ut = load(u, b * p.u.batch_stride + t * p.u.seq_stride + d);
          C dt = load(delta, b * p.delta.batch_stride + t * p.delta.seq_stride + d) + bias;
          if (p.delta_softplus) dt = math::softplus(dt);
          const T* B_row = Bm + b * p.Bm.batch_stride + t * p.Bm.seq_stride + g * N;
          const T* C_row = Cm + b * p.Cm.batch_stride + t * p.Cm.seq_stride + g * N;
          const C dtu = dt * ut;
          const bool reset = resets_at(seq, t);
          C* __restrict hs = h.data();
          for (int64_t n = 0; n < N; ++n) {
            const C a = reset ? C(0) : math::exp_vec(dt * A_row[n]);  // the decay: 0 at a document start
            hs[n] = a * hs[n] + dtu * load(B_row, n);
          }
          C y = 0;
#pragma omp simd reduction(+ : y)
          for (int64_t n = 0; n < N; ++n) y += load(C_row, n) * hs[n];
          y += skip * ut;
          if (z) y *= math::silu_branchless(load(z, b * p.z.batch_stride + t * p.z.seq_stride + d), math::VecExp{});
          out[(b * L + t) * D + d] = static_cast<T>(y);
        }
        std::copy(h.begin(), h.end(), h_last + bd * N);
      }
    }
  }
}

template <typename T>
void backward_kernel(const SelectiveScanParams& p) {
  using C = acc_t<T>;
  const int64_t B = p.B, L = p.L, D = p.D, N = p.N, G = p.G, per_group = D / G;
  const int64_t interval = p.checkpoint_interval, nck = p.num_checkpoints();
  const int64_t slices = backward_channel_slices(p);
  SSMT_ASSERT(L == 0 || p.checkpoints, "selective_scan backward needs the forward's checkpoints");
  const T* u = static_cast<const T*>(p.u.data);
  const T* delta = static_cast<const T*>(p.delta.data);
  const T* z = static_cast<const T*>(p.z.data);
  const T* Bm = static_cast<const T*>(p.Bm.data);
  const T* Cm = static_cast<const T*>(p.Cm.data);
  const T* dout = static_cast<const T*>(p.dout.data);
  std::vector<C> A_storage;
  const C* A = decay_rates<C>(p, A_storage);
  const C* Dskip = static_cast<const C*>(p.Dskip);
  const C* delta_bias = static_cast<const C*>(p.delta_bias);
  const C* ckpt = static_cast<const C*>(p.checkpoints);
  const C* dh_last = static_cast<const C*>(p.dh_last);
  T* du = static_cast<T*>(p.du);
  T* ddelta = static_cast<T*>(p.ddelta);
  T* dz = static_cast<T*>(p.dz);
  C* dh0 = static_cast<C*>(p.dh0);

  // Partial sums owned by one task each, added in a fixed order afterwards:
  // dB/dC per (slice, b, t, g, n); dA per (b, d, n); dDskip and ddelta_bias per (b, d).
  const size_t bc_size = static_cast<size_t>(slices * B * L * G * N);
  std::vector<C> dB_part(p.dBm ? bc_size : 0, C(0)), dC_part(p.dCm ? bc_size : 0, C(0));
  std::vector<C> dA_part(static_cast<size_t>(B * D * N)), dD_part(static_cast<size_t>(B * D));
  std::vector<C> dbias_part(static_cast<size_t>(B * D));

#pragma omp parallel
  {
    std::vector<C> lam(N), h_buf((interval + 1) * N), a_buf(interval * N), dA_acc(N);
    std::vector<C> dt_buf(interval), dsp_buf(interval);  // delta after softplus, softplus' per step
#pragma omp for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t s = 0; s < slices; ++s) {
          const int64_t d_begin = g * per_group + per_group * s / slices;
          const int64_t d_end = g * per_group + per_group * (s + 1) / slices;
          for (int64_t d = d_begin; d < d_end; ++d) {
            const int64_t bd = b * D + d;
            const C* A_row = A + d * N;
            const C skip = Dskip ? Dskip[d] : C(0), bias = delta_bias ? delta_bias[d] : C(0);
            const int32_t* seq = p.seq_idx ? p.seq_idx + b * L : nullptr;
            C dskip_acc = 0, dbias_acc = 0;
            // lam carries a_{t+1} * lambda_{t+1}; at the end of the sequence, d(h_last).
            for (int64_t n = 0; n < N; ++n) lam[n] = dh_last ? dh_last[bd * N + n] : C(0);
            std::fill(dA_acc.begin(), dA_acc.end(), C(0));

            for (int64_t c = nck - 1; c >= 0; --c) {
              const int64_t t0 = c * interval, t1 = std::min(L, t0 + interval);
              // Recompute the interval's states from its checkpoint: h_buf[k] = state after
              // step t0 + k - 1 (h_buf[0] is the checkpoint), a_buf[k] = decay of step t0 + k
              // (0 at a document start: the adjoint below then stops there, and the terms
              // a * h_prev of ddelta and dA vanish).
              std::copy(ckpt + (bd * nck + c) * N, ckpt + (bd * nck + c + 1) * N, h_buf.begin());
              for (int64_t t = t0; t < t1; ++t) {
                const C ut = load(u, b * p.u.batch_stride + t * p.u.seq_stride + d);
                const C dt_raw = load(delta, b * p.delta.batch_stride + t * p.delta.seq_stride + d) + bias;
                C dt = dt_raw, dsp = 1;
                if (p.delta_softplus) math::softplus_and_grad(dt_raw, dt, dsp);
                dt_buf[t - t0] = dt;
                dsp_buf[t - t0] = dsp;
                const T* B_row = Bm + b * p.Bm.batch_stride + t * p.Bm.seq_stride + g * N;
                const C dtu = dt * ut;
                const C* __restrict h_prev = &h_buf[(t - t0) * N];
                C* __restrict h_cur = &h_buf[(t - t0 + 1) * N];
                C* __restrict a = &a_buf[(t - t0) * N];
                const bool reset = resets_at(seq, t);
                for (int64_t n = 0; n < N; ++n) {
                  a[n] = reset ? C(0) : math::exp_vec(dt * A_row[n]);
                  h_cur[n] = a[n] * h_prev[n] + dtu * load(B_row, n);
                }
              }
              for (int64_t t = t1 - 1; t >= t0; --t) {
                const int64_t seq_index = (b * L + t) * D + d;
                const C ut = load(u, b * p.u.batch_stride + t * p.u.seq_stride + d);
                const C dt = dt_buf[t - t0];
                const T* B_row = Bm + b * p.Bm.batch_stride + t * p.Bm.seq_stride + g * N;
                const T* C_row = Cm + b * p.Cm.batch_stride + t * p.Cm.seq_stride + g * N;
                const C* h_prev = &h_buf[(t - t0) * N];
                const C* h_cur = &h_buf[(t - t0 + 1) * N];
                const C* a = &a_buf[(t - t0) * N];
                const C dout_t = load(dout, b * p.dout.batch_stride + t * p.dout.seq_stride + d);
                C gy = dout_t;  // gradient of y_t (before the gate)
                if (z) {
                  const C zt = load(z, b * p.z.batch_stride + t * p.z.seq_stride + d);
                  const C sz = math::sigmoid_branchless(zt, math::VecExp{});
                  C y = skip * ut;
#pragma omp simd reduction(+ : y)
                  for (int64_t n = 0; n < N; ++n) y += load(C_row, n) * h_cur[n];
                  gy = dout_t * zt * sz;  // silu(z) = z sigmoid(z)
                  if (dz) dz[seq_index] = static_cast<T>(dout_t * y * math::silu_grad(zt, sz));
                }
                const int64_t part = (((s * B + b) * L + t) * G + g) * N;
                C du_t = skip * gy, ddt = 0;
                C* __restrict lam_s = lam.data();
                C* __restrict dA_s = dA_acc.data();
                C* __restrict dC_s = p.dCm ? dC_part.data() + part : nullptr;
                C* __restrict dB_s = p.dBm ? dB_part.data() + part : nullptr;
#pragma omp simd reduction(+ : du_t, ddt)
                for (int64_t n = 0; n < N; ++n) {
                  const C Bn = load(B_row, n);
                  const C lam_t = lam_s[n] + gy * load(C_row, n);
                  if (dC_s) dC_s[n] += gy * h_cur[n];
                  if (dB_s) dB_s[n] += lam_t * dt * ut;
                  du_t += lam_t * dt * Bn;
                  const C decay_h = a[n] * h_prev[n];
                  ddt += lam_t * (A_row[n] * decay_h + Bn * ut);
                  dA_s[n] += lam_t * dt * decay_h;
                  lam_s[n] = a[n] * lam_t;
                }
                dskip_acc += gy * ut;
                const C ddelta_t = ddt * dsp_buf[t - t0];
                dbias_acc += ddelta_t;
                if (du) du[seq_index] = static_cast<T>(du_t);
                if (ddelta) ddelta[seq_index] = static_cast<T>(ddelta_t);
              }
            }
            if (dh0) std::copy(lam.begin(), lam.end(), dh0 + bd * N);
            std::copy(dA_acc.begin(), dA_acc.end(), dA_part.begin() + bd * N);
            dD_part[bd] = dskip_acc;
            dbias_part[bd] = dbias_acc;
          }
        }
      }
    }
  }

  // Fixed-order reductions of the partial sums.
  auto reduce_bc = [&](const std::vector<C>& part, T* dst) {
    if (!dst) return;
    const int64_t row = G * N, rows = B * L;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < row; ++i) {
        C acc = 0;
        for (int64_t s = 0; s < slices; ++s) acc += part[(s * rows + r) * row + i];
        dst[r * row + i] = static_cast<T>(acc);
      }
    }
  };
  reduce_bc(dB_part, static_cast<T*>(p.dBm));
  reduce_bc(dC_part, static_cast<T*>(p.dCm));
  sum_batch_partials(dA_part, B, D * N, p.dA);
  if (p.A_log && p.dA) {  // d/d log(-A) = dA * A (the chain rule of A = -exp(A_log))
    C* dA = static_cast<C*>(p.dA);
    for (int64_t i = 0; i < D * N; ++i) dA[i] = dA[i] * A[i];
  }
  sum_batch_partials(dD_part, B, D, p.dDskip);
  sum_batch_partials(dbias_part, B, D, p.ddelta_bias);
}

// Checks every argument against u's (B, L, D) and A's N; returns the converted tensors.
ScanTensors checked_inputs(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                           const Tensor& Dskip, const Tensor& z, const Tensor& delta_bias, const Tensor& h0,
                           const Tensor& seq_idx) {
  check_present(kOp, "u", u);
  check_present(kOp, "delta", delta);
  check_present(kOp, "A", A);
  check_present(kOp, "Bm", Bm);
  check_present(kOp, "Cm", Cm);
  check_floating_arg(kOp, "u", u);
  check_rank(kOp, "u", u, 3, "(B, L, D)");
  const int64_t B = u.size(0), L = u.size(1), D = u.size(2);
  check_rank(kOp, "A", A, 2, "(D, N)");
  const int64_t N = A.size(1);
  check_shape(kOp, "A", A, {D, N}, "(D, N)");
  check_shape(kOp, "delta", delta, {B, L, D}, "(B, L, D)");
  check_rank(kOp, "Bm", Bm, 4, "(B, L, G, N)");
  const int64_t G = Bm.size(2);
  check_shape(kOp, "Bm", Bm, {B, L, G, N}, "(B, L, G, N)");
  SSMT_CHECK(G > 0 && D % G == 0, kOp, ": Bm ", Bm.shape().str(), ": the group count G = ", G,
             " must divide D = ", D);
  check_shape(kOp, "Cm", Cm, {B, L, G, N}, "(B, L, G, N)");
  if (Dskip.defined()) check_shape(kOp, "Dskip", Dskip, {D}, "(D)");
  if (z.defined()) check_shape(kOp, "z", z, {B, L, D}, "(B, L, D)");
  if (delta_bias.defined()) check_shape(kOp, "delta_bias", delta_bias, {D}, "(D)");
  if (h0.defined()) check_shape(kOp, "h0", h0, {B, D, N}, "(B, D, N)");

  check_operands(kOp, u, "u",
                 {{"delta", delta},
                  {"A", A},
                  {"Bm", Bm},
                  {"Cm", Cm},
                  {"Dskip", Dskip},
                  {"z", z},
                  {"delta_bias", delta_bias},
                  {"h0", h0}});
  check_same_dtype(kOp, u, "u", {{"delta", delta}, {"Bm", Bm}, {"Cm", Cm}, {"z", z}});
  const Tensor documents = checked_seq_idx(kOp, seq_idx, B, L, u.device(), "u");
  const bool on_cuda = u.device().is_cuda();
  if (on_cuda) {
    SSMT_CHECK(u.dtype() == DType::f32 || u.dtype() == DType::bf16, kOp, ": u ", u.shape().str(), " ",
               dtype_name(u.dtype()), " on ", u.device().str(),
               ": the CUDA kernel takes f32 or bf16 sequence tensors (run f64 on the CPU)");
    SSMT_CHECK(N >= 1 && N <= kSelectiveScanCudaMaxState, kOp, ": A ", A.shape().str(), ": the CUDA kernel supports ",
               "a state size N from 1 to ", kSelectiveScanCudaMaxState, ", got N = ", N, " (run it on the CPU)");
  }

  const DType cd = compute_dtype(u.dtype());
  auto param = [&](const Tensor& t) { return t.defined() ? t.to(cd).contiguous() : Tensor(); };
  // The CUDA kernels index u, delta and z densely and take B and C (and the CPU kernels
  // every sequence tensor) as rows at any batch and sequence stride: the B and C columns of
  // Mamba's x_proj output go in as views, with no copy. The CUDA kernels' rows of B and C
  // must not overlap, though: a B or C broadcast along the sequence (stride 0, the LTI
  // block's) is copied out.
  auto seq = [&](const Tensor& t, int inner) {
    if (!t.defined()) return Tensor();
    if (!on_cuda) return with_contiguous_rows(t, inner);
    if (inner == 1) return t.contiguous();
    const Tensor r = with_contiguous_rows(t, inner);
    return r.size(1) > 1 && r.strides()[1] < r.size(2) * r.size(3) ? r.contiguous() : r;
  };
  ScanTensors s;
  s.u = seq(u, 1);
  s.delta = seq(delta, 1);
  s.z = seq(z, 1);
  s.Bm = seq(Bm, 2);
  s.Cm = seq(Cm, 2);
  s.A = param(A), s.Dskip = param(Dskip), s.delta_bias = param(delta_bias), s.h0 = param(h0);
  s.seq_idx = documents;
  return s;
}

}  // namespace

void selective_scan_fwd_cpu(const SelectiveScanParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] { forward_kernel<scalar_t>(p); });
}

void selective_scan_bwd_cpu(const SelectiveScanParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] { backward_kernel<scalar_t>(p); });
}

namespace {
const FusedKernels<SelectiveScanParams> kKernels = {selective_scan_fwd_cpu, selective_scan_bwd_cpu,
                                                    SSMT_CUDA_KERNEL(selective_scan_fwd_cuda),
                                                    SSMT_CUDA_KERNEL(selective_scan_bwd_cuda)};
}  // namespace

SelectiveScanResult selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm,
                                   const Tensor& Cm, const Tensor& Dskip, const Tensor& z, const Tensor& delta_bias,
                                   bool delta_softplus, const Tensor& h0, const Tensor& seq_idx, bool A_is_log,
                                   const std::function<Tensor()>& recompute_delta) {
  using P = SelectiveScanParams;
  const ScanTensors in = checked_inputs(u, delta, A, Bm, Cm, Dskip, z, delta_bias, h0, seq_idx);
  const bool on_cuda = in.u.device().is_cuda();
  FusedOp<P> op(kOp, kKernels, in.u.device());
  P& p = op.p;
  p = make_params(in, delta_softplus);
  p.A_log = A_is_log;
  p.checkpoint_interval = on_cuda ? kScanCheckpoint : kSelectiveScanCheckpointInterval;
  op.input(in.u, &P::du);
  if (recompute_delta) {
    // delta is not kept: the backward computes it again and lays it out as the forward did.
    op.input_recomputed(
        in.delta, &P::ddelta,
        [f = recompute_delta, on_cuda] {
          Tensor t = f();
          return on_cuda ? t.contiguous() : with_contiguous_rows(t, 1);
        },
        [](P& q, const Tensor& t) { q.delta = seq_view(t); });
  } else {
    op.input(in.delta, &P::ddelta);
  }
  op.input(in.A, &P::dA);
  op.input(in.Bm, &P::dBm);
  op.input(in.Cm, &P::dCm);
  op.input(in.Dskip, &P::dDskip);
  op.input(in.z, &P::dz);
  op.input(in.delta_bias, &P::ddelta_bias);
  op.input(in.h0, &P::dh0);
  op.save(in.seq_idx);  // not differentiable; the backward reads it through the params
  const DType cd = compute_dtype(p.dtype);
  Tensor out = op.output({p.B, p.L, p.D}, p.dtype, &P::out);
  Tensor h_last = op.output({p.B, p.D, p.N}, cd, &P::h_last);
  if (op.needs_grad()) op.output({p.B, p.D, p.num_checkpoints(), p.N}, cd, &P::checkpoints, /*saved=*/true);
  op.forward();
  op.record({out, h_last}, [on_cuda](P& q, const std::vector<Tensor>& grads) {
    Tensor dout = on_cuda ? grads[0].contiguous() : with_contiguous_rows(grads[0], 1);
    Tensor dh_last = grads[1].contiguous();
    q.dout = seq_view(dout);
    q.dh_last = dh_last.data_ptr();
    return std::vector<Tensor>{dout, dh_last};
  });
  return {out, h_last};
}

}  // namespace ssmtrain
