// Causal attention and rotary embeddings: argument checks, the tape nodes, and the CPU
// kernels (see attention.h). The CPU kernels are the reference: plain loops in the
// accumulation dtype, OpenMP over (batch, head) pairs, each output element written by one
// thread in a fixed order, so results do not depend on the thread count.
#include "ssm/kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/fused_op.h"
#include "core/ops.h"

namespace ssmtrain {

using namespace ssm_detail;

namespace {

constexpr const char* kAttn = "causal_attention";
constexpr const char* kRope = "rotary_embedding";

// Element (b, t, h, 0) of a (B, L, heads, D) operand.
template <typename T>
T* row_at(const SeqView& s, int64_t b, int64_t t, int64_t h, int64_t D) {
  return static_cast<T*>(s.data) + b * s.batch_stride + t * s.seq_stride + h * D;
}

template <typename T, typename A>
A dot(const T* x, const T* y, int64_t n) {
  A s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<A>(x[i]) * static_cast<A>(y[i]);
  return s;
}

// The first key query i sees: 0, or with packed documents the first position of its own
// document (seq_idx is non-decreasing, so the visible keys are one contiguous range).
int64_t first_key(const AttentionParams& p, int64_t b, int64_t i) {
  if (!p.seq_idx) return 0;
  const int32_t* doc = p.seq_idx + b * p.Lk;
  const int64_t pos = i + p.offset();
  int64_t j = pos;
  while (j > 0 && doc[j - 1] == doc[pos]) --j;
  return j;
}

// Per (b, h, i): scores of the visible keys, their max and sum of exponentials, the output.
template <typename T>
void attention_forward(const AttentionParams& p) {
  using A = acc_t<T>;
  const int64_t B = p.B, H = p.H, Lq = p.Lq, D = p.D, group = p.H / p.Hkv, off = p.offset();
  const A scale = static_cast<A>(p.scale);
  A* lse = static_cast<A*>(p.lse);
#pragma omp parallel
  {
    std::vector<A> s(static_cast<size_t>(p.Lk)), acc(static_cast<size_t>(D));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t kh = h / group;
        for (int64_t i = 0; i < Lq; ++i) {
          const T* qi = row_at<T>(p.q, b, i, h, D);
          const int64_t n = std::min(p.Lk, i + off + 1);  // keys j0 .. i + off
          const int64_t j0 = first_key(p, b, i);
          A m = -std::numeric_limits<A>::infinity();
          for (int64_t j = j0; j < n; ++j) {
            s[j] = scale * dot<T, A>(qi, row_at<T>(p.k, b, j, kh, D), D);
            m = std::max(m, s[j]);
          }
          A l = 0;
          std::fill(acc.begin(), acc.end(), A(0));
          for (int64_t j = j0; j < n; ++j) {
            const A e = std::exp(s[j] - m);
            l += e;
            const T* vj = row_at<T>(p.v, b, j, kh, D);
            for (int64_t d = 0; d < D; ++d) acc[d] += e * static_cast<A>(vj[d]);
          }
          T* oi = row_at<T>(SeqView{p.o, Lq * H * D, H * D}, b, i, h, D);
          for (int64_t d = 0; d < D; ++d) oi[d] = T(acc[d] / l);
          lse[(b * H + h) * Lq + i] = m + std::log(l);
        }
      }
  }
}

// With P = exp(S - lse) recomputed per row and Dsum_i = <dout_i, o_i>:
//   dS = P o (dout V^T - Dsum),  dq = scale dS K,  dk = scale dS^T q,  dv = P^T dout,
// dk and dv summed over the query heads of their kv head. One task per (b, kv head): its
// dk and dv rows are its own, accumulated in order, then rounded once.
template <typename T>
void attention_backward(const AttentionParams& p) {
  using A = acc_t<T>;
  const int64_t B = p.B, H = p.H, Hkv = p.Hkv, Lq = p.Lq, Lk = p.Lk, D = p.D, group = H / Hkv, off = p.offset();
  const A scale = static_cast<A>(p.scale);
  const A* lse = static_cast<const A*>(p.lse);
  const SeqView dq{p.dq, Lq * H * D, H * D}, dk{p.dk, Lk * Hkv * D, Hkv * D}, dv{p.dv, Lk * Hkv * D, Hkv * D};
  const SeqView o{p.o, Lq * H * D, H * D}, dout{const_cast<void*>(p.dout), Lq * H * D, H * D};
#pragma omp parallel
  {
    std::vector<A> dk_acc(static_cast<size_t>(Lk * D)), dv_acc(static_cast<size_t>(Lk * D)), dq_acc(D),
        ds(static_cast<size_t>(Lk));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t kh = 0; kh < Hkv; ++kh) {
        std::fill(dk_acc.begin(), dk_acc.end(), A(0));
        std::fill(dv_acc.begin(), dv_acc.end(), A(0));
        for (int64_t h = kh * group; h < (kh + 1) * group; ++h)
          for (int64_t i = 0; i < Lq; ++i) {
            const T* qi = row_at<T>(p.q, b, i, h, D);
            const T* gi = row_at<T>(dout, b, i, h, D);
            const A dsum = dot<T, A>(gi, row_at<T>(o, b, i, h, D), D);
            const A l = lse[(b * H + h) * Lq + i];
            const int64_t n = std::min(Lk, i + off + 1), j0 = first_key(p, b, i);
            for (int64_t j = j0; j < n; ++j) {
              const T* kj = row_at<T>(p.k, b, j, kh, D);
              const T* vj = row_at<T>(p.v, b, j, kh, D);
              const A pj = std::exp(scale * dot<T, A>(qi, kj, D) - l);
              ds[j] = pj * (dot<T, A>(gi, vj, D) - dsum);
              A* dvj = dv_acc.data() + j * D;
              A* dkj = dk_acc.data() + j * D;
              for (int64_t d = 0; d < D; ++d) {
                dvj[d] += pj * static_cast<A>(gi[d]);
                dkj[d] += scale * ds[j] * static_cast<A>(qi[d]);
              }
            }
            if (p.dq) {
              std::fill(dq_acc.begin(), dq_acc.end(), A(0));
              for (int64_t j = j0; j < n; ++j) {
                const T* kj = row_at<T>(p.k, b, j, kh, D);
                for (int64_t d = 0; d < D; ++d) dq_acc[d] += ds[j] * static_cast<A>(kj[d]);
              }
              T* dqi = row_at<T>(dq, b, i, h, D);
              for (int64_t d = 0; d < D; ++d) dqi[d] = T(scale * dq_acc[d]);
            }
          }
        for (int64_t j = 0; j < Lk; ++j)
          for (int64_t d = 0; d < D; ++d) {
            if (p.dk) row_at<T>(dk, b, j, kh, D)[d] = T(dk_acc[j * D + d]);
            if (p.dv) row_at<T>(dv, b, j, kh, D)[d] = T(dv_acc[j * D + d]);
          }
      }
  }
}

