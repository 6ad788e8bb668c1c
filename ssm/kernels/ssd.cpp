// Chunked SSD: argument checks, the tape node, and the CPU forward and backward. Each
// chunk's work is a handful of small dense products (Eigen), the CPU counterpart of the
// batched Q x Q tensor-core products of the GPU algorithm.
#include "ssm/kernels/ssd.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/fused_op.h"
#include "core/ops.h"
#include "ssm/kernels/ssd_composed.h"
#if defined(SSMTRAIN_WITH_CUDA)
#include "ssm/kernels/ssd_cuda.h"
#endif

namespace ssmtrain {

using namespace ssm_detail;

namespace {

constexpr const char* kOp = "ssd_chunked";

template <typename Acc> using Mat = Eigen::Matrix<Acc, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename Acc> using Vec = Eigen::Matrix<Acc, Eigen::Dynamic, 1>;
template <typename Acc> using StateMap = Eigen::Map<Mat<Acc>>;  // one (P, N) state

// Rows t0 .. t0 + rows - 1 of the width-wide block at column offset `col` of a sequence
// tensor, as a (rows, width) matrix in the compute type.
template <typename T>
void load_rows(const SeqView& v, int64_t b, int64_t t0, int64_t rows, int64_t col, int64_t width,
               Mat<acc_t<T>>& dst) {
  const T* base = static_cast<const T*>(v.data) + b * v.batch_stride + col;
  dst.resize(rows, width);
  for (int64_t l = 0; l < rows; ++l) {
    const T* row = base + (t0 + l) * v.seq_stride;
    for (int64_t i = 0; i < width; ++i) dst(l, i) = static_cast<acc_t<T>>(row[i]);
  }
}

// The inputs of one (batch, head, chunk) in the compute type, with its decays.
template <typename T> struct Chunk {
  using Acc = acc_t<T>;
  int64_t t0 = 0, len = 0;
  Mat<Acc> X, Bc, Cc;     // (len, P), (len, N), (len, N)
  Vec<Acc> dt_in, dt;     // (len): dt + dt_bias before the softplus, and after
  Vec<Acc> cs;            // (len): inclusive cumsum of dt A inside the chunk
  Vec<Acc> in_decay;      // (len): exp(cs_l), the decay of the state entering the chunk up to step l
  Vec<Acc> decay_to_end;  // (len): exp(cs_last - cs_s), from a running sum
  Mat<Acc> decay;         // (len, len): exp(segsum)[l, s] = exp(sum_{k=s+1..l} dt_k A), 0 above the diagonal
  Acc carry = 1;          // in_decay at the last step: the entering state's share of the chunk's end
  // With seq_idx every factor above that spans a document boundary is 0 (ssd.h).

  void load(const SsdParams& p, int64_t b, int64_t h, int64_t c, bool with_decay_matrix) {
    const int64_t g = h / (p.H / p.G);
    t0 = c * p.chunk_size;
    len = std::min(p.chunk_size, p.L - t0);
    load_rows<T>(p.x, b, t0, len, h * p.P, p.P, X);
    load_rows<T>(p.Bm, b, t0, len, g * p.N, p.N, Bc);
    load_rows<T>(p.Cm, b, t0, len, g * p.N, p.N, Cc);
    const Acc A = static_cast<const Acc*>(p.A)[h];
    const Acc bias = p.dt_bias ? static_cast<const Acc*>(p.dt_bias)[h] : Acc(0);
    const T* dt_base = static_cast<const T*>(p.dt.data) + b * p.dt.batch_stride + h;
    // Document indices of the chunk's steps and of the step before it (seq_0 for the first).
    const int32_t* seq = p.seq_idx ? p.seq_idx + b * p.L + t0 : nullptr;
    const int32_t seq_before = seq ? seq[t0 > 0 ? -1 : 0] : 0;
    auto same = [seq](int64_t l, int32_t other) { return !seq || seq[l] == other; };
    dt_in.resize(len), dt.resize(len), cs.resize(len), in_decay.resize(len), decay_to_end.resize(len);
    Acc acc = 0;
    for (int64_t l = 0; l < len; ++l) {
      dt_in(l) = static_cast<Acc>(dt_base[(t0 + l) * p.dt.seq_stride]) + bias;
      dt(l) = p.dt_softplus ? math::softplus(dt_in(l)) : dt_in(l);
      acc += dt(l) * A;
      cs(l) = acc;
    }
    in_decay = cs.array().exp().matrix();
    carry = len > 0 ? std::exp(cs(len - 1)) : Acc(1);
    for (int64_t l = 0; l < len; ++l) {
      if (same(l, seq_before)) continue;
      in_decay(l) = 0;
      if (l == len - 1) carry = 0;
    }
    acc = 0;
    for (int64_t s = len - 1; s >= 0; --s) {
      decay_to_end(s) = same(s, seq ? seq[len - 1] : 0) ? std::exp(acc) : Acc(0);
      acc += dt(s) * A;
    }
    if (!with_decay_matrix) return;
    decay.setZero(len, len);
    for (int64_t s = 0; s < len; ++s) {
      acc = 0;
      decay(s, s) = 1;
      for (int64_t l = s + 1; l < len; ++l) {
        acc += dt(l) * A;
        decay(l, s) = same(l, seq ? seq[s] : 0) ? std::exp(acc) : Acc(0);
      }
    }
  }
};

// Stages 2 and 3: states (B, H, nc, P, N) receives the state entering each chunk and
// carry (B, H, nc) each chunk's Chunk::carry; h_last (B, H, P, N) the final state when
// non-null.
template <typename T>
void entering_states(const SsdParams& p, std::vector<acc_t<T>>& states, std::vector<acc_t<T>>& carry,
                     acc_t<T>* h_last) {
  using Acc = acc_t<T>;
  const int64_t B = p.B, H = p.H, P = p.P, N = p.N, nc = p.num_chunks(), PN = P * N;
  states.assign(static_cast<size_t>(B * H * nc * PN), Acc(0));
  carry.assign(static_cast<size_t>(B * H * nc), Acc(0));
#pragma omp parallel
  {
    Chunk<T> ch;
#pragma omp for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t c = 0; c < nc; ++c) {
          ch.load(p, b, h, c, false);
          const Vec<Acc> weight = ch.decay_to_end.cwiseProduct(ch.dt);
          StateMap<Acc> S(&states[((b * H + h) * nc + c) * PN], P, N);
          S.noalias() = ch.X.transpose() * weight.asDiagonal() * ch.Bc;
          carry[(b * H + h) * nc + c] = ch.carry;
        }
      }
    }
  }
  const Acc* h0 = static_cast<const Acc*>(p.h0);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      Mat<Acc> running = Mat<Acc>::Zero(P, N), chunk_state;
      if (h0) running = Eigen::Map<const Mat<Acc>>(h0 + (b * H + h) * PN, P, N);
      for (int64_t c = 0; c < nc; ++c) {
        StateMap<Acc> S(&states[((b * H + h) * nc + c) * PN], P, N);
        chunk_state = S;
        S = running;
        running = carry[(b * H + h) * nc + c] * running + chunk_state;
      }
      if (h_last) StateMap<Acc>(h_last + (b * H + h) * PN, P, N) = running;
    }
  }
}

