// SSD (Mamba-2): chunked == quadratic == recurrent for tails and chunk sizes of every kind,
// finite-difference gradients of the chunked op, the reduction to the selective scan when
// the head dim is 1, chaining through h_last, fp32 accuracy over long strongly decaying
// sequences (the stable segsum), and argument errors.
#include <doctest/doctest.h>
#include <omp.h>

#include <string>

#include "gradcheck.h"
#include "ssd_packed_check.h"
#include "ssm/kernels/selective_scan.h"
#include "ssm/kernels/ssd.h"
#include "ssm/kernels/ssd_composed.h"
#include "ssm_reference.h"
#include "user_error.h"

namespace ssmtrain {
using testing::contains;
using testing::user_error_of;
namespace {

struct SsdInputs {
  Tensor x, dt, A, Bm, Cm, D, dt_bias, h0;
  bool softplus = false;
  std::vector<Tensor> all() const { return {x, dt, A, Bm, Cm, D, dt_bias, h0}; }
};

// Fresh random inputs: dt in about (0.05, 1) after the optional softplus, A in (-1.5, -0.2).
SsdInputs make_inputs(int64_t B, int64_t L, int64_t H, int64_t P, int64_t G, int64_t N, bool options,
                      Generator& gen, DType dtype = DType::f64) {
  const DType pd = dtype == DType::f64 ? DType::f64 : DType::f32;
  SsdInputs in;
  in.softplus = options;
  in.x = random_tensor({B, L, H, P}, gen, dtype);
  in.dt = options ? random_tensor({B, L, H}, gen, dtype, Device::cpu(), -1.5, 0.5)
                  : random_tensor({B, L, H}, gen, dtype, Device::cpu(), 0.05, 0.6);
  in.A = random_tensor({H}, gen, pd, Device::cpu(), -1.5, -0.2);
  in.Bm = random_tensor({B, L, G, N}, gen, dtype);
  in.Cm = random_tensor({B, L, G, N}, gen, dtype);
  if (options) {
    in.D = random_tensor({H}, gen, pd);
    in.dt_bias = random_tensor({H}, gen, pd, Device::cpu(), -0.3, 0.3);
    in.h0 = random_tensor({B, H, P, N}, gen, pd);
  }
  return in;
}

SsdResult chunked(const SsdInputs& in, int64_t Q) {
  return ssd_chunked(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, in.softplus, Q, in.h0);
}
SsdResult recurrent(const SsdInputs& in) {
  return ssd_recurrent(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, in.softplus, in.h0);
}
SsdResult quadratic(const SsdInputs& in) {
  return ssd_quadratic(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, in.softplus, in.h0);
}

}  // namespace

TEST_CASE("ssd chunked quadratic and recurrent forms agree") {
  Generator gen(41);
  for (bool options : {false, true}) {
    for (int64_t G : {1, 2}) {
      CAPTURE(options);
      CAPTURE(G);
      const SsdInputs in = make_inputs(2, 37, 4, 3, G, 5, options, gen);
      const SsdResult rec = recurrent(in), quad = quadratic(in);
      check_close(quad.y, rec.y, 1e-11, 1e-12, "quadratic y");
      check_close(quad.h_last, rec.h_last, 1e-11, 1e-12, "quadratic h_last");
      // Q = 8 leaves a tail of 5; Q = 64 > L is one short chunk; Q = 1 and Q = L too.
      for (int64_t Q : {8, 64, 1, 37, 5}) {
        CAPTURE(Q);
        const SsdResult ch = chunked(in, Q);
        check_close(ch.y, rec.y, 1e-11, 1e-12, "chunked y");
        check_close(ch.h_last, rec.h_last, 1e-11, 1e-12, "chunked h_last");
      }
    }
  }
}

TEST_CASE("ssd with head dim 1 is the selective scan with a shared decay per channel") {
  Generator gen(42);
  const int64_t B = 2, L = 29, D = 6, G = 2, N = 4;
  const SsdInputs in = make_inputs(B, L, D, 1, G, N, true, gen);
  const SsdResult ssd = chunked(in, 8);
  const Tensor A_rows = in.A.reshape({D, 1}).expand({D, N}).contiguous();  // A[d, n] = A_d for all n
  const SelectiveScanResult scan = selective_scan(in.x.reshape({B, L, D}), in.dt, A_rows, in.Bm, in.Cm, in.D,
                                                  Tensor(), in.dt_bias, true, in.h0.reshape({B, D, N}));
  check_close(ssd.y.reshape({B, L, D}), scan.out, 1e-11, 1e-12, "y");
  check_close(ssd.h_last.reshape({B, D, N}), scan.h_last, 1e-11, 1e-12, "h_last");
}

TEST_CASE("ssd over a split sequence chains through h_last") {
  Generator gen(43);
  const SsdInputs in = make_inputs(2, 30, 4, 3, 2, 5, true, gen);
  const SsdResult whole = chunked(in, 8);
  auto part = [&](int64_t start, int64_t len, const Tensor& h0) {
    return ssd_chunked(in.x.narrow(1, start, len), in.dt.narrow(1, start, len), in.A, in.Bm.narrow(1, start, len),
                       in.Cm.narrow(1, start, len), in.D, in.dt_bias, true, 8, h0);
  };
  const SsdResult first = part(0, 13, in.h0);
  const SsdResult second = part(13, 17, first.h_last);
  check_close(first.y, whole.y.narrow(1, 0, 13), 1e-11, 1e-12, "first part");
  check_close(second.y, whole.y.narrow(1, 13, 17), 1e-11, 1e-12, "second part");
  check_close(second.h_last, whole.h_last, 1e-11, 1e-12, "final state");
}

TEST_CASE("ssd chunked gradients of every input match finite differences") {
  Generator gen(44);
  SUBCASE("every option, two groups, a tail chunk and the h_last gradient") {
    SsdInputs in = make_inputs(2, 37, 4, 3, 2, 5, true, gen);
    std::vector<Tensor> leaves = in.all();
    for (Tensor& t : leaves) t.requires_grad_();
    check_gradients(
        [](const std::vector<Tensor>& v) {
          const SsdResult r = ssd_chunked(v[0], v[1], v[2], v[3], v[4], v[5], v[6], true, 8, v[7]);
          return cat({r.y.reshape({-1}), r.h_last.reshape({-1})}, 0);
        },
        leaves);
  }
  SUBCASE("no options, chunk longer than the sequence") {
    SsdInputs in = make_inputs(1, 11, 2, 2, 1, 3, false, gen);
    std::vector<Tensor> leaves = {in.x, in.dt, in.A, in.Bm, in.Cm};
    for (Tensor& t : leaves) t.requires_grad_();
    check_gradients(
        [](const std::vector<Tensor>& v) {
          const SsdResult r = ssd_chunked(v[0], v[1], v[2], v[3], v[4], Tensor(), Tensor(), false, 16);
          return cat({r.y.reshape({-1}), r.h_last.reshape({-1})}, 0);
        },
        leaves);
  }
  SUBCASE("chunks of one step") {
    SsdInputs in = make_inputs(1, 6, 2, 2, 2, 2, true, gen);
    std::vector<Tensor> leaves = in.all();
    for (Tensor& t : leaves) t.requires_grad_();
    check_gradients(
        [](const std::vector<Tensor>& v) {
          const SsdResult r = ssd_chunked(v[0], v[1], v[2], v[3], v[4], v[5], v[6], true, 1, v[7]);
          return cat({r.y.reshape({-1}), r.h_last.reshape({-1})}, 0);
        },
        leaves);
  }
}

TEST_CASE("ssd f32 stays accurate over long strongly decaying chunks") {
  // cumsums of dt A inside a 256-step chunk reach about -1000 here; the decays are built
  // from running sums, so fp32 keeps its relative accuracy.
  Generator gen(45);
  SsdInputs in = make_inputs(1, 600, 2, 4, 1, 8, false, gen);
  in.dt = random_tensor({1, 600, 2}, gen, DType::f64, Device::cpu(), 0.5, 1.5);
  in.A = Tensor::from_vector(std::vector<double>{-4.0, -0.01}, {2});
  const SsdResult rec = recurrent(in);
  SsdInputs low = in;
  for (Tensor* t : {&low.x, &low.dt, &low.A, &low.Bm, &low.Cm}) *t = t->to(DType::f32);
  const SsdResult ch = chunked(low, 256);
  check_close(ch.y, rec.y, 2e-4, 2e-5, "f32 y");
  check_close(ch.h_last, rec.h_last, 2e-4, 2e-5, "f32 h_last");
}

TEST_CASE("ssd f32 and bf16 forward and gradients against f64") {
  Generator gen(46);
  for (DType dtype : {DType::f32, DType::bf16}) {
    const std::string dtype_str = dtype_name(dtype);
    CAPTURE(dtype_str);
    const SsdInputs low = make_inputs(2, 21, 4, 3, 2, 5, true, gen, dtype);
    std::vector<Tensor> low_leaves = low.all(), high_leaves;
    for (const Tensor& t : low_leaves) high_leaves.push_back(t.to(DType::f64));
    for (Tensor& t : low_leaves) t.requires_grad_();
    for (Tensor& t : high_leaves) t.requires_grad_();
    auto run = [](const std::vector<Tensor>& v) {
      return ssd_chunked(v[0], v[1], v[2], v[3], v[4], v[5], v[6], true, 8, v[7]).y;
    };
    // One forward and backward at a time: backward() consumes the whole tape.
    const Tensor y_low = run(low_leaves);
    const Tensor seed = random_tensor(y_low.shape(), gen, DType::f64);
    backward(y_low, seed.to(dtype));
    const Tensor y_high = run(high_leaves);
    backward(y_high, seed);
    CHECK(y_low.dtype() == dtype);
    const double tol = dtype == DType::f32 ? 1e-4 : 1.5e-2;
    check_close(y_low, y_high, tol, tol, "y");
    const char* names[] = {"dx", "ddt", "dA", "dBm", "dCm", "dD", "ddt_bias", "dh0"};
    for (int i = 0; i < 8; ++i) {
      REQUIRE(low_leaves[i].grad().defined());
      CHECK(low_leaves[i].grad().dtype() == low_leaves[i].dtype());
      const Tensor ref = high_leaves[i].grad();
      double scale = 0;
      for (double v : ref.to_vector<double>()) scale = std::max(scale, std::abs(v));
      check_close(low_leaves[i].grad(), ref, tol, tol * scale, names[i]);
    }
  }
}

TEST_CASE("ssd results do not depend on the thread count") {
  Generator gen(48);
  const SsdInputs in = make_inputs(2, 45, 4, 3, 2, 5, true, gen, DType::f32);
  const Tensor seed = random_tensor({2, 45, 4, 3}, gen);
  auto run_with = [&](int threads) {
    const int before = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<Tensor> leaves;
    for (const Tensor& t : in.all()) leaves.push_back(t.clone().detach().requires_grad_());
    const SsdResult r = ssd_chunked(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6], true,
                                    8, leaves[7]);
    backward(r.y, seed);
    omp_set_num_threads(before);
    std::vector<Tensor> out = {r.y, r.h_last};
    for (const Tensor& t : leaves) out.push_back(t.grad());
    return out;
  };
  const std::vector<Tensor> one = run_with(1), three = run_with(3);
  for (size_t i = 0; i < one.size(); ++i) {
    CAPTURE(i);
    check_close(three[i], one[i], 0, 0, "bitwise equal");
  }
}

