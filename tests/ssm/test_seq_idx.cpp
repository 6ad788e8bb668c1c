// Packed documents (seq_idx, SPECS section 12) in the selective scan and the causal conv1d:
// against naive f64 loops that restart at every document; a packed row against its documents
// run one by one (outputs, final states and gradients); finite-difference gradients of every
// input; f32 and bf16 against f64; chaining through the final states; argument errors; and
// CUDA against the CPU (those cases skip visibly without a GPU).
//
// The document layouts: several documents per row, one-step documents (at t = 0, in the
// middle, at t = L - 1, several in a row), a boundary at t = 1 and at t = L - 1, rows with
// different boundaries, a row of a single document, and indices that jump by more than one
// and do not start at 0 (the kernels compare neighbours for equality).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "cuda_compare.h"
#include "gradcheck.h"
#include "ssm/kernels/causal_conv1d.h"
#include "ssm/kernels/selective_scan.h"
#include "ssm_reference.h"
#include "user_error.h"

namespace ssmtrain {
using testing::contains;
using testing::user_error_of;
namespace {

// The gradients of `leaves` (copies), which are then cleared for the next backward.
std::vector<Tensor> take_grads(std::vector<Tensor>& leaves) {
  std::vector<Tensor> grads;
  for (Tensor& t : leaves) {
    grads.push_back(t.grad().clone());
    t.zero_grad();
  }
  return grads;
}

double max_abs(const Tensor& t);  // below

// The f64 twins of low-precision leaves (the same rounded values); both sets require grad.
std::vector<Tensor> f64_twins(std::vector<Tensor>& low) {
  std::vector<Tensor> high;
  for (Tensor& t : low) {
    high.push_back(t.to(DType::f64).requires_grad_());
    t.requires_grad_();
  }
  return high;
}

// Each low leaf's gradient against its f64 twin's: `tol` relative, and `tol` of the
// reference's largest element absolute.
void check_grads_against_f64(const std::vector<Tensor>& low, const std::vector<Tensor>& high, double tol,
                             const std::vector<const char*>& names) {
  for (size_t i = 0; i < low.size(); ++i) {
    REQUIRE(low[i].grad().defined());
    const Tensor ref = high[i].grad();
    check_close(low[i].grad(), ref, tol, tol * max_abs(ref), names[i]);
  }
}


// (B, L) i32 document indices: row b starts at first[b] and moves on at every position of
// starts[b] (by 1 + t % 3: any increase is a new document).
Tensor doc_index(int64_t L, const std::vector<std::vector<int64_t>>& starts, const std::vector<int32_t>& first) {
  std::vector<int32_t> v;
  for (size_t b = 0; b < starts.size(); ++b) {
    int32_t doc = first[b];
    for (int64_t t = 0; t < L; ++t) {
      if (std::find(starts[b].begin(), starts[b].end(), t) != starts[b].end()) doc += static_cast<int32_t>(1 + t % 3);
      v.push_back(doc);
    }
  }
  return Tensor::from_vector(v, {static_cast<int64_t>(starts.size()), L});
}

// The standard layout for L = 37, four rows. Row 0: documents [0, 1) (one step at t = 0),
// [1, 8), [8, 13), [13, 36), [36, 37) (one step at t = L - 1). Row 1: [0, 5), [5, 6), [6, 20),
// [20, 37). Row 2: [0, 2), [2, 3), [3, 4) (two one-step documents in a row), [4, 30),
// [30, 37). Row 3: one document.
constexpr int64_t kL = 37;
Tensor packed_rows() { return doc_index(kL, {{1, 8, 13, 36}, {5, 6, 20}, {2, 3, 4, 30}, {}}, {0, 3, 11, 5}); }

// Random documents for the CUDA cases: a new one at each step with probability 1 / mean_len,
// and at every position of forced[b].
Tensor random_docs(int64_t B, int64_t L, double mean_len, const std::vector<std::vector<int64_t>>& forced,
                   Generator& gen) {
  std::vector<std::vector<int64_t>> starts(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 1; t < L; ++t)
      if (gen.uniform() < 1.0 / mean_len) starts[b].push_back(t);
    if (b < static_cast<int64_t>(forced.size()))
      for (int64_t t : forced[b])
        if (t > 0 && t < L) starts[b].push_back(t);
  }
  return doc_index(L, starts, std::vector<int32_t>(B, 2));
}

// The documents of row b as (start, length).
std::vector<std::pair<int64_t, int64_t>> documents_of(const Tensor& seq, int64_t b) {
  const int64_t L = seq.size(1);
  const std::vector<int32_t> v = seq.to_vector<int32_t>();
  std::vector<std::pair<int64_t, int64_t>> docs;
  int64_t start = 0;
  for (int64_t t = 1; t <= L; ++t)
    if (t == L || v[b * L + t] != v[b * L + t - 1]) docs.emplace_back(start, t - start), start = t;
  return docs;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector<double>()) m = std::max(m, std::abs(v));
  return m;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> u = a.to_vector<double>(), v = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < u.size(); ++i) m = std::max(m, std::abs(u[i] - v[i]));
  return m;
}

// Sequence tensors narrowed to row b, steps [start, start + len) (views: gradients reach the
// leaves).
Tensor piece(const Tensor& t, int64_t b, int64_t start, int64_t len) { return t.narrow(0, b, 1).narrow(1, start, len); }

// ---- selective scan ----

struct ScanInputs {
  Tensor u, delta, A, Bm, Cm, Dskip, z, delta_bias, h0;
  bool softplus = false;
  std::vector<Tensor> all() const { return {u, delta, A, Bm, Cm, Dskip, z, delta_bias, h0}; }
};