template <typename T>
void forward_kernel(const SsdParams& p) {
  using Acc = acc_t<T>;
  const int64_t B = p.B, L = p.L, H = p.H, P = p.P, N = p.N, nc = p.num_chunks(), PN = P * N;
  std::vector<Acc> states, carry;
  entering_states<T>(p, states, carry, static_cast<Acc*>(p.h_last));
  const Acc* D = static_cast<const Acc*>(p.D);
  T* y = static_cast<T*>(p.y);
#pragma omp parallel
  {
    Chunk<T> ch;
#pragma omp for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t c = 0; c < nc; ++c) {
          ch.load(p, b, h, c, true);
          Eigen::Map<const Mat<Acc>> H_in(&states[((b * H + h) * nc + c) * PN], P, N);
          const Mat<Acc> K = (ch.Cc * ch.Bc.transpose()).cwiseProduct(ch.decay);
          Mat<Acc> Y = K * ch.dt.asDiagonal() * ch.X;                                        // stage 1
          Y.noalias() += ch.in_decay.asDiagonal() * (ch.Cc * H_in.transpose());  // stage 4
          if (D) Y += D[h] * ch.X;
          for (int64_t l = 0; l < ch.len; ++l) {
            T* row = y + ((b * L + ch.t0 + l) * H + h) * P;
            for (int64_t i = 0; i < P; ++i) row[i] = static_cast<T>(Y(l, i));
          }
        }
      }
    }
  }
}

