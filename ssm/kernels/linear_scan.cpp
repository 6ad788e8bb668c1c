// Chunked parallel scan of h_t = a_t h_{t-1} + b_t on the CPU, its tape op, and the dispatch
// to the CUDA kernels (linear_scan_cuda.cu) for CUDA tensors.
#include "ssm/kernels/linear_scan.h"

#include <algorithm>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"
#include "core/fused_op.h"

namespace ssmtrain {

using namespace ssm_detail;

namespace {

constexpr const char* kOp = "linear_scan";

// state_s = coef(b, t, c) * state_{s-1} + input(b, t, c) along scan order s, where t = s, or
// t = L - 1 - s when `reverse`; state_{-1} = init (B, width) or 0. Writes every state to
// out (B, L, width) at its time index t. Three passes: independent chunk scans, a
// sequential pass over the chunk carries, and a parallel fix-up of each chunk.
template <typename Acc, typename Coef, typename Input>
void chunked_scan(int64_t B, int64_t L, int64_t width, int64_t chunk_len, bool reverse, Coef coef, Input input,
                  const Acc* init, Acc* out) {
  if (B == 0 || L == 0 || width == 0) return;
  const int64_t nchunks = (L + chunk_len - 1) / chunk_len;
  auto time_of = [&](int64_t s) { return reverse ? L - 1 - s : s; };
  // Per (b, chunk): the chunk's end state from a zero start and its decay product; then
  // the state entering the chunk.
  std::vector<Acc> end_state(static_cast<size_t>(B * nchunks * width));
  std::vector<Acc> decay(static_cast<size_t>(B * nchunks * width));
  std::vector<Acc> carry(static_cast<size_t>(B * nchunks * width));

#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < nchunks; ++k) {
      Acc* state = &end_state[(b * nchunks + k) * width];
      Acc* prod = &decay[(b * nchunks + k) * width];
      for (int64_t c = 0; c < width; ++c) {
        state[c] = (k == 0 && init) ? init[b * width + c] : Acc(0);
        prod[c] = 1;
      }
      for (int64_t s = k * chunk_len; s < std::min(L, (k + 1) * chunk_len); ++s) {
        const int64_t t = time_of(s);
        Acc* row = out + (b * L + t) * width;
        for (int64_t c = 0; c < width; ++c) {
          const Acc a = coef(b, t, c);
          state[c] = a * state[c] + input(b, t, c);
          prod[c] *= a;
          row[c] = state[c];
        }
      }
    }
  }

#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    Acc* first = &carry[b * nchunks * width];
    std::fill(first, first + width, Acc(0));  // the initial state is already inside chunk 0
    for (int64_t k = 1; k < nchunks; ++k) {
      const int64_t prev = (b * nchunks + k - 1) * width, cur = (b * nchunks + k) * width;
      for (int64_t c = 0; c < width; ++c)
        carry[cur + c] = decay[prev + c] * carry[prev + c] + end_state[prev + c];
    }
  }

#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 1; k < nchunks; ++k) {
      const Acc* entering = &carry[(b * nchunks + k) * width];
      std::vector<Acc> prefix(entering, entering + width);  // prefix decay * entering state
      for (int64_t s = k * chunk_len; s < std::min(L, (k + 1) * chunk_len); ++s) {
        const int64_t t = time_of(s);
        Acc* row = out + (b * L + t) * width;
        for (int64_t c = 0; c < width; ++c) {
          prefix[c] *= coef(b, t, c);
          row[c] += prefix[c];
        }
      }
    }
  }
}

template <typename T> struct SeqReader {
  const T* data;
  SeqView v;
  acc_t<T> operator()(int64_t b, int64_t t, int64_t c) const {
    return static_cast<acc_t<T>>(data[b * v.batch_stride + t * v.seq_stride + c]);
  }
};

template <typename T>
void forward_kernel(const LinearScanParams& p) {
  using Acc = acc_t<T>;
  SeqReader<T> a{static_cast<const T*>(p.a.data), p.a}, b{static_cast<const T*>(p.b.data), p.b};
  const size_t n = static_cast<size_t>(p.B * p.L * p.C), nb = static_cast<size_t>(p.B * p.C);
  // Scan in the compute type; bf16 results are rounded once at the end.
  std::vector<Acc> h(n), h0(p.h0 ? nb : 0);
  for (size_t i = 0; i < h0.size(); ++i) h0[i] = static_cast<Acc>(static_cast<const T*>(p.h0)[i]);
  chunked_scan<Acc>(p.B, p.L, p.C, p.chunk_len, false, a, b, p.h0 ? h0.data() : nullptr, h.data());
  T* out = static_cast<T*>(p.h);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) out[i] = static_cast<T>(h[i]);
}