// Random inputs (uniform, never a zero pattern); options bit 0: Dskip, 1: z, 2: delta_bias,
// 3: softplus, 4: h0. dt lands in about (0.05, 1), A in (-1.5, -0.2).
ScanInputs make_scan(int64_t B, int64_t L, int64_t D, int64_t N, int64_t G, int options, Generator& gen,
                     DType dtype = DType::f64) {
  const DType pd = dtype == DType::f64 ? DType::f64 : DType::f32;
  ScanInputs in;
  in.softplus = options & 8;
  in.u = random_tensor({B, L, D}, gen, dtype);
  in.delta = in.softplus ? random_tensor({B, L, D}, gen, dtype, Device::cpu(), -1.5, 0.5)
                         : random_tensor({B, L, D}, gen, dtype, Device::cpu(), 0.05, 0.6);
  in.A = random_tensor({D, N}, gen, pd, Device::cpu(), -1.5, -0.2);
  in.Bm = random_tensor({B, L, G, N}, gen, dtype);
  in.Cm = random_tensor({B, L, G, N}, gen, dtype);
  if (options & 1) in.Dskip = random_tensor({D}, gen, pd);
  if (options & 2) in.z = random_tensor({B, L, D}, gen, dtype, Device::cpu(), -2, 2);
  if (options & 4) in.delta_bias = random_tensor({D}, gen, pd, Device::cpu(), -0.3, 0.3);
  if (options & 16) in.h0 = random_tensor({B, D, N}, gen, pd);
  return in;
}
constexpr int kAllScanOptions = 31;

SelectiveScanResult scan(const std::vector<Tensor>& x, bool softplus, const Tensor& seq) {
  return selective_scan(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], softplus, x[8], seq);
}

// out and h_last flattened into one vector, for check_gradients.
Tensor scan_outputs(const std::vector<Tensor>& x, bool softplus, const Tensor& seq) {
  const SelectiveScanResult r = scan(x, softplus, seq);
  return cat({r.out.reshape({-1}), r.h_last.reshape({-1})}, 0);
}

// ---- causal conv ----

struct ConvInputs {
  Tensor x, weight, bias, state;
  std::vector<Tensor> all() const { return {x, weight, bias, state}; }
};

ConvInputs make_conv(int64_t B, int64_t L, int64_t C, int64_t K, bool with_bias, bool with_state, Generator& gen,
                     DType dtype = DType::f64) {
  const DType pd = dtype == DType::f64 ? DType::f64 : DType::f32;
  ConvInputs in;
  in.x = random_tensor({B, L, C}, gen, dtype);
  in.weight = random_tensor({C, K}, gen, pd);
  if (with_bias) in.bias = random_tensor({C}, gen, pd);
  if (with_state && K > 1) in.state = random_tensor({B, C, K - 1}, gen, dtype);
  return in;
}

Tensor conv_outputs(const std::vector<Tensor>& x, bool silu, const Tensor& seq) {
  const CausalConv1dResult r = causal_conv1d(x[0], x[1], x[2], silu, x[3], seq);
  return cat({r.out.reshape({-1}), r.final_state.reshape({-1})}, 0);
}

// The conv with documents as causal_conv1d.h states it, in f64 loops. doc(s) is the document
// of position s (s < 0: position 0's). out[t] = act(bias + sum_k w[k] v(t + k - (K - 1))) over
// the taps with doc(s) == doc(t), v(s) = x[s] or, for s < 0, the initial state (or 0);
// final_state[j] = v(L + j - (K - 1)) when that position is in doc(L - 1), else 0.
struct ConvReference {
  Tensor out, final_state;
};
ConvReference naive_conv_docs(const ConvInputs& in, bool silu, const Tensor& seq) {
  const int64_t B = in.x.size(0), L = in.x.size(1), C = in.x.size(2), K = in.weight.size(1);
  const auto x = in.x.to_vector<double>(), w = in.weight.to_vector<double>();
  const auto bias = in.bias.defined() ? in.bias.to_vector<double>() : std::vector<double>(C, 0.0);
  const auto state = in.state.defined() ? in.state.to_vector<double>() : std::vector<double>(B * C * (K - 1), 0.0);
  const auto docs = seq.to_vector<int32_t>();
  auto doc = [&](int64_t b, int64_t s) { return docs[b * L + std::max<int64_t>(s, 0)]; };
  auto value = [&](int64_t b, int64_t s, int64_t c) {
    return s >= 0 ? x[(b * L + s) * C + c] : state[(b * C + c) * (K - 1) + (K - 1 + s)];
  };
  std::vector<double> out(B * L * C), fin(B * C * (K - 1));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t t = 0; t < L; ++t) {
        double acc = bias[c];
        for (int64_t k = 0; k < K; ++k) {
          const int64_t s = t + k - (K - 1);
          if (doc(b, s) == doc(b, t)) acc += w[c * K + k] * value(b, s, c);
        }
        out[(b * L + t) * C + c] = silu ? acc / (1 + std::exp(-acc)) : acc;
      }
      for (int64_t j = 0; j < K - 1; ++j) {
        const int64_t s = L + j - (K - 1);
        fin[(b * C + c) * (K - 1) + j] = doc(b, s) == doc(b, L - 1) ? value(b, s, c) : 0.0;
      }
    }
  return {Tensor::from_vector(out, {B, L, C}), Tensor::from_vector(fin, {B, C, K - 1})};
}

}  // namespace

// =======================================================================================
// Selective scan on the CPU.

TEST_CASE("selective_scan with seq_idx matches the reference that restarts at every document") {
  Generator gen(601);
  const Tensor seq = packed_rows();
  for (int64_t G : {1, 2}) {
    for (int options = 0; options <= kAllScanOptions; ++options) {
      CAPTURE(G);
      CAPTURE(options);
      const ScanInputs in = make_scan(4, kL, 4, 3, G, options, gen);
      const SelectiveScanResult fused = scan(in.all(), in.softplus, seq);
      const SelectiveScanResult ref = selective_scan_reference(in.u, in.delta, in.A, in.Bm, in.Cm, in.Dskip, in.z,
                                                               in.delta_bias, in.softplus, in.h0, seq);
      check_close(fused.out, ref.out, 1e-11, 1e-12, "out");
      check_close(fused.h_last, ref.h_last, 1e-11, 1e-12, "h_last");
      // The restarts matter: after row 0's first boundary the plain scan differs.
      const SelectiveScanResult plain = scan(in.all(), in.softplus, Tensor());
      CHECK(max_abs_diff(plain.out.narrow(0, 0, 1).narrow(1, 1, kL - 1),
                         fused.out.narrow(0, 0, 1).narrow(1, 1, kL - 1)) > 1e-3);
      // The single-document row 3 is the plain scan.
      check_close(fused.out.narrow(0, 3, 1), plain.out.narrow(0, 3, 1), 1e-14, 1e-15, "one-document row");
    }
  }
}