TEST_CASE("ssd of an empty sequence returns the initial state") {
  Generator gen(49);
  SsdInputs in = make_inputs(1, 0, 2, 3, 1, 4, true, gen);
  in.h0.requires_grad_();
  const SsdResult r = chunked(in, 8);
  CHECK(r.y.shape() == Dims{1, 0, 2, 3});
  check_close(r.h_last, in.h0, 0, 0, "h_last");
  const Tensor seed = random_tensor({1, 2, 3, 4}, gen, DType::f64);
  backward(r.h_last, seed);
  check_close(in.h0.grad(), seed, 0, 0, "dh0");
  check_close(recurrent(in).h_last, in.h0, 0, 0, "recurrent h_last");
  check_close(quadratic(in).h_last, in.h0, 0, 0, "quadratic h_last");
}

TEST_CASE("ssd names the offending argument") {
  Generator gen(47);
  const SsdInputs in = make_inputs(2, 16, 4, 3, 1, 8, false, gen, DType::f32);
  const Tensor bad_C = random_tensor({2, 16, 2, 8}, gen);
  CHECK(user_error_of([&] { ssd_chunked(in.x, in.dt, in.A, in.Bm, bad_C); }) ==
        "ssd_chunked: Cm (2, 16, 2, 8) f32 cpu: expected (B, L, G, N) = (2, 16, 1, 8)");
  const Tensor bad_dt = random_tensor({2, 16, 3}, gen);
  CHECK(user_error_of([&] { ssd_chunked(in.x, bad_dt, in.A, in.Bm, in.Cm); }) ==
        "ssd_chunked: dt (2, 16, 3) f32 cpu: expected (B, L, H) = (2, 16, 4)");
  const Tensor three_groups = random_tensor({2, 16, 3, 8}, gen);
  CHECK(user_error_of([&] { ssd_chunked(in.x, in.dt, in.A, three_groups, three_groups); })
            .find("G = 3 must divide the number of heads H = 4") != std::string::npos);
  CHECK(user_error_of([&] { ssd_chunked(in.x, in.dt, in.A, in.Bm, in.Cm, {}, {}, false, 0); }) ==
        "ssd_chunked: chunk_size must be at least 1, got 0");
}