template <typename T>
void backward_kernel(const SsdParams& p) {
  using Acc = acc_t<T>;
  const int64_t B = p.B, L = p.L, H = p.H, P = p.P, N = p.N, G = p.G, nc = p.num_chunks(), PN = P * N;
  const int64_t heads_per_group = H / G;
  std::vector<Acc> states, carry;
  entering_states<T>(p, states, carry, nullptr);

  // grad_states[c]: first the chunk's direct contribution to the gradient of the state
  // entering it, E_c = sum_l in_decay_l dY_l C_l^T; after the reverse pass, the gradient of
  // the state leaving chunk c.
  std::vector<Acc> grad_states(static_cast<size_t>(B * H * nc * PN));
#pragma omp parallel
  {
    Chunk<T> ch;
    Mat<Acc> dY;
#pragma omp for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t c = 0; c < nc; ++c) {
          ch.load(p, b, h, c, false);
          load_rows<T>(p.dy, b, ch.t0, ch.len, h * P, P, dY);
          StateMap<Acc>(&grad_states[((b * H + h) * nc + c) * PN], P, N).noalias() =
              dY.transpose() * ch.in_decay.asDiagonal() * ch.Cc;
        }
      }
    }
  }
  const Acc* dh_last = static_cast<const Acc*>(p.dh_last);
  Acc* dh0 = static_cast<Acc*>(p.dh0);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      Mat<Acc> grad = Mat<Acc>::Zero(P, N), direct;
      if (dh_last) grad = Eigen::Map<const Mat<Acc>>(dh_last + (b * H + h) * PN, P, N);
      for (int64_t c = nc - 1; c >= 0; --c) {
        StateMap<Acc> E(&grad_states[((b * H + h) * nc + c) * PN], P, N);
        direct = E;
        E = grad;
        grad = carry[(b * H + h) * nc + c] * grad + direct;
      }
      if (dh0) StateMap<Acc>(dh0 + (b * H + h) * PN, P, N) = grad;
    }
  }

  // Local gradients, one task per (b, group, chunk) so that the heads sharing Bm and Cm add
  // into the same rows without races. Per-head sums go to (B, nc, H) partials.
  const Acc* A = static_cast<const Acc*>(p.A);
  const Acc* D = static_cast<const Acc*>(p.D);
  std::vector<Acc> dA_part(static_cast<size_t>(B * nc * H)), dD_part(dA_part.size()), dbias_part(dA_part.size());
  T* dx = static_cast<T*>(p.dx);
  T* ddt_out = static_cast<T*>(p.ddt);
  T* dBm = static_cast<T*>(p.dBm);
  T* dCm = static_cast<T*>(p.dCm);