TEST_CASE("selective_scan with one document per row equals the scan without seq_idx") {
  Generator gen(602);
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    CAPTURE(dtype_name(dtype));
    ScanInputs in = make_scan(2, 70, 5, 4, 1, kAllScanOptions, gen, dtype);
    const Tensor one_doc = doc_index(70, {{}, {}}, {4, 9});
    std::vector<Tensor> a, b;
    for (const Tensor& t : in.all()) {
      a.push_back(t.clone().detach().requires_grad_());
      b.push_back(t.clone().detach().requires_grad_());
    }
    const Tensor seed = random_tensor({2, 70, 5}, gen, DType::f64);
    // backward() consumes the whole tape: one forward and backward at a time.
    const SelectiveScanResult ra = scan(a, true, Tensor());
    backward(add(sum(mul(cast(ra.out, DType::f64), seed)), sum(cast(ra.h_last, DType::f64))));
    const SelectiveScanResult rb = scan(b, true, one_doc);
    backward(add(sum(mul(cast(rb.out, DType::f64), seed)), sum(cast(rb.h_last, DType::f64))));
    check_close(rb.out, ra.out, 1e-14, 1e-15, "out");
    check_close(rb.h_last, ra.h_last, 1e-14, 1e-15, "h_last");
    for (size_t i = 0; i < a.size(); ++i) {
      CAPTURE(i);
      check_close(b[i].grad(), a[i].grad(), 1e-14, 1e-15, "gradient");
    }
  }
}

TEST_CASE("selective_scan with seq_idx restarts across the CPU checkpoint intervals") {
  // L = 150: checkpoints every 64 steps. Row 0 restarts at 63, 64 (a checkpoint start: the
  // state stored there is the end of a document), 65 and 149; row 1 at 1, 100 and 128.
  static_assert(kSelectiveScanCheckpointInterval == 64);
  Generator gen(603);
  const Tensor seq = doc_index(150, {{63, 64, 65, 149}, {1, 100, 128}}, {0, 1});
  ScanInputs in = make_scan(2, 150, 3, 4, 3, kAllScanOptions, gen);
  const SelectiveScanResult fused = scan(in.all(), true, seq);
  const SelectiveScanResult ref =
      selective_scan_reference(in.u, in.delta, in.A, in.Bm, in.Cm, in.Dskip, in.z, in.delta_bias, true, in.h0, seq);
  check_close(fused.out, ref.out, 1e-11, 1e-12, "out");
  check_close(fused.h_last, ref.h_last, 1e-11, 1e-12, "h_last");
  std::vector<Tensor> leaves = in.all();
  for (Tensor& t : leaves) t.requires_grad_();
  check_gradients([&](const std::vector<Tensor>& x) { return scan_outputs(x, true, seq); }, leaves);
}

TEST_CASE("selective_scan of a packed row equals its documents run one by one") {
  // Each document alone (the first of a row from that row's h0, the others from a zero
  // state) gives the packed outputs; the last one's final state is h_last; and the gradients
  // of a loss over the packed batch are those of the same loss summed over the documents.
  Generator gen(604);
  const Tensor seq = packed_rows();
  for (int64_t G : {1, 2}) {
    CAPTURE(G);
    ScanInputs in = make_scan(4, kL, 4, 3, G, kAllScanOptions, gen);
    std::vector<Tensor> leaves = in.all();
    for (Tensor& t : leaves) t.requires_grad_();
    const Tensor w_out = random_tensor({4, kL, 4}, gen, DType::f64), w_last = random_tensor({4, 4, 3}, gen, DType::f64);

    const SelectiveScanResult packed = scan(leaves, true, seq);
    backward(add(sum(mul(packed.out, w_out)), sum(mul(packed.h_last, w_last))));
    const std::vector<Tensor> packed_grads = take_grads(leaves);

    Tensor loss;
    for (int64_t b = 0; b < 4; ++b) {
      const auto docs = documents_of(seq, b);
      for (size_t i = 0; i < docs.size(); ++i) {
        const auto [start, len] = docs[i];
        CAPTURE(b);
        CAPTURE(start);
        const Tensor h0 = i == 0 ? leaves[8].narrow(0, b, 1) : Tensor();
        const SelectiveScanResult one =
            selective_scan(piece(leaves[0], b, start, len), piece(leaves[1], b, start, len), leaves[2],
                           piece(leaves[3], b, start, len), piece(leaves[4], b, start, len), leaves[5],
                           piece(leaves[6], b, start, len), leaves[7], true, h0);
        check_close(one.out, piece(packed.out, b, start, len).detach(), 1e-12, 1e-13, "document out");
        Tensor part = sum(mul(one.out, piece(w_out, b, start, len)));
        if (i + 1 == docs.size()) {
          check_close(one.h_last, packed.h_last.narrow(0, b, 1).detach(), 1e-12, 1e-13, "h_last");
          part = add(part, sum(mul(one.h_last, w_last.narrow(0, b, 1))));
        }
        loss = loss.defined() ? add(loss, part) : part;
      }
    }
    backward(loss);
    const char* names[] = {"du", "ddelta", "dA", "dBm", "dCm", "dDskip", "dz", "ddelta_bias", "dh0"};
    for (size_t i = 0; i < leaves.size(); ++i) check_close(packed_grads[i], leaves[i].grad(), 1e-10, 1e-12, names[i]);
  }
}

TEST_CASE("selective_scan gradients with seq_idx match finite differences") {
  Generator gen(605);
  const Tensor seq = packed_rows();
  SUBCASE("all options, two groups") {
    ScanInputs in = make_scan(4, kL, 4, 3, 2, kAllScanOptions, gen);
    std::vector<Tensor> leaves = in.all();
    for (Tensor& t : leaves) t.requires_grad_();
    check_gradients([&](const std::vector<Tensor>& x) { return scan_outputs(x, true, seq); }, leaves);
  }
  SUBCASE("no options, h0 only") {
    ScanInputs in = make_scan(4, kL, 3, 2, 1, 16, gen);
    std::vector<Tensor> leaves = in.all();
    for (Tensor& t : leaves)
      if (t.defined()) t.requires_grad_();
    check_gradients([&](const std::vector<Tensor>& x) { return scan_outputs(x, false, seq); }, leaves);
  }
}