// cos and sin of the angles of position `pos`: (offset + t) * base^(-2i/D), i < D/2, in double.
void rotary_angles(int64_t pos, int64_t D, double base, std::vector<double>& c, std::vector<double>& s) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double a = static_cast<double>(pos) * std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(D));
    c[i] = std::cos(a), s[i] = std::sin(a);
  }
}

// forward: (y1, y2) = (x1 c - x2 s, x2 c + x1 s); backward (the transpose rotation):
// (dx1, dx2) = (dy1 c + dy2 s, dy2 c - dy1 s).
template <typename T, bool kBackward>
void rotary_apply(const RotaryParams& p) {
  using A = acc_t<T>;
  const int64_t D = p.D, half = D / 2, H = p.H;
#pragma omp parallel
  {
    std::vector<double> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t t = 0; t < p.L; ++t) {
        rotary_angles(p.offset + t, D, p.base, c, s);
        for (int64_t h = 0; h < H; ++h) {
          const int64_t row = ((b * p.L + t) * H + h) * D;
          const T* in = kBackward ? static_cast<const T*>(p.dy) + row : row_at<T>(p.x, b, t, h, D);
          T* out = static_cast<T*>(kBackward ? p.dx : p.y) + row;
          for (int64_t i = 0; i < half; ++i) {
            const A x1 = static_cast<A>(in[i]), x2 = static_cast<A>(in[i + half]);
            const A ci = static_cast<A>(c[i]), si = kBackward ? -static_cast<A>(s[i]) : static_cast<A>(s[i]);
            out[i] = T(x1 * ci - x2 * si);
            out[i + half] = T(x2 * ci + x1 * si);
          }
        }
      }
  }
}

}  // namespace

void attention_fwd_cpu(const AttentionParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kAttn, [&] { attention_forward<scalar_t>(p); });
}
void attention_bwd_cpu(const AttentionParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kAttn, [&] { attention_backward<scalar_t>(p); });
}
void rotary_fwd_cpu(const RotaryParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kRope, [&] { rotary_apply<scalar_t, false>(p); });
}
void rotary_bwd_cpu(const RotaryParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kRope, [&] { rotary_apply<scalar_t, true>(p); });
}

namespace {

const FusedKernels<AttentionParams> kAttentionKernels = {
    attention_fwd_cpu, attention_bwd_cpu, SSMT_CUDA_KERNEL(attention_fwd_cuda), SSMT_CUDA_KERNEL(attention_bwd_cuda)};
const FusedKernels<RotaryParams> kRotaryKernels = {rotary_fwd_cpu, rotary_bwd_cpu, SSMT_CUDA_KERNEL(rotary_fwd_cuda),
                                                   SSMT_CUDA_KERNEL(rotary_bwd_cuda)};

// The SeqView of a (B, L, heads, D) tensor with contiguous trailing (heads, D) block; the
// stride of an axis of size 1 is never used and is written as 0, so that the CUDA kernels'
// alignment checks see only the strides that matter.
SeqView heads_view(const Tensor& t) {
  SeqView s = seq_view(t);
  if (t.size(0) <= 1) s.batch_stride = 0;
  if (t.size(1) <= 1) s.seq_stride = 0;
  return s;
}

}  // namespace