#pragma omp parallel
  {
    Chunk<T> ch;
    Mat<Acc> dY, dBc, dCc;
#pragma omp for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t c = 0; c < nc; ++c) {
          const int64_t t0 = c * p.chunk_size, len = std::min(p.chunk_size, L - t0);
          dBc.setZero(len, N);
          dCc.setZero(len, N);
          for (int64_t h = g * heads_per_group; h < (g + 1) * heads_per_group; ++h) {
            ch.load(p, b, h, c, true);
            load_rows<T>(p.dy, b, t0, len, h * P, P, dY);
            const int64_t bhc = (b * H + h) * nc + c;
            Eigen::Map<const Mat<Acc>> H_in(&states[bhc * PN], P, N), G_out(&grad_states[bhc * PN], P, N);
            const Vec<Acc>& exp_cs = ch.in_decay;
            const Vec<Acc> w_end = ch.decay_to_end.cwiseProduct(ch.dt);  // weight of step s in the chunk state
            const Mat<Acc> K = (ch.Cc * ch.Bc.transpose()).cwiseProduct(ch.decay);  // (C_l . B_s) exp(segsum)
            const Mat<Acc> dYX = dY * ch.X.transpose();                             // dY_l . x_s
            const Mat<Acc> XG = ch.X * G_out;                                       // (len, N)

            // Stage 1 (Y_diag = K diag(dt) X), stage 2 (S = X^T diag(w_end) B) and the skip.
            Mat<Acc> dX = (K * ch.dt.asDiagonal()).transpose() * dY;
            dX.noalias() += w_end.asDiagonal() * (ch.Bc * G_out.transpose());
            if (D) dX += D[h] * dY;
            const Mat<Acc> dK_masked = dYX.cwiseProduct(ch.decay) * ch.dt.asDiagonal();  // d(C_l . B_s)
            dCc.noalias() += dK_masked * ch.Bc;
            dCc.noalias() += exp_cs.asDiagonal() * (dY * H_in);  // stage 4
            dBc.noalias() += dK_masked.transpose() * ch.Cc;
            dBc.noalias() += w_end.asDiagonal() * XG;
            const Mat<Acc> KdYX = dYX.cwiseProduct(K);
            const Vec<Acc> q = XG.cwiseProduct(ch.Bc).rowwise().sum();  // x_s^T G_out B_s
            Vec<Acc> ddt = KdYX.colwise().sum().transpose() + ch.decay_to_end.cwiseProduct(q);

            // Gradient of the in-chunk cumsum cs: every decay is exp of a difference of cs.
            const Mat<Acc> R = KdYX * ch.dt.asDiagonal();  // decay[l, s] = exp(cs_l - cs_s)
            Vec<Acc> dcs = R.rowwise().sum() - R.colwise().sum().transpose();
            const Vec<Acc> v = w_end.cwiseProduct(q);      // decay_to_end_s = exp(cs_last - cs_s)
            dcs -= v;
            dcs(len - 1) += v.sum();
            dcs += exp_cs.cwiseProduct((ch.Cc * H_in.transpose()).cwiseProduct(dY).rowwise().sum());  // stage 4
            dcs(len - 1) += ch.carry * G_out.cwiseProduct(H_in).sum();                               // stage 3

            // cs_l = sum_{k <= l} dt_k A  =>  d(dt_k A) = sum_{l >= k} dcs_l.
            Acc acc = 0, dA_acc = 0, dbias_acc = 0;
            for (int64_t k = len - 1; k >= 0; --k) {
              acc += dcs(k);
              ddt(k) += acc * A[h];
              dA_acc += acc * ch.dt(k);
            }
            for (int64_t l = 0; l < len; ++l) {
              const Acc d_in = p.dt_softplus ? ddt(l) * math::softplus_grad(ch.dt_in(l)) : ddt(l);
              dbias_acc += d_in;
              if (ddt_out) ddt_out[(b * L + t0 + l) * H + h] = static_cast<T>(d_in);
              if (dx) {
                T* row = dx + (b * L + t0 + l) * p.dx_row() + h * P;
                for (int64_t i = 0; i < P; ++i) row[i] = static_cast<T>(dX(l, i));
              }
            }
            dA_part[(b * nc + c) * H + h] = dA_acc;
            dbias_part[(b * nc + c) * H + h] = dbias_acc;
            dD_part[(b * nc + c) * H + h] = dY.cwiseProduct(ch.X).sum();
          }
          for (int64_t l = 0; l < len; ++l) {
            const int64_t row = (b * L + t0 + l) * p.dbc_row() + g * N;
            for (int64_t n = 0; n < N; ++n) {
              if (dBm) dBm[row + n] = static_cast<T>(dBc(l, n));
              if (dCm) dCm[row + n] = static_cast<T>(dCc(l, n));
            }
          }
        }
      }
    }
  }
  auto reduce_heads = [&](const std::vector<Acc>& part, void* dst_raw) {
    if (!dst_raw) return;
    Acc* dst = static_cast<Acc*>(dst_raw);
    for (int64_t h = 0; h < H; ++h) {
      Acc acc = 0;
      for (int64_t bc = 0; bc < B * nc; ++bc) acc += part[bc * H + h];
      dst[h] = acc;
    }
  };
  reduce_heads(dA_part, p.dA);
  reduce_heads(dD_part, p.dD);
  reduce_heads(dbias_part, p.ddt_bias);
}

// The tensors of one call after conversions (see ssd.h for shapes).
struct SsdTensors {
  Tensor x, dt, A, Bm, Cm, D, dt_bias, h0;
};