TEST_CASE("selective_scan with seq_idx in f32 and bf16 agrees with f64") {
  // The same analysis as the plain scan's tests: restarts only shorten the memory of the
  // recurrence, so the f32 rounding bounds stay (outputs 1e-5, gradients 1e-4 of their
  // largest element); bf16 outputs and sequence gradients are rounded to bf16 at the end
  // (2^-9 relative): 8e-3 on outputs, 1.5e-2 of the largest element on gradients.
  Generator gen(606);
  const Tensor seq = packed_rows();
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype_name(dtype));
    const ScanInputs low = make_scan(4, kL, 6, 5, 2, kAllScanOptions, gen, dtype);
    std::vector<Tensor> low_leaves = low.all();
    const std::vector<Tensor> high_leaves = f64_twins(low_leaves);
    const Tensor seed = random_tensor({4, kL, 6}, gen, DType::f64);
    // backward() consumes the whole tape: one forward and backward at a time.
    const SelectiveScanResult rl = scan(low_leaves, true, seq);
    backward(rl.out, seed.to(dtype));
    const SelectiveScanResult rh = scan(high_leaves, true, seq);
    backward(rh.out, seed);
    const double out_tol = dtype == DType::f32 ? 1e-5 : 8e-3;
    check_close(rl.out, rh.out, out_tol, out_tol, "out");
    check_close(rl.h_last, rh.h_last, 1e-5, 1e-5, "h_last");
    const double tol = dtype == DType::f32 ? 1e-4 : 1.5e-2;
    check_grads_against_f64(low_leaves, high_leaves, tol,
                            {"du", "ddelta", "dA", "dBm", "dCm", "dDskip", "dz", "ddelta_bias", "dh0"});
  }
}

TEST_CASE("selective_scan with seq_idx chains through h_last inside a document") {
  // Split at 10 (inside row 0's document [8, 13) and row 1's [6, 20)) and at 31 (inside
  // [13, 36) and [20, 37)): the second call starts from the first's h_last, its seq_idx the
  // rest of the rows, and gives the rest of the whole.
  Generator gen(607);
  const Tensor seq = packed_rows().narrow(0, 0, 2);
  const ScanInputs in = make_scan(2, kL, 4, 3, 2, kAllScanOptions, gen);
  const SelectiveScanResult whole = scan(in.all(), true, seq);
  for (int64_t split : {10, 31}) {
    CAPTURE(split);
    auto part = [&](int64_t start, int64_t len, const Tensor& h0) {
      return selective_scan(in.u.narrow(1, start, len), in.delta.narrow(1, start, len), in.A,
                            in.Bm.narrow(1, start, len), in.Cm.narrow(1, start, len), in.Dskip,
                            in.z.narrow(1, start, len), in.delta_bias, true, h0, seq.narrow(1, start, len));
    };
    const SelectiveScanResult first = part(0, split, in.h0);
    const SelectiveScanResult second = part(split, kL - split, first.h_last);
    check_close(first.out, whole.out.narrow(1, 0, split), 1e-12, 1e-13, "first part");
    check_close(second.out, whole.out.narrow(1, split, kL - split), 1e-12, 1e-13, "second part");
    check_close(second.h_last, whole.h_last, 1e-12, 1e-13, "final state");
  }
}

TEST_CASE("selective_scan takes a strided seq_idx and passes h0 through an empty sequence") {
  Generator gen(608);
  const Tensor seq = packed_rows();
  const ScanInputs in = make_scan(4, kL, 4, 3, 1, kAllScanOptions, gen);
  const Tensor strided = seq.transpose(0, 1).contiguous().transpose(0, 1);  // (B, L) with strides (1, B)
  REQUIRE(!strided.is_contiguous());
  check_close(scan(in.all(), true, strided).out, scan(in.all(), true, seq).out, 0, 0, "strided seq_idx");

  ScanInputs empty = make_scan(2, 0, 4, 3, 1, kAllScanOptions, gen);
  const SelectiveScanResult r = scan(empty.all(), true, Tensor::zeros({2, 0}, DType::i32));
  CHECK(r.out.shape() == Dims{2, 0, 4});
  check_close(r.h_last, empty.h0, 0, 0, "h_last");
}

TEST_CASE("selective_scan names a bad seq_idx") {
  Generator gen(609);
  const ScanInputs in = make_scan(2, 16, 4, 8, 1, 0, gen, DType::f32);
  auto run = [&](const Tensor& seq) { selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, {}, {}, {}, false, {}, seq); };
  CHECK(user_error_of([&] {
          run(Tensor::zeros({2, 15}, DType::i32));
        }) == "selective_scan: seq_idx (2, 15) i32 cpu: expected (B, L) = (2, 16)");
  CHECK(user_error_of([&] {
          run(Tensor::zeros({2, 16, 1}, DType::i32));
        }) == "selective_scan: seq_idx (2, 16, 1) i32 cpu: expected 2 dimensions (B, L)");
  CHECK(user_error_of([&] {
          run(Tensor::zeros({2, 16}, DType::i64));
        }) == "selective_scan: seq_idx (2, 16) i64 cpu: expected dtype i32 (the document index of every position)");
  CHECK(contains(user_error_of([&] { run(Tensor::zeros({2, 16}, DType::f32)); }), "seq_idx (2, 16) f32"));
  std::vector<int32_t> v(32, 4);
  v[16 + 9] = 3;  // row 1 goes back from document 4 to 3 at position 9
  CHECK(user_error_of([&] {
          run(Tensor::from_vector(v, {2, 16}));
        }) ==
        "selective_scan: seq_idx (2, 16) i32 cpu: row 1 decreases at position 9 (4 then 3); document indices must be "
        "non-decreasing along L");
}

// =======================================================================================
// Causal conv1d on the CPU.