// ---- packed documents (seq_idx) ----

namespace {

// Two rows of 37 steps. Row 0 restarts at 1 (a one-step first document), at 8 (a chunk
// start for Q = 8), at 13 and at 36 (a last document of one step); row 1 at 5, 6 (a document
// of one step) and 20, with indices that do not start at 0.
Tensor packed_seq_idx() {
  std::vector<int32_t> v;
  const std::vector<std::vector<int64_t>> starts = {{1, 8, 13, 36}, {5, 6, 20}};
  for (int64_t b = 0; b < 2; ++b) {
    int32_t doc = b == 0 ? 0 : 3;
    for (int64_t t = 0; t < 37; ++t) {
      for (int64_t s : starts[b]) doc += s == t;
      v.push_back(doc);
    }
  }
  return Tensor::from_vector(v, {2, 37});
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> u = a.to_vector<double>(), v = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < u.size(); ++i) m = std::max(m, std::abs(u[i] - v[i]));
  return m;
}

SsdResult chunked(const SsdInputs& in, int64_t Q, const Tensor& seq_idx) {
  return ssd_chunked(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, in.softplus, Q, in.h0, seq_idx);
}

}  // namespace

TEST_CASE("ssd with seq_idx matches the recurrence that restarts at every document") {
  Generator gen(48);
  const Tensor seq = packed_seq_idx();
  for (bool options : {false, true}) {
    for (int64_t G : {1, 2}) {
      CAPTURE(options);
      CAPTURE(G);
      const SsdInputs in = make_inputs(2, 37, 4, 3, G, 5, options, gen);
      const SsdResult rec = ssd_recurrent(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, in.softplus, in.h0, seq);
      const SsdResult plain = recurrent(in);
      // The masks must matter: without them the outputs after the first restart differ.
      CHECK(max_abs_diff(rec.y.narrow(1, 1, 36), plain.y.narrow(1, 1, 36)) > 1e-3);
      for (int64_t Q : {8, 64, 1, 37, 5}) {
        CAPTURE(Q);
        const SsdResult ch = chunked(in, Q, seq);
        check_close(ch.y, rec.y, 1e-11, 1e-12, "chunked y");
        check_close(ch.h_last, rec.h_last, 1e-11, 1e-12, "chunked h_last");
        auto [y, h_last] = ssd_chunked_composed(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, in.softplus, Q,
                                                in.h0, seq);
        check_close(y, rec.y, 1e-11, 1e-12, "composed y");
        check_close(h_last, rec.h_last, 1e-11, 1e-12, "composed h_last");
      }
    }
  }
}