void check_args(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm, const Tensor& D,
                const Tensor& dt_bias, const Tensor& h0, int64_t chunk_size) {
  SSMT_CHECK(chunk_size >= 1, kOp, ": chunk_size must be at least 1, got ", chunk_size);
  check_present(kOp, "x", x);
  check_present(kOp, "dt", dt);
  check_present(kOp, "A", A);
  check_present(kOp, "Bm", Bm);
  check_present(kOp, "Cm", Cm);
  check_floating_arg(kOp, "x", x);
  check_rank(kOp, "x", x, 4, "(B, L, H, P)");
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), P = x.size(3);
  check_shape(kOp, "dt", dt, {B, L, H}, "(B, L, H)");
  check_shape(kOp, "A", A, {H}, "(H)");
  check_rank(kOp, "Bm", Bm, 4, "(B, L, G, N)");
  const int64_t G = Bm.size(2), N = Bm.size(3);
  check_shape(kOp, "Bm", Bm, {B, L, G, N}, "(B, L, G, N)");
  SSMT_CHECK(G > 0 && H % G == 0, kOp, ": Bm ", Bm.shape().str(), ": the group count G = ", G,
             " must divide the number of heads H = ", H);
  check_shape(kOp, "Cm", Cm, {B, L, G, N}, "(B, L, G, N)");
  if (D.defined()) check_shape(kOp, "D", D, {H}, "(H)");
  if (dt_bias.defined()) check_shape(kOp, "dt_bias", dt_bias, {H}, "(H)");
  if (h0.defined()) check_shape(kOp, "h0", h0, {B, H, P, N}, "(B, H, P, N)");
  check_operands(kOp, x, "x",
                 {{"dt", dt}, {"A", A}, {"Bm", Bm}, {"Cm", Cm}, {"D", D}, {"dt_bias", dt_bias}, {"h0", h0}});
  check_same_dtype(kOp, x, "x", {{"dt", dt}, {"Bm", Bm}, {"Cm", Cm}});
}

// Sequence tensors with their trailing axes contiguous, the others in the compute dtype.
SsdTensors converted(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                     const Tensor& D, const Tensor& dt_bias, const Tensor& h0) {
  const DType cd = compute_dtype(x.dtype());
  auto param = [&](const Tensor& t) { return t.defined() ? t.to(cd).contiguous() : Tensor(); };
  return {with_contiguous_rows(x, 2), with_contiguous_rows(dt, 1), param(A), with_contiguous_rows(Bm, 2),
          with_contiguous_rows(Cm, 2), param(D), param(dt_bias), param(h0)};
}

SsdParams make_params(const SsdTensors& t, bool dt_softplus, int64_t chunk_size) {
  SsdParams p;
  p.dtype = t.x.dtype();
  p.B = t.x.size(0), p.L = t.x.size(1), p.H = t.x.size(2), p.P = t.x.size(3);
  p.G = t.Bm.size(2), p.N = t.Bm.size(3);
  p.chunk_size = chunk_size;
  p.dt_softplus = dt_softplus;
  p.x = seq_view(t.x), p.dt = seq_view(t.dt), p.Bm = seq_view(t.Bm), p.Cm = seq_view(t.Cm);
  p.A = t.A.data_ptr();
  p.D = t.D.defined() ? t.D.data_ptr() : nullptr;
  p.dt_bias = t.dt_bias.defined() ? t.dt_bias.data_ptr() : nullptr;
  p.h0 = t.h0.defined() ? t.h0.data_ptr() : nullptr;
  return p;
}

}  // namespace

void ssd_fwd_cpu(const SsdParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] { forward_kernel<scalar_t>(p); });
}

void ssd_bwd_cpu(const SsdParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] { backward_kernel<scalar_t>(p); });
}