TEST_CASE("causal_conv1d with seq_idx matches the naive loop for every width and option") {
  Generator gen(611);
  // L = 37: the standard rows. L = 2 and 3 (shorter than K - 1 for K = 4): restarts at 1 and
  // 2, so the final state mixes initial-state entries, dropped entries and inputs.
  const Tensor long_rows = packed_rows();
  const Tensor short2 = doc_index(2, {{1}, {}}, {0, 6});
  const Tensor short3 = doc_index(3, {{2}, {1, 2}}, {1, 0});
  for (const Tensor& seq : {long_rows, short2, short3}) {
    for (int64_t K : {1, 2, 3, 4}) {
      for (int mask = 0; mask < 8; ++mask) {
        const bool with_bias = mask & 1, silu = mask & 2, with_state = mask & 4;
        CAPTURE(seq.size(1));
        CAPTURE(K);
        CAPTURE(mask);
        const ConvInputs in = make_conv(seq.size(0), seq.size(1), 5, K, with_bias, with_state, gen);
        const CausalConv1dResult r = causal_conv1d(in.x, in.weight, in.bias, silu, in.state, seq);
        const ConvReference ref = naive_conv_docs(in, silu, seq);
        check_close(r.out, ref.out, 1e-13, 1e-14, "out");
        check_close(r.final_state, ref.final_state, 0, 0, "final_state");
      }
    }
  }
}

TEST_CASE("causal_conv1d with one document per row equals the conv without seq_idx") {
  Generator gen(612);
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    for (int64_t L : {13, 2}) {
      CAPTURE(dtype_name(dtype));
      CAPTURE(L);
      const ConvInputs in = make_conv(2, L, 6, 4, true, true, gen, dtype);
      std::vector<Tensor> a, b;
      for (const Tensor& t : in.all()) {
        a.push_back(t.clone().detach().requires_grad_());
        b.push_back(t.clone().detach().requires_grad_());
      }
      const Tensor seed = random_tensor({2, L, 6}, gen, DType::f64),
                   seed_fin = random_tensor({2, 6, 3}, gen, DType::f64);
      const CausalConv1dResult ra = causal_conv1d(a[0], a[1], a[2], true, a[3]);
      backward(add(sum(mul(cast(ra.out, DType::f64), seed)), sum(mul(cast(ra.final_state, DType::f64), seed_fin))));
      const CausalConv1dResult rb = causal_conv1d(b[0], b[1], b[2], true, b[3], doc_index(L, {{}, {}}, {3, 0}));
      backward(add(sum(mul(cast(rb.out, DType::f64), seed)), sum(mul(cast(rb.final_state, DType::f64), seed_fin))));
      // The masked kernels do the same sums (every tap kept); only the compiler's grouping
      // of them may differ: a few ulp of the compute dtype, which a bf16 result may turn into
      // one rounding step of bf16 (2^-8 relative).
      const double tol = dtype == DType::f64 ? 1e-14 : dtype == DType::f32 ? 1e-6 : 8e-3;
      check_close(rb.out, ra.out, tol, 1e-6, "out");
      check_close(rb.final_state, ra.final_state, 0, 0, "final_state");
      for (size_t i = 0; i < a.size(); ++i) {
        CAPTURE(i);
        check_close(b[i].grad(), a[i].grad(), tol, 1e-6, "gradient");
      }
    }
  }
}

TEST_CASE("causal_conv1d of a packed row equals its documents run one by one") {
  // Each document alone (the first of a row from that row's initial state, the others from
  // zeros) gives the packed outputs; the last one's final state is the packed final state
  // (zeros where the last document is shorter than K - 1 and is not the first); and the
  // gradients of a loss over the packed batch are those of the same loss over the documents.
  Generator gen(613);
  const Tensor seq = packed_rows();
  for (int64_t K : {4, 3, 2}) {
    CAPTURE(K);
    ConvInputs in = make_conv(4, kL, 5, K, true, true, gen);
    std::vector<Tensor> leaves = in.all();
    for (Tensor& t : leaves) t.requires_grad_();
    const Tensor w_out = random_tensor({4, kL, 5}, gen, DType::f64),
                 w_fin = random_tensor({4, 5, K - 1}, gen, DType::f64);

    const CausalConv1dResult packed = causal_conv1d(leaves[0], leaves[1], leaves[2], true, leaves[3], seq);
    backward(add(sum(mul(packed.out, w_out)), sum(mul(packed.final_state, w_fin))));
    const std::vector<Tensor> packed_grads = take_grads(leaves);

    Tensor loss;
    for (int64_t b = 0; b < 4; ++b) {
      const auto docs = documents_of(seq, b);
      for (size_t i = 0; i < docs.size(); ++i) {
        const auto [start, len] = docs[i];
        CAPTURE(b);
        CAPTURE(start);
        const Tensor state = i == 0 ? leaves[3].narrow(0, b, 1) : Tensor();
        const CausalConv1dResult one =
            causal_conv1d(piece(leaves[0], b, start, len), leaves[1], leaves[2], true, state);
        check_close(one.out, piece(packed.out, b, start, len).detach(), 1e-13, 1e-14, "document out");
        Tensor part = sum(mul(one.out, piece(w_out, b, start, len)));
        if (i + 1 == docs.size()) {
          check_close(one.final_state, packed.final_state.narrow(0, b, 1).detach(), 0, 0, "final_state");
          part = add(part, sum(mul(one.final_state, w_fin.narrow(0, b, 1))));
        }
        loss = loss.defined() ? add(loss, part) : part;
      }
    }
    backward(loss);
    const char* names[] = {"dx", "dweight", "dbias", "dinitial_state"};
    for (size_t i = 0; i < leaves.size(); ++i) check_close(packed_grads[i], leaves[i].grad(), 1e-12, 1e-13, names[i]);
  }
}