TEST_CASE("ssd of a packed row equals its documents run one by one") {
  // Row 1 of packed_seq_idx holds documents [0, 5), [5, 6), [6, 20), [20, 37). Each one run
  // alone (the first from h0, the others from a zero state) gives the packed outputs, the
  // last one's final state is h_last, and the gradients of a loss over the packed row are
  // the sums of the documents' own.
  Generator gen(49);
  SsdInputs in = make_inputs(2, 37, 4, 3, 2, 5, true, gen);
  const Tensor seq = packed_seq_idx();
  std::vector<Tensor> leaves = in.all();
  for (Tensor& t : leaves) t.requires_grad_();
  const Tensor w = random_tensor({37, 4, 3}, gen, DType::f64);  // weights of the loss sum(w * y)
  const Tensor w_last = random_tensor({4, 3, 5}, gen, DType::f64);
  auto row = [](const Tensor& t, int64_t start, int64_t len) { return t.narrow(0, 1, 1).narrow(1, start, len); };

  const SsdResult packed = ssd_chunked(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6],
                                       true, 8, leaves[7], seq);
  backward(add(sum(mul(row(packed.y, 0, 37).reshape({37, 4, 3}), w)),
               sum(mul(packed.h_last.narrow(0, 1, 1).reshape({4, 3, 5}), w_last))));
  std::vector<Tensor> packed_grads;
  for (Tensor& t : leaves) packed_grads.push_back(t.grad().narrow(0, t.dim() > 1 ? 1 : 0, t.dim() > 1 ? 1 : t.size(0)));
  for (Tensor& t : leaves) t.zero_grad();

  const std::vector<std::pair<int64_t, int64_t>> docs = {{0, 5}, {5, 1}, {6, 14}, {20, 17}};
  Tensor loss;
  for (size_t i = 0; i < docs.size(); ++i) {
    const auto [start, len] = docs[i];
    const Tensor h0 = i == 0 ? leaves[7].narrow(0, 1, 1) : Tensor();
    const SsdResult one = ssd_chunked(row(leaves[0], start, len), row(leaves[1], start, len), leaves[2],
                                      row(leaves[3], start, len), row(leaves[4], start, len), leaves[5], leaves[6],
                                      true, 8, h0);
    check_close(one.y, row(packed.y, start, len).detach(), 1e-11, 1e-12, "document y");
    Tensor part = sum(mul(one.y.reshape({len, 4, 3}), w.narrow(0, start, len)));
    if (i + 1 == docs.size()) {
      check_close(one.h_last, packed.h_last.narrow(0, 1, 1).detach(), 1e-11, 1e-12, "h_last");
      part = add(part, sum(mul(one.h_last.reshape({4, 3, 5}), w_last)));
    }
    loss = loss.defined() ? add(loss, part) : part;
  }
  backward(loss);
  const char* names[] = {"dx", "ddt", "dA", "dBm", "dCm", "dD", "ddt_bias", "dh0"};
  for (size_t i = 0; i < leaves.size(); ++i) {
    const Tensor& t = leaves[i];
    const Tensor g = t.grad().narrow(0, t.dim() > 1 ? 1 : 0, t.dim() > 1 ? 1 : t.size(0));
    check_close(packed_grads[i], g, 1e-10, 1e-12, names[i]);
  }
}