namespace {

// The backward's params with packed gradients resolved (SsdParams::packed): dx holds the
// gradient of xBC, whose column slices after x's H P columns are dBm and dCm.
SsdParams unpacked(const SsdParams& p) {
  if (!p.packed || !p.dx) return p;
  SsdParams q = p;
  const int64_t es = dtype_size(p.dtype);
  q.dBm = static_cast<char*>(p.dx) + p.H * p.P * es;
  q.dCm = static_cast<char*>(q.dBm) + p.G * p.N * es;
  q.grad_row = p.H * p.P + 2 * p.G * p.N;
  return q;
}

void ssd_bwd_entry(const SsdParams& p) { ssd_bwd_cpu(unpacked(p)); }

#if defined(SSMTRAIN_WITH_CUDA)
// The fused CUDA launchers (ssd_cuda.h) take the Device; the kernel table passes its index.
void ssd_fwd_on_cuda(const SsdParams& p, int device) { ssd_fwd_cuda(p, Device::cuda(device)); }
void ssd_bwd_on_cuda(const SsdParams& p, int device) { ssd_bwd_cuda(unpacked(p), Device::cuda(device)); }

// Whether the fused CUDA kernels take a call on the GPU: bf16 inputs within their size
// limits. Other CUDA calls take the composed path below.
bool fused_on_device(const SsdTensors& in, int64_t chunk_size) {
  return in.x.size(1) > 0 && ssd_cuda_supports(in.x.dtype(), in.x.size(3), in.Bm.size(3), chunk_size);
}
#else
bool fused_on_device(const SsdTensors&, int64_t) { return false; }
#endif

const FusedKernels<SsdParams> kKernels = {ssd_fwd_cpu, ssd_bwd_entry, SSMT_CUDA_KERNEL(ssd_fwd_on_cuda),
                                          SSMT_CUDA_KERNEL(ssd_bwd_on_cuda)};

// The other CUDA calls (f32 and f64 inputs, sizes past the fused kernels' limits): the
// chunked algorithm composed of differentiable tensor ops (batched GEMMs through the
// backend, cumsums, masked exponentials), see ssd_composed.h. Sequence tensors are cast
// (differentiably) to the compute dtype first, so bf16 inputs are computed in fp32 like on
// the CPU, and y is rounded back to x's dtype once. The tape differentiates it.
SsdResult ssd_on_device(const SsdTensors& in, bool dt_softplus, int64_t chunk_size, const Tensor& seq_idx) {
  const DType dtype = in.x.dtype(), cd = compute_dtype(dtype);
  if (in.x.size(1) == 0) {  // an empty sequence: no chunks; the state passes through
    const Device dev = in.x.device();
    return {Tensor::zeros(in.x.shape(), dtype, dev),
            in.h0.defined() ? in.h0 : Tensor::zeros({in.x.size(0), in.x.size(2), in.x.size(3), in.Bm.size(3)}, cd, dev)};
  }
  auto [y, h_last] = ssd_chunked_composed(in.x.to(cd), in.dt.to(cd), in.A, in.Bm.to(cd), in.Cm.to(cd), in.D,
                                          in.dt_bias, dt_softplus, chunk_size, in.h0, seq_idx);
  return {y.to(dtype), h_last};
}

}  // namespace

namespace {

// The tape node of both entry points. xBC: the packed input when the call came through
// ssd_chunked_packed (x, Bm, Cm are then its slices and get no gradients of their own), or
// undefined.
SsdResult ssd_node(const SsdTensors& in, const Tensor& xBC, bool dt_softplus, int64_t chunk_size,
                   const Tensor& seq_idx) {
  using P = SsdParams;
  FusedOp<P> op(kOp, kKernels, in.x.device());
  op.p = make_params(in, dt_softplus, chunk_size);
  if (seq_idx.defined()) {
    op.p.seq_idx = static_cast<const int32_t*>(seq_idx.data_ptr());
    op.save(seq_idx);
  }
  if (xBC.defined()) {
    op.p.packed = true;
    op.input(xBC, &P::dx);
  } else {
    op.input(in.x, &P::dx);
  }
  op.input(in.dt, &P::ddt);
  op.input(in.A, &P::dA);
  if (!xBC.defined()) {
    op.input(in.Bm, &P::dBm);
    op.input(in.Cm, &P::dCm);
  }
  op.input(in.D, &P::dD);
  op.input(in.dt_bias, &P::ddt_bias);
  op.input(in.h0, &P::dh0);
  Tensor y = op.output({op.p.B, op.p.L, op.p.H, op.p.P}, op.p.dtype, &P::y);
  Tensor h_last = op.output({op.p.B, op.p.H, op.p.P, op.p.N}, compute_dtype(op.p.dtype), &P::h_last);
  op.forward();
  // Nothing but the inputs is kept: the backward recomputes the chunk states.
  op.record({y, h_last}, [](P& q, const std::vector<Tensor>& grads) {
    Tensor dy = with_contiguous_rows(grads[0], 2), dh_last = grads[1].contiguous();
    q.dy = seq_view(dy);
    q.dh_last = dh_last.data_ptr();
    return std::vector<Tensor>{dy, dh_last};
  });
  return {y, h_last};
}

}  // namespace