TEST_CASE("causal_conv1d gradients with seq_idx match finite differences") {
  Generator gen(614);
  SUBCASE("the standard rows, every input, K = 4 and 3") {
    for (int64_t K : {4, 3}) {
      CAPTURE(K);
      ConvInputs in = make_conv(4, kL, 3, K, true, true, gen);
      std::vector<Tensor> leaves = in.all();
      for (Tensor& t : leaves) t.requires_grad_();
      const Tensor seq = packed_rows();
      check_gradients([&](const std::vector<Tensor>& x) { return conv_outputs(x, true, seq); }, leaves);
    }
  }
  SUBCASE("sequences shorter than the window") {
    // L = 2 < K - 1 = 3: the final state holds initial-state entries, kept or dropped by row.
    for (const Tensor& seq : {doc_index(2, {{1}, {}}, {0, 6}), doc_index(3, {{2}, {1, 2}}, {1, 0})}) {
      CAPTURE(seq.size(1));
      ConvInputs in = make_conv(2, seq.size(1), 3, 4, true, true, gen);
      std::vector<Tensor> leaves = in.all();
      for (Tensor& t : leaves) t.requires_grad_();
      check_gradients([&](const std::vector<Tensor>& x) { return conv_outputs(x, true, seq); }, leaves);
    }
  }
  SUBCASE("no bias, no activation, no initial state") {
    ConvInputs in = make_conv(4, kL, 3, 2, false, false, gen);
    std::vector<Tensor> leaves = {in.x, in.weight, Tensor(), Tensor()};
    leaves[0].requires_grad_(), leaves[1].requires_grad_();
    const Tensor seq = packed_rows();
    check_gradients([&](const std::vector<Tensor>& x) { return conv_outputs(x, false, seq); }, leaves);
  }
}

TEST_CASE("causal_conv1d with seq_idx in f32 and bf16 agrees with f64") {
  // fp32 arithmetic on the same rounded inputs: a K-term sum per output and a B*L-term sum per
  // weight gradient (148 terms): 1e-5 relative on outputs and 1e-4 of the largest element on
  // gradients leave a wide margin. bf16 outputs and dx are rounded to bf16 (2^-9).
  Generator gen(615);
  const Tensor seq = packed_rows();
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype_name(dtype));
    const ConvInputs low = make_conv(4, kL, 6, 4, true, true, gen, dtype);
    std::vector<Tensor> low_leaves = low.all();
    const std::vector<Tensor> high_leaves = f64_twins(low_leaves);
    const Tensor seed = random_tensor({4, kL, 6}, gen, DType::f64),
                 seed_fin = random_tensor({4, 6, 3}, gen, DType::f64);
    // backward() consumes the whole tape: one forward and backward at a time.
    const CausalConv1dResult rl = causal_conv1d(low_leaves[0], low_leaves[1], low_leaves[2], true, low_leaves[3], seq);
    backward(add(sum(mul(cast(rl.out, DType::f64), seed)), sum(mul(cast(rl.final_state, DType::f64), seed_fin))));
    const CausalConv1dResult rh =
        causal_conv1d(high_leaves[0], high_leaves[1], high_leaves[2], true, high_leaves[3], seq);
    backward(add(sum(mul(rh.out, seed)), sum(mul(rh.final_state, seed_fin))));
    const double out_tol = dtype == DType::f32 ? 1e-5 : 8e-3;
    check_close(rl.out, rh.out, out_tol, out_tol, "out");
    check_close(rl.final_state, rh.final_state, 0, 0, "final_state");  // copies of inputs
    const double tol = dtype == DType::f32 ? 1e-4 : 1.5e-2;
    check_grads_against_f64(low_leaves, high_leaves, tol, {"dx", "dweight", "dbias", "dinitial_state"});
  }
}

TEST_CASE("causal_conv1d with seq_idx continues the last document through the final state") {
  // Row 0 of the standard layout split at 14 (one step into [13, 36): the first call's final
  // state holds x[13] and zeros for the entries of [8, 13)) and at 10 (inside [8, 13)); row
  // 1 at 21 and 10. The second call, from the first's final state and with its own seq_idx,
  // gives the rest of the whole, and the same final state.
  Generator gen(616);
  const Tensor seq = packed_rows().narrow(0, 0, 2);
  const ConvInputs in = make_conv(2, kL, 5, 4, true, true, gen);
  const CausalConv1dResult whole = causal_conv1d(in.x, in.weight, in.bias, true, in.state, seq);
  for (int64_t split : {14, 10, 21}) {
    CAPTURE(split);
    const CausalConv1dResult first =
        causal_conv1d(in.x.narrow(1, 0, split), in.weight, in.bias, true, in.state, seq.narrow(1, 0, split));
    const CausalConv1dResult second = causal_conv1d(in.x.narrow(1, split, kL - split), in.weight, in.bias, true,
                                                    first.final_state, seq.narrow(1, split, kL - split));
    check_close(first.out, whole.out.narrow(1, 0, split), 1e-14, 1e-15, "first part");
    check_close(second.out, whole.out.narrow(1, split, kL - split), 1e-14, 1e-15, "second part");
    check_close(second.final_state, whole.final_state, 0, 0, "final state");
  }
}

TEST_CASE("causal_conv1d with seq_idx of an empty sequence keeps the initial state") {
  Generator gen(617);
  const ConvInputs in = make_conv(2, 0, 3, 4, true, true, gen);
  const CausalConv1dResult r =
      causal_conv1d(in.x, in.weight, in.bias, true, in.state, Tensor::zeros({2, 0}, DType::i32));
  CHECK(r.out.shape() == Dims{2, 0, 3});
  check_close(r.final_state, in.state, 0, 0, "final_state");
}

TEST_CASE("causal_conv1d names a bad seq_idx") {
  Generator gen(618);
  const ConvInputs in = make_conv(2, 9, 5, 4, false, false, gen, DType::f32);
  auto run = [&](const Tensor& seq) { causal_conv1d(in.x, in.weight, Tensor(), false, Tensor(), seq); };
  CHECK(user_error_of([&] {
          run(Tensor::zeros({2, 8}, DType::i32));
        }) == "causal_conv1d: seq_idx (2, 8) i32 cpu: expected (B, L) = (2, 9)");
  CHECK(user_error_of([&] { run(Tensor::zeros({9}, DType::i32)); }) ==
        "causal_conv1d: seq_idx (9,) i32 cpu: expected 2 dimensions (B, L)");
  CHECK(user_error_of([&] {
          run(Tensor::zeros({2, 9}, DType::f64));
        }) == "causal_conv1d: seq_idx (2, 9) f64 cpu: expected dtype i32 (the document index of every position)");
  std::vector<int32_t> v = {0, 0, 1, 1, 1, 0, 2, 2, 2, 5, 5, 5, 5, 5, 5, 5, 5, 5};
  CHECK(contains(user_error_of([&] {
                   run(Tensor::from_vector(v, {2, 9}));
                 }),
                 "causal_conv1d: seq_idx (2, 9) i32 cpu: row 0 decreases at position 5 (1 then 0)"));
}