AttentionResult causal_attention_with_lse(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, double scale,
                                          const Tensor& seq_idx_in) {
  using P = AttentionParams;
  check_present(kAttn, "q", q_in);
  check_present(kAttn, "k", k_in);
  check_present(kAttn, "v", v_in);
  check_floating_arg(kAttn, "q", q_in);
  check_rank(kAttn, "q", q_in, 4, "(B, Lq, H, D)");
  check_rank(kAttn, "k", k_in, 4, "(B, Lk, Hkv, D)");
  check_operands(kAttn, q_in, "q", {{"k", k_in}, {"v", v_in}});
  check_same_dtype(kAttn, q_in, "q", {{"k", k_in}, {"v", v_in}});
  const int64_t B = q_in.size(0), Lq = q_in.size(1), H = q_in.size(2), D = q_in.size(3);
  const int64_t Lk = k_in.size(1), Hkv = k_in.size(2);
  SSMT_CHECK(k_in.size(0) == B && k_in.size(3) == D, kAttn, ": k ", k_in.describe(),
             ": expected (B, Lk, Hkv, D) with B = ", B, " and D = ", D, " as q ", q_in.describe());
  check_shape(kAttn, "v", v_in, k_in.shape(), "(B, Lk, Hkv, D) like k");
  SSMT_CHECK(Hkv >= 1 && H % Hkv == 0, kAttn, ": the ", Hkv, " key/value heads of k ", k_in.describe(),
             " must divide the ", H, " query heads of q ", q_in.describe());
  SSMT_CHECK(Lq <= Lk, kAttn, ": q ", q_in.describe(), " has more positions (", Lq, ") than k ", k_in.describe(), " (",
             Lk, "); queries are the last Lq of the Lk positions");
  SSMT_CHECK(D >= 1, kAttn, ": head dimension of q ", q_in.describe(), " must be positive");
  SSMT_CHECK(!seq_idx_in.defined() || Lq == Lk, kAttn,
             ": packed documents (seq_idx) need as many queries as keys, got ", Lq, " and ", Lk);
  const Tensor seq_idx = checked_seq_idx(kAttn, seq_idx_in, B, Lk, q_in.device(), "q");
  FusedOp<P> op(kAttn, kAttentionKernels, q_in.device());
  const Tensor q = with_contiguous_rows(q_in, 2), k = with_contiguous_rows(k_in, 2), v = with_contiguous_rows(v_in, 2);
  const DType cd = compute_dtype(q.dtype());
  P& p = op.p;
  p.dtype = q.dtype();
  p.B = B, p.Lq = Lq, p.Lk = Lk, p.H = H, p.Hkv = Hkv, p.D = D, p.scale = scale;
  p.q = heads_view(q), p.k = heads_view(k), p.v = heads_view(v);
  p.seq_idx = seq_idx.defined() ? seq_idx.data<int32_t>() : nullptr;
  op.save(seq_idx);  // read by the backward
  op.input(q, &P::dq);
  op.input(k, &P::dk);
  op.input(v, &P::dv);
  Tensor o = op.output({B, Lq, H, D}, q.dtype(), &P::o, /*saved=*/true);
  Tensor lse = op.output({B, H, Lq}, cd, &P::lse, /*saved=*/true);
  op.forward();
  op.record({o}, [](P& x, const std::vector<Tensor>& grads) {
    Tensor g = grads[0].contiguous();
    x.dout = g.data_ptr();
    return std::vector<Tensor>{g};
  });
  return {o, lse};
}

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, const Tensor& seq_idx) {
  return causal_attention_with_lse(q, k, v, scale, seq_idx).o;
}

Tensor rotary_embedding(const Tensor& x_in, int64_t offset, double base) {
  using P = RotaryParams;
  check_present(kRope, "x", x_in);
  check_floating_arg(kRope, "x", x_in);
  check_rank(kRope, "x", x_in, 4, "(B, L, H, D)");
  SSMT_CHECK(x_in.size(3) % 2 == 0, kRope, ": x ", x_in.describe(), ": the head dimension must be even");
  SSMT_CHECK(offset >= 0, kRope, ": the position offset must be non-negative, got ", offset);
  SSMT_CHECK(base > 0, kRope, ": the base must be positive, got ", base);
  FusedOp<P> op(kRope, kRotaryKernels, x_in.device());
  const Tensor x = with_contiguous_rows(x_in, 2);
  P& p = op.p;
  p.dtype = x.dtype();
  p.B = x.size(0), p.L = x.size(1), p.H = x.size(2), p.D = x.size(3), p.offset = offset, p.base = base;
  p.x = heads_view(x);
  op.input(x, &P::dx, /*saved=*/false);  // linear in x: the backward reads only dy
  Tensor y = op.output(x.shape(), x.dtype(), &P::y);
  op.forward();
  op.record({y}, [](P& q, const std::vector<Tensor>& grads) {
    Tensor g = grads[0].contiguous();
    q.dy = g.data_ptr();
    return std::vector<Tensor>{g};
  });
  return y;
}

}  // namespace ssmtrain