template <typename T>
void backward_kernel(const LinearScanParams& p) {
  using Acc = acc_t<T>;
  const int64_t B = p.B, L = p.L, C = p.C;
  SeqReader<T> a{static_cast<const T*>(p.a.data), p.a}, dh{static_cast<const T*>(p.dh.data), p.dh};
  auto shifted_a = [&](int64_t b, int64_t t, int64_t c) { return t + 1 < L ? a(b, t + 1, c) : Acc(0); };
  std::vector<Acc> lam(static_cast<size_t>(B * L * C));
  chunked_scan<Acc>(B, L, C, p.chunk_len, true, shifted_a, dh, nullptr, lam.data());

  const T* h = static_cast<const T*>(p.h);
  const T* h0 = static_cast<const T*>(p.h0);
  T* da = static_cast<T*>(p.da);
  T* db = static_cast<T*>(p.db);
  T* dh0 = static_cast<T*>(p.dh0);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < L; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t i = (b * L + t) * C + c;
        const Acc h_prev = t > 0 ? static_cast<Acc>(h[i - C]) : (h0 ? static_cast<Acc>(h0[b * C + c]) : Acc(0));
        if (da) da[i] = static_cast<T>(lam[i] * h_prev);
        if (db) db[i] = static_cast<T>(lam[i]);
      }
    }
  }
  if (dh0) {  // an empty sequence does not depend on h0: dh0 = 0
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c)
        dh0[b * C + c] = static_cast<T>(L > 0 ? a(b, 0, c) * lam[b * L * C + c] : static_cast<Acc>(0));
  }
}

}  // namespace

int64_t linear_scan_default_chunk(int64_t L) {
  const int64_t nchunks = std::clamp<int64_t>(L / 256, 1, 64);
  return std::max<int64_t>((L + nchunks - 1) / nchunks, 1);
}

void linear_scan_fwd_cpu(const LinearScanParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] { forward_kernel<scalar_t>(p); });
}

void linear_scan_bwd_cpu(const LinearScanParams& p) {
  SSMT_DISPATCH_FLOAT(p.dtype, kOp, [&] { backward_kernel<scalar_t>(p); });
}

namespace {
const FusedKernels<LinearScanParams> kKernels = {linear_scan_fwd_cpu, linear_scan_bwd_cpu,
                                                 SSMT_CUDA_KERNEL(linear_scan_fwd_cuda),
                                                 SSMT_CUDA_KERNEL(linear_scan_bwd_cuda)};
}  // namespace

Tensor linear_scan(const Tensor& a_in, const Tensor& b_in, const Tensor& h0_in, int64_t chunk_len) {
  check_present(kOp, "a", a_in);
  check_present(kOp, "b", b_in);
  check_floating_arg(kOp, "a", a_in);
  check_rank(kOp, "a", a_in, 3, "(B, L, C)");
  const int64_t B = a_in.size(0), L = a_in.size(1), C = a_in.size(2);
  check_shape(kOp, "b", b_in, {B, L, C}, "(B, L, C)");
  check_device(kOp, "b", b_in, a_in.device(), "a");
  check_dtype(kOp, "b", b_in, a_in.dtype(), "a");
  if (h0_in.defined()) {
    check_shape(kOp, "h0", h0_in, {B, C}, "(B, C)");
    check_device(kOp, "h0", h0_in, a_in.device(), "a");
    check_dtype(kOp, "h0", h0_in, a_in.dtype(), "a");
  }

  Tensor a = with_contiguous_rows(a_in, 1), b = with_contiguous_rows(b_in, 1);
  Tensor h0 = h0_in.defined() ? h0_in.contiguous() : Tensor();
  FusedOp<LinearScanParams> op(kOp, kKernels, a.device());
  LinearScanParams& p = op.p;
  p.dtype = a.dtype();
  p.B = B, p.L = L, p.C = C;
  p.chunk_len = chunk_len > 0 ? chunk_len : linear_scan_default_chunk(L);
  p.a = seq_view(a), p.b = seq_view(b);
  p.h0 = h0.defined() ? h0.data_ptr() : nullptr;
  op.input(a, &LinearScanParams::da);
  op.input(b, &LinearScanParams::db, /*saved=*/false);  // the backward does not read b
  op.input(h0, &LinearScanParams::dh0);
  Tensor h = op.output({B, L, C}, a.dtype(), &LinearScanParams::h, /*saved=*/true);
  op.forward();
  op.record({h}, [](LinearScanParams& q, const std::vector<Tensor>& grads) {
    Tensor dh = with_contiguous_rows(grads[0], 1);
    q.b = SeqView{};
    q.dh = seq_view(dh);
    return std::vector<Tensor>{dh};
  });
  return h;
}

}  // namespace ssmtrain