SsdResult ssd_chunked(const Tensor& x_in, const Tensor& dt_in, const Tensor& A_in, const Tensor& Bm_in,
                      const Tensor& Cm_in, const Tensor& D_in, const Tensor& dt_bias_in, bool dt_softplus,
                      int64_t chunk_size, const Tensor& h0_in, const Tensor& seq_idx_in) {
  check_args(x_in, dt_in, A_in, Bm_in, Cm_in, D_in, dt_bias_in, h0_in, chunk_size);
  const Tensor seq_idx = checked_seq_idx(kOp, seq_idx_in, x_in.size(0), x_in.size(1), x_in.device());
  if (x_in.device().is_cuda() && !kKernels.forward_cuda) throw_cuda_not_built(kOp, x_in.device());
  const SsdTensors in = converted(x_in, dt_in, A_in, Bm_in, Cm_in, D_in, dt_bias_in, h0_in);
  if (in.x.device().is_cuda() && !fused_on_device(in, chunk_size))
    return ssd_on_device(in, dt_softplus, chunk_size, seq_idx);
  return ssd_node(in, Tensor(), dt_softplus, chunk_size, seq_idx);
}

SsdResult ssd_chunked_packed(const Tensor& xBC_in, int64_t heads, int64_t groups, int64_t d_state, const Tensor& dt,
                             const Tensor& A, const Tensor& D, const Tensor& dt_bias, bool dt_softplus,
                             int64_t chunk_size, const Tensor& h0, const Tensor& seq_idx_in) {
  check_present(kOp, "xBC", xBC_in);
  check_rank(kOp, "xBC", xBC_in, 3, "(B, L, H P + 2 G N)");
  const int64_t Bsz = xBC_in.size(0), L = xBC_in.size(1), W = xBC_in.size(2);
  SSMT_CHECK(heads > 0 && groups > 0 && d_state > 0 && W > 2 * groups * d_state &&
                 (W - 2 * groups * d_state) % heads == 0,
             kOp, ": xBC ", xBC_in.shape().str(), ": the last axis must be H P + 2 G N with H = ", heads,
             " heads, G = ", groups, " groups and N = ", d_state, " (d_state)");
  const int64_t P = (W - 2 * groups * d_state) / heads, GN = groups * d_state;
  // with_contiguous_rows keeps xBC itself (the tape input) when its rows are contiguous.
  const Tensor xBC = with_contiguous_rows(xBC_in, 1);
  auto parts = xBC.detach().split({heads * P, GN, GN}, -1);
  const Tensor x = parts[0].view({Bsz, L, heads, P});
  const Tensor Bm = parts[1].view({Bsz, L, groups, d_state}), Cm = parts[2].view({Bsz, L, groups, d_state});
  check_args(x, dt, A, Bm, Cm, D, dt_bias, h0, chunk_size);
  const Tensor seq_idx = checked_seq_idx(kOp, seq_idx_in, Bsz, L, xBC.device());
  if (xBC.device().is_cuda() && !kKernels.forward_cuda) throw_cuda_not_built(kOp, xBC.device());
  const SsdTensors in = converted(x, dt, A, Bm, Cm, D, dt_bias, h0);
  if (in.x.device().is_cuda() && !fused_on_device(in, chunk_size)) {
    // The composed path differentiates through the slices of xBC itself.
    auto s = xBC.split({heads * P, GN, GN}, -1);
    return ssd_chunked(s[0].view({Bsz, L, heads, P}), dt, A, s[1].view({Bsz, L, groups, d_state}),
                       s[2].view({Bsz, L, groups, d_state}), D, dt_bias, dt_softplus, chunk_size, h0, seq_idx);
  }
  return ssd_node(in, xBC, dt_softplus, chunk_size, seq_idx);
}

}  // namespace ssmtrain