// =======================================================================================
// CUDA against the CPU (f64 on the same rounded inputs), with the tolerances of
// test_ssm_cuda.cpp: f32 2e-5 relative norm and 2e-4 of max |ref| elementwise; bf16 6e-3 and
// 1.2e-2. Restarts only cut the recurrences short, so the rounding analysis there holds.

namespace {

using cuda_compare::Arg;
using cuda_compare::compare_with_cpu;
using cuda_compare::OpFn;
using cuda_compare::Tolerance;

constexpr Tolerance kCudaF32{2e-5, 2e-4};
constexpr Tolerance kCudaBf16{6e-3, 1.2e-2};
Tolerance cuda_tolerance(DType t) { return t == DType::bf16 ? kCudaBf16 : kCudaF32; }

struct CudaScanShape {
  int64_t B, L, D, N, G;
  int options;
  double mean_doc;                           // mean document length of the random layout
  std::vector<std::vector<int64_t>> forced;  // boundaries placed on purpose, per row
};

std::vector<Arg> cuda_scan_args(const CudaScanShape& s, DType dtype, Generator& gen) {
  const ScanInputs in = make_scan(s.B, s.L, s.D, s.N, s.G, s.options, gen);
  return {{"u", in.u, dtype},       {"delta", in.delta, dtype},
          {"A", in.A, DType::f32},  {"Bm", in.Bm, dtype},
          {"Cm", in.Cm, dtype},     {"Dskip", in.Dskip, DType::f32},
          {"z", in.z, dtype},       {"delta_bias", in.delta_bias, DType::f32},
          {"h0", in.h0, DType::f32}};
}

// seq_idx lives on the host; the op moves it to the device of its inputs.
OpFn cuda_scan_op(bool softplus, const Tensor& seq) {
  return [softplus, seq](const std::vector<Tensor>& v) {
    const SelectiveScanResult r = scan(v, softplus, seq.to(v[0].device()));
    return std::vector<Tensor>{r.out, r.h_last};
  };
}

// x is the channel slice [offset, offset + C) of a (B, L, C + extra) tensor, as in
// test_ssm_cuda.cpp: offset 3 (extra 5) takes the per-element kernels, offset 4 with C a
// multiple of 4 (extra 8) the tiled ones.
OpFn cuda_conv_op(int64_t C, bool silu, int64_t offset, const Tensor& seq) {
  return [C, silu, offset, seq](const std::vector<Tensor>& v) {
    const CausalConv1dResult r =
        causal_conv1d(v[0].narrow(2, offset, C), v[1], v[2], silu, v[3], seq.to(v[0].device()));
    return std::vector<Tensor>{r.out, r.final_state};
  };
}

std::vector<Arg> cuda_conv_args(int64_t B, int64_t L, int64_t C, int64_t K, bool options, DType dtype, Generator& gen,
                                int64_t extra) {
  return {{"x", random_tensor({B, L, C + extra}, gen, DType::f64), dtype},
          {"weight", random_tensor({C, K}, gen, DType::f64), DType::f32},
          {"bias", options ? random_tensor({C}, gen, DType::f64) : Tensor(), DType::f32},
          {"initial_state", options && K > 1 ? random_tensor({B, C, K - 1}, gen, DType::f64) : Tensor(), dtype}};
}

}  // namespace

TEST_CASE("selective_scan CUDA with seq_idx matches the CPU in f32") {
  if (!cuda_test_device()) return;
  Generator gen(621);
  // Boundaries on purpose at tile edges (the forward's 32-step tiles, the backward's 16-step
  // tiles and checkpoints), at t = 1 and L - 1, in runs of one-step documents, and in the
  // long rows at and just past the time segments' starts (L = 1700: segments of 576 steps;
  // L = 1100: 576 + 524 in the backward) and in some segments only, so that both the carried
  // and the cut segment summaries are exercised. Odd L throughout but for the N = 1 case.
  const CudaScanShape shapes[] = {
      {2, 100, 40, 16, 2, kAllScanOptions, 12, {{1, 32, 99}, {16, 17, 31, 48}}},
      {1, 33, 70, 5, 1, 0, 1e9, {{32}}},
      {2, 45, 36, 32, 3, 13, 8, {{15, 16}, {}}},
      {3, 64, 8, 1, 1, 26, 10, {{1, 2, 3}, {63}, {}}},
      {1, 7, 50, 3, 5, 23, 3, {{6}}},
      {2, 1700, 24, 16, 2, kAllScanOptions, 300, {{576, 1152, 1153}, {}}},
      {3, 1100, 8, 5, 1, 16, 1e9, {{576}, {100}, {577, 1099}}},
  };
  for (const CudaScanShape& s : shapes) {
    CAPTURE(s.L);
    CAPTURE(s.D);
    CAPTURE(s.N);
    CAPTURE(s.G);
    const Tensor seq = random_docs(s.B, s.L, s.mean_doc, s.forced, gen);
    compare_with_cpu(cuda_scan_op(s.options & 8, seq), cuda_scan_args(s, DType::f32, gen), {"out", "h_last"}, kCudaF32,
                     gen);
  }
}

TEST_CASE("selective_scan CUDA with seq_idx matches the CPU in bf16") {
  if (!cuda_test_device()) return;
  Generator gen(622);
  const CudaScanShape shapes[] = {{2, 77, 44, 16, 2, kAllScanOptions, 9, {{1, 76}, {32, 33}}},
                                  {1, 1301, 16, 16, 1, kAllScanOptions, 200, {{576, 577}}}};
  for (const CudaScanShape& s : shapes) {
    CAPTURE(s.L);
    const Tensor seq = random_docs(s.B, s.L, s.mean_doc, s.forced, gen);
    compare_with_cpu(cuda_scan_op(true, seq), cuda_scan_args(s, DType::bf16, gen), {"out", "h_last"}, kCudaBf16, gen);
  }
}

