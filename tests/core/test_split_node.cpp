// Tensor::split as ONE tape node for all its parts: gradients equal those of the same parts
// taken with narrow() one by one (parts used, unused, used twice; along any axis; from a
// strided view), f64 finite differences, and parts of size zero.
#include <doctest/doctest.h>

#include <numeric>
#include <string>

#include "core/autograd.h"
#include "core/ops.h"
#include "gradcheck.h"

using namespace ssmtrain;

namespace {

// The parts of x along `axis`: one split, or narrow() per part (the reference).
std::vector<Tensor> parts_of(const Tensor& x, const std::vector<int64_t>& sizes, int axis, bool by_split) {
  if (by_split) return x.split(sizes, axis);
  std::vector<Tensor> out;
  int64_t start = 0;
  for (int64_t s : sizes) {
    out.push_back(x.narrow(axis, start, s));
    start += s;
  }
  return out;
}

// A loss that reads only the parts in `used` (each through a different function, part
// `twice` through two), with fixed random weights.
Tensor loss_of(const std::vector<Tensor>& parts, const std::vector<int>& used, int twice) {
  Generator gen(31);
  Tensor loss;
  for (int k : used) {
    const Tensor& p = parts[k];
    Tensor r = random_tensor(p.shape(), gen, p.dtype());
    Tensor term = k % 2 == 0 ? sum(mul(tanh(p), r)) : sum(mul(square(p), r));
    if (k == twice) term = add(term, sum(mul(p, 0.25)));
    loss = loss.defined() ? add(loss, term) : term;
  }
  return loss;
}

struct Case {
  Dims shape;
  std::vector<int64_t> sizes;
  int axis;
  std::vector<int> used;
  int twice;
  bool transposed;  // split a transposed (non-contiguous) view of the leaf
};

// Returns the gradient of the leaf.
Tensor grad_through(const Tensor& base, const Case& c, bool by_split) {
  clear_tape();
  Tensor leaf = base.detach().clone();
  leaf.requires_grad_();
  Tensor x = mul(leaf, 2.0);  // a non-leaf, so the gradient travels on through the tape
  if (c.transposed) x = x.transpose(0, x.dim() - 1);
  const size_t before = tape_size();
  std::vector<Tensor> parts = parts_of(x, c.sizes, c.axis, by_split);
  if (by_split) CHECK(tape_size() == before + 1);  // one node for all parts
  REQUIRE(parts.size() == c.sizes.size());
  for (size_t k = 0; k < parts.size(); ++k) CHECK(parts[k].requires_grad());
  backward(loss_of(parts, c.used, c.twice));
  CHECK(tape_size() == 0);
  REQUIRE(leaf.grad().defined());
  return leaf.grad();
}

}  // namespace

TEST_CASE("split gradients equal the narrow-based reference when only some parts are used") {
  const std::vector<Case> cases = {
      {{4, 9}, {2, 3, 4}, 1, {0, 2}, -1, false},     // middle part unused
      {{4, 9}, {2, 3, 4}, 1, {1}, 1, false},         // only the middle, used twice
      {{4, 9}, {2, 3, 4}, -1, {0, 1, 2}, 0, false},  // all parts, negative axis
      {{6, 2, 5}, {1, 4, 1}, 0, {2}, -1, false},     // leading axis, only the last part
      {{5, 3, 7}, {2, 2, 1}, 2, {0, 2}, 2, true},    // a transposed view (7, 3, 5), last axis
      {{3, 8}, {5, 0, 3}, 1, {0, 2}, -1, false},     // an empty part between used ones
  };
  for (DType dt : {DType::f64, DType::f32}) {
    Generator gen(30);
    for (size_t i = 0; i < cases.size(); ++i) {
      const Case& c = cases[i];
      INFO(std::string(dtype_name(dt)), " case ", i, " shape ", c.shape.str(), " axis ", c.axis);
      Tensor base = random_tensor(c.shape, gen, dt);
      Tensor got = grad_through(base, c, true), want = grad_through(base, c, false);
      // narrow's backward adds zero-filled full-size gradients; x + 0 is x, so bitwise.
      check_close(got, want, 0, 0, "gradient of the split tensor");
    }
  }
}

TEST_CASE("split gradients match finite differences in f64") {
  Generator gen(32);
  Tensor x = grad_leaf({3, 10}, gen);
  // Part 1 unused, part 3 used twice; every part of nonzero size.
  check_gradients(
      [](const std::vector<Tensor>& in) {
        std::vector<Tensor> p = in[0].split({2, 3, 1, 4}, 1);
        return cat({mul(p[0], p[0]), tanh(p[2]), mul(p[3], p[3]), p[3]}, 1);
      },
      {x});
  Tensor y = grad_leaf({6, 2, 3}, gen);
  check_gradients(
      [](const std::vector<Tensor>& in) {
        std::vector<Tensor> p = in[0].split({1, 0, 4, 1}, 0);
        return cat({square(p[2]), mul(p[0], 3.0)}, 0);
      },
      {y});
}

TEST_CASE("split into parts of size zero") {
  for (DType dt : {DType::f64, DType::f32}) {
    INFO(std::string(dtype_name(dt)));
    Generator gen(33);
    Tensor base = random_tensor({3, 6}, gen, dt);
    // Empty parts at both ends and in the middle; the gradient is that of the whole tensor.
    Case c{{3, 6}, {0, 6, 0, 0}, 1, {1}, -1, false};
    Tensor got = grad_through(base, c, true), want = grad_through(base, c, false);
    check_close(got, want, 0, 0, "gradient with empty parts");
    // Only empty parts used: every gradient element is zero.
    {
      clear_tape();
      Tensor leaf = base.detach().clone();
      leaf.requires_grad_();
      std::vector<Tensor> p = leaf.split({0, 6}, 1);
      CHECK(p[0].shape() == Dims{3, 0});
      backward(add(sum(p[0]), sum(mul(p[1], 0.0))));
      check_close(leaf.grad(), Tensor::zeros({3, 6}, dt), 0, 0, "zero gradient");
    }
    // A tensor whose split axis is empty: every part is empty.
    {
      clear_tape();
      Tensor leaf = Tensor::zeros({4, 0}, dt);
      leaf.requires_grad_();
      std::vector<Tensor> p = leaf.split({0, 0, 0}, 1);
      REQUIRE(p.size() == 3);
      for (const Tensor& t : p) CHECK(t.shape() == Dims{4, 0});
      Tensor other = random_tensor({2}, gen, dt);
      other.requires_grad_();
      backward(add(sum(p[1]), sum(other)));
      CHECK(tape_size() == 0);
      REQUIRE(leaf.grad().defined());
      CHECK(leaf.grad().shape() == Dims{4, 0});
    }
  }
}

TEST_CASE("split of a tensor without grad records nothing") {
  clear_tape();
  Tensor x = Tensor::ones({2, 6});
  std::vector<Tensor> p = x.split({2, 4}, 1);
  CHECK(tape_size() == 0);
  CHECK_FALSE(p[0].requires_grad());
  {
    Tensor y = Tensor::ones({2, 6});
    y.requires_grad_();
    NoGradGuard no_grad;
    std::vector<Tensor> q = y.split({3, 3}, 1);
    CHECK(tape_size() == 0);
    CHECK_FALSE(q[1].requires_grad());
  }
}