TEST_CASE("ssd gradients with seq_idx match finite differences") {
  Generator gen(50);
  SsdInputs in = make_inputs(2, 37, 4, 3, 2, 5, true, gen);
  const Tensor seq = packed_seq_idx();
  std::vector<Tensor> leaves = in.all();
  for (Tensor& t : leaves) t.requires_grad_();
  for (int64_t Q : {8, 5}) {
    CAPTURE(Q);
    check_gradients(
        [&](const std::vector<Tensor>& v) {
          const SsdResult r = ssd_chunked(v[0], v[1], v[2], v[3], v[4], v[5], v[6], true, Q, v[7], seq);
          return cat({r.y.reshape({-1}), r.h_last.reshape({-1})}, 0);
        },
        leaves);
  }
}

TEST_CASE("ssd names a bad seq_idx") {
  Generator gen(51);
  const SsdInputs in = make_inputs(2, 16, 4, 3, 1, 8, false, gen, DType::f32);
  auto run = [&](const Tensor& seq) { ssd_chunked(in.x, in.dt, in.A, in.Bm, in.Cm, {}, {}, false, 8, {}, seq); };
  CHECK(user_error_of([&] { run(Tensor::zeros({2, 15}, DType::i32)); }) ==
        "ssd_chunked: seq_idx (2, 15) i32 cpu: expected (B, L) = (2, 16)");
  CHECK(contains(user_error_of([&] { run(Tensor::zeros({2, 16}, DType::f32)); }), "expected dtype i32"));
  std::vector<int32_t> v(32, 1);
  v[16 + 9] = 0;  // row 1 goes back from document 1 to 0 at position 9
  CHECK(contains(user_error_of([&] { run(Tensor::from_vector(v, {2, 16})); }), "row 1 decreases at position 9"));
}

// ---- the packed entry point (Mamba-2's xBC) ----

TEST_CASE("ssd on a packed xBC equals ssd on its slices, forward and gradients, bitwise") {
  Generator gen(52);
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    CAPTURE(dtype_name(dtype));
    for (int64_t G : {1, 2}) {
      CAPTURE(G);
      testing::check_ssd_packed_matches_slices({2, 37, 4, 3, G, 5, 8}, dtype, Device::cpu(), gen);
      testing::check_ssd_packed_matches_slices({2, 37, 4, 3, G, 5, 16}, dtype, Device::cpu(), gen,
                                               packed_seq_idx());
    }
  }
}

TEST_CASE("ssd on a packed xBC names a width that does not split") {
  Generator gen(53);
  const Tensor xBC = random_tensor({2, 16, 4 * 3 + 2 * 5 + 1}, gen);
  const Tensor dt = random_tensor({2, 16, 4}, gen), A = random_tensor({4}, gen, DType::f32, Device::cpu(), -1, -0.5);
  CHECK(user_error_of([&] { ssd_chunked_packed(xBC, 4, 1, 5, dt, A); }) ==
        "ssd_chunked: xBC (2, 16, 23): the last axis must be H P + 2 G N with H = 4 heads, G = 1 groups and N = 5 "
        "(d_state)");
  CHECK(user_error_of([&] { ssd_chunked_packed(xBC.narrow(2, 0, 22), 4, 1, 5, dt, A.narrow(0, 0, 3)); }) ==
        "ssd_chunked: A (3,) f32 cpu: expected (H) = (4,)");
}

}  // namespace ssmtrain