TEST_CASE("selective_scan CUDA with seq_idx is deterministic") {
  if (!cuda_test_device()) return;
  Generator gen(623);
  const CudaScanShape shapes[] = {{3, 71, 96, 16, 1, kAllScanOptions, 10, {{1}, {70}, {}}},
                                  {1, 1101, 16, 16, 1, kAllScanOptions, 150, {{576}}}};
  for (const CudaScanShape& s : shapes) {
    CAPTURE(s.L);
    const Tensor seq = random_docs(s.B, s.L, s.mean_doc, s.forced, gen);
    const std::vector<Arg> args = cuda_scan_args(s, DType::f32, gen);
    std::vector<std::vector<double>> first;
    for (int run = 0; run < 2; ++run) {
      std::vector<Tensor> in(args.size());
      for (size_t i = 0; i < args.size(); ++i)
        in[i] = args[i].values.to(DType::f32).to(Device::cuda()).detach().requires_grad_();
      const std::vector<Tensor> out = cuda_scan_op(true, seq)(in);
      backward(add(sum(out[0]), sum(mul(out[1], out[1]))));
      std::vector<std::vector<double>> now = {out[0].to_vector<double>(), out[1].to_vector<double>()};
      for (const Tensor& t : in) now.push_back(t.grad().to_vector<double>());
      if (run == 0) {
        first = now;
      } else {
        for (size_t i = 0; i < now.size(); ++i) {
          CAPTURE(i);
          CHECK(now[i] == first[i]);  // bitwise: fixed reduction order, no atomics
        }
      }
    }
  }
}

TEST_CASE("causal_conv1d CUDA with seq_idx matches the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(624);
  // The per-element kernels (C = 45 at offset 3, L = 37) and the tiled ones (C = 48 at
  // offset 4, L = 151: five 32-step tiles, the last partial), with boundaries at the tiles'
  // edges (31, 32, 33, 64, 65: the dpre halo and the carried window cross a boundary), one-
  // step documents, t = 1 and L - 1.
  struct Path {
    int64_t C, offset, extra, L;
  };
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const Path& path : {Path{45, 3, 5, 37}, Path{48, 4, 8, 151}}) {
      for (int64_t K : {1, 2, 3, 4}) {
        for (bool options : {false, true}) {  // bias, silu and an initial state
          CAPTURE(dtype_name(dtype));
          CAPTURE(path.C);
          CAPTURE(K);
          CAPTURE(options);
          const Tensor seq = random_docs(3, path.L, 6, {{1, 31, 32, 33, 64, 65}, {2, 3, 4, path.L - 1}, {}}, gen);
          compare_with_cpu(cuda_conv_op(path.C, options, path.offset, seq),
                           cuda_conv_args(3, path.L, path.C, K, options, dtype, gen, path.extra),
                           {"out", "final_state"}, cuda_tolerance(dtype), gen);
        }
      }
    }
  }
}

TEST_CASE("causal_conv1d CUDA with seq_idx and sequences shorter than the window") {
  if (!cuda_test_device()) return;
  Generator gen(625);
  // L = 2 and 3 < K - 1 = 3 (or equal): the final state mixes kept and dropped initial-state
  // entries; both kernel paths.
  for (const Tensor& seq : {doc_index(2, {{1}, {}}, {0, 6}), doc_index(3, {{2}, {1, 2}}, {1, 0})}) {
    for (int64_t offset : {3, 4}) {
      CAPTURE(seq.size(1));
      CAPTURE(offset);
      const int64_t C = offset == 4 ? 32 : 33;
      compare_with_cpu(cuda_conv_op(C, true, offset, seq),
                       cuda_conv_args(2, seq.size(1), C, 4, true, DType::f32, gen, offset == 4 ? 8 : 5),
                       {"out", "final_state"}, kCudaF32, gen);
    }
  }
}

TEST_CASE("causal_conv1d CUDA with seq_idx is deterministic") {
  if (!cuda_test_device()) return;
  Generator gen(626);
  for (int64_t offset : {3, 4}) {
    CAPTURE(offset);
    const int64_t C = offset == 4 ? 48 : 45, L = 151;
    const Tensor seq = random_docs(2, L, 7, {{32, 33}, {1}}, gen);
    const std::vector<Arg> args = cuda_conv_args(2, L, C, 4, true, DType::f32, gen, offset == 4 ? 8 : 5);
    std::vector<std::vector<double>> first;
    for (int run = 0; run < 2; ++run) {
      std::vector<Tensor> in(args.size());
      for (size_t i = 0; i < args.size(); ++i)
        in[i] = args[i].values.to(DType::f32).to(Device::cuda()).detach().requires_grad_();
      const std::vector<Tensor> out = cuda_conv_op(C, true, offset, seq)(in);
      backward(add(sum(mul(out[0], out[0])), sum(out[1])));
      std::vector<std::vector<double>> now = {out[0].to_vector<double>(), out[1].to_vector<double>()};
      for (const Tensor& t : in) now.push_back(t.grad().to_vector<double>());
      if (run == 0) {
        first = now;
      } else {
        for (size_t i = 0; i < now.size(); ++i) {
          CAPTURE(i);
          CHECK(now[i] == first[i]);
        }
      }
    }
  }
}

TEST_CASE("selective_scan and causal_conv1d on CUDA name a seq_idx on another device") {
  if (!cuda_test_device()) return;
  Generator gen(627);
  const Device dev = Device::cuda();
  const Tensor seq = Tensor::zeros({1, 5}, DType::i32);  // on the CPU
  const Tensor u = random_tensor({1, 5, 4}, gen, DType::f32, dev), A = random_tensor({4, 3}, gen, DType::f32, dev);
  const Tensor Bm = random_tensor({1, 5, 1, 3}, gen, DType::f32, dev);
  CHECK(contains(user_error_of([&] { selective_scan(u, u, A, Bm, Bm, {}, {}, {}, false, {}, seq); }),
                 "selective_scan: seq_idx (1, 5) i32 cpu: expected device " + dev.str() + " (the device of u)"));
  const Tensor w = random_tensor({4, 4}, gen, DType::f32, dev);
  CHECK(contains(user_error_of([&] { causal_conv1d(u, w, Tensor(), false, Tensor(), seq); }),
                 "causal_conv1d: seq_idx (1, 5) i32 cpu: expected device " + dev.str() + " (the device of x)"));
}

}  // namespace ssmtrain
