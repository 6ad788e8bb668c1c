// Shape and indexing ops (cat, stack, pad, index_select, gather, cast): forwards against
// host loops, gradients against finite differences, argument errors.
#include <doctest/doctest.h>

#include <string>

#include "core/ops.h"
#include "gradcheck.h"
#include "op_reference.h"

using namespace ssmtrain;

namespace {

// Host concatenation of row-major tensors along `axis`.
Tensor cat_reference(const std::vector<Tensor>& xs, int axis) {
  Dims out_shape = xs[0].shape();
  out_shape[axis] = 0;
  for (const Tensor& x : xs) out_shape[axis] += x.size(axis);
  std::vector<double> out(static_cast<size_t>(out_shape.numel()));
  int64_t offset = 0;
  for (const Tensor& x : xs) {
    std::vector<double> v = ref::host(x);
    for (int64_t i = 0; i < x.numel(); ++i) {
      std::vector<int64_t> idx = ref::unravel(i, x.shape());
      idx[axis] += offset;
      out[ref::ravel(idx, out_shape)] = v[i];
    }
    offset += x.size(axis);
  }
  return ref::make(out, out_shape);
}

}  // namespace

TEST_CASE("cat matches host concatenation on every axis including empty pieces") {
  Generator gen(60);
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::i64})
    for (int axis : {0, 1, 2}) {
      INFO(std::string(dtype_name(dt)), " axis ", axis);
      Dims s1{2, 3, 4}, s2{2, 3, 4}, s3{2, 3, 4};
      s2[axis] = 1;
      s3[axis] = 0;
      Tensor a = random_tensor(s1, gen, DType::f64, Device::cpu(), -5, 5).to(dt);
      Tensor b = random_tensor({4, 3, 2}, gen, DType::f64).to(dt).permute({2, 1, 0});  // strided (2, 3, 4)
      Tensor c = random_tensor(s2, gen, dt), e = random_tensor(s3, gen, dt);
      std::vector<Tensor> xs{a, b.narrow(axis, 0, 2), c, e};
      Tensor y = cat(xs, axis);
      check_close(y, cat_reference(xs, axis), 0, 0, "cat");
      CHECK(y.dtype() == dt);
    }
  Tensor one = Tensor::ones({2, 2});
  CHECK(cat({one}, -1).impl() != one.impl());  // always a new tensor
}

TEST_CASE("stack inserts a new axis") {
  Generator gen(61);
  Tensor a = random_tensor({2, 3}, gen), b = random_tensor({2, 3}, gen);
  for (int axis : {0, 1, 2, -1}) {
    INFO("axis ", axis);
    Tensor y = stack({a, b}, axis);
    int ax = axis < 0 ? axis + 3 : axis;
    Dims expect_shape{2, 3};
    expect_shape.insert(ax, 2);
    CHECK(y.shape() == expect_shape);
    check_close(y, cat_reference({a.unsqueeze(ax), b.unsqueeze(ax)}, ax), 0, 0, "stack");
  }
}

TEST_CASE("cat and stack gradients match finite differences") {
  Generator gen(62);
  Tensor a = grad_leaf({2, 3}, gen), b = grad_leaf({2, 1}, gen), c = grad_leaf({2, 3}, gen);
  check_gradients([](const std::vector<Tensor>& in) { return cat({in[0], in[1], in[2]}, 1); }, {a, b, c});
  check_gradients([](const std::vector<Tensor>& in) { return cat({in[0].transpose(0, 1), in[1].transpose(0, 1)}, 0); },
                  {a, b});
  check_gradients([](const std::vector<Tensor>& in) { return stack({in[0], in[1]}, 1); }, {a, c});
  check_gradients([](const std::vector<Tensor>& in) { return stack({in[0], in[0] * in[1]}, 0); }, {a, c});
  // An input that needs no gradient gets none.
  Tensor d = random_tensor({2, 3}, gen, DType::f64);
  backward(sum(cat({a, d}, 0)));
  CHECK(ref::host(a.grad()) == std::vector<double>(6, 1.0));
  CHECK_FALSE(d.grad().defined());
}

TEST_CASE("cat and stack name the mismatching tensor") {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({3, 3}).set_name("b");
  CHECK_THROWS_WITH_AS(cat({a, b}, 1), doctest::Contains("tensor 1 tensor 'b' (3, 3) f32 cpu"), UserError);
  CHECK_NOTHROW(cat({a, b}, 0));
  CHECK_THROWS_AS(stack({a, b}, 0), UserError);
  CHECK_THROWS_AS(cat({a, Tensor::zeros({2, 3}, DType::f64)}, 0), UserError);
  CHECK_THROWS_AS(cat({}, 0), UserError);
  CHECK_THROWS_AS(cat({a, Tensor::zeros({2, 3, 1})}, 0), UserError);
}

TEST_CASE("pad fills both ends of an axis") {
  Generator gen(63);
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    Tensor x = random_tensor({2, 3}, gen, dt);
    Tensor y = pad(x, 1, 2, 1, -1.5);
    CHECK(y.shape() == Dims{2, 6});
    std::vector<double> vx = ref::host(x), expect;
    for (int r = 0; r < 2; ++r) {
      expect.insert(expect.end(), {-1.5, -1.5});
      for (int c = 0; c < 3; ++c) expect.push_back(vx[r * 3 + c]);
      expect.push_back(-1.5);
    }
    check_close(y, ref::make(expect, {2, 6}), 0, 0, "pad");
    CHECK(pad(x, 0, 0, 0).shape() == Dims{2, 3});
  }
  Tensor x = grad_leaf({3, 2}, gen);
  check_gradients([](const std::vector<Tensor>& in) { return pad(in[0], 0, 1, 2, 0.5); }, {x});
  check_gradients([](const std::vector<Tensor>& in) { return pad(in[0].transpose(0, 1), -1, 0, 3); }, {x});
  CHECK_THROWS_AS(pad(x, 0, -1, 0), UserError);
}

// ---- indexing ----

TEST_CASE("index_select picks slices along any axis") {
  Generator gen(64);
  Tensor idx = Tensor::from_vector(std::vector<int64_t>{2, 0, 2}, {3});
  for (DType dt : {DType::f32, DType::f64, DType::bf16})
    for (int axis : {0, 1, 2}) {
      INFO(std::string(dtype_name(dt)), " axis ", axis);
      Tensor x = random_tensor({3, 4, 5}, gen, dt);
      Tensor y = index_select(x, axis, idx);
      Dims shape = x.shape();
      shape[axis] = 3;
      std::vector<double> vx = ref::host(x), expect;
      std::vector<int64_t> vi = idx.to_vector<int64_t>();
      for (int64_t i = 0; i < shape.numel(); ++i) {
        std::vector<int64_t> pos = ref::unravel(i, shape);
        pos[axis] = vi[pos[axis]];
        expect.push_back(vx[ref::ravel(pos, x.shape())]);
      }
      check_close(y, ref::make(expect, shape), 0, 0, "index_select");
    }
  Tensor x = grad_leaf({3, 4}, gen);
  for (int axis : {0, 1})
    check_gradients([&](const std::vector<Tensor>& in) { return index_select(in[0], axis, idx); }, {x});
  CHECK_THROWS_AS(index_select(x, 0, Tensor::zeros({2, 2}, DType::i64)), UserError);
  CHECK(index_select(x, 1, Tensor::zeros({0}, DType::i64)).shape() == Dims{3, 0});
}

TEST_CASE("gather reads along an axis with per-position indices") {
  Generator gen(65);
  for (DType dt : {DType::f32, DType::f64, DType::bf16})
    for (int axis : {0, 1, 2}) {
      INFO(std::string(dtype_name(dt)), " axis ", axis);
      Tensor x = random_tensor({3, 4, 5}, gen, dt);
      Dims ishape = x.shape();
      ishape[axis] = 6;  // more picks than the axis holds: repeats
      std::vector<int64_t> vi;
      for (int64_t i = 0; i < ishape.numel(); ++i) vi.push_back(gen.below(static_cast<uint32_t>(x.size(axis))));
      Tensor idx = Tensor::from_vector(vi, ishape);
      std::vector<double> vx = ref::host(x), expect;
      for (int64_t i = 0; i < ishape.numel(); ++i) {
        std::vector<int64_t> pos = ref::unravel(i, ishape);
        pos[axis] = vi[i];
        expect.push_back(vx[ref::ravel(pos, x.shape())]);
      }
      check_close(gather(x, axis, idx), ref::make(expect, ishape), 0, 0, "gather");
    }
  Tensor x = grad_leaf({3, 4}, gen);
  Tensor idx = Tensor::from_vector(std::vector<int64_t>{1, 1, 3, 0, 2, 2, 2, 0, 3}, {3, 3});
  check_gradients([&](const std::vector<Tensor>& in) { return gather(in[0], 1, idx); }, {x});
  Tensor idx0 = Tensor::from_vector(std::vector<int64_t>{2, 0, 0, 1, 1, 1, 2, 2}, {2, 4});
  check_gradients([&](const std::vector<Tensor>& in) { return gather(in[0], 0, idx0); }, {x});
  CHECK_THROWS_WITH_AS(gather(x, 1, Tensor::zeros({2, 3}, DType::i64)), doctest::Contains("sizes differ on axis 0"),
                       UserError);
}

TEST_CASE("cast converts dtypes and routes the gradient back in the source dtype") {
  Generator gen(66);
  Tensor x = grad_leaf({5}, gen);
  Tensor y = cast(x, DType::f32);
  CHECK(y.dtype() == DType::f32);
  check_close(y, x, 1e-7, 0, "cast to f32");
  Tensor w = random_tensor({5}, gen, DType::f32);
  backward(sum(y * w));
  CHECK(x.grad().dtype() == DType::f64);
  check_close(x.grad(), w.to(DType::f64), 0, 0, "gradient of cast");
  Tensor b = cast(x, DType::bf16);
  check_close(b, x, 4e-3, 0, "cast to bf16");
  CHECK(cast(x, DType::f64).impl() == x.impl());
  Tensor i = cast(ref::make({1.7, -2.2}, {2}), DType::i64);
  CHECK(i.to_vector<int64_t>() == std::vector<int64_t>{1, -2});
}

TEST_CASE("view keeps a column slice's elements in place and copies only when the strides forbid it") {
  Generator gen(66);
  Tensor x = random_tensor({2, 3, 16}, gen, DType::f64);
  auto parts = x.split({5, 8, 3}, -1);
  // Splitting the last axis of a column slice: a strided view on the same storage.
  Tensor v = parts[1].view({2, 3, 2, 4});
  CHECK(v.storage() == x.storage());
  CHECK_FALSE(v.is_contiguous());
  CHECK(v.strides() == Dims{48, 16, 4, 1});
  CHECK(ref::host(v) == ref::host(parts[1].reshape({2, 3, 2, 4})));
  // Leading axes that step by whole rows merge; -1 is inferred as in reshape.
  Tensor m = parts[1].view({-1, 8});
  CHECK(m.storage() == x.storage());
  CHECK(m.strides() == Dims{16, 1});
  CHECK(ref::host(m) == ref::host(parts[1].reshape({6, 8})));
  // Merging across the slice's row gap is impossible without a copy: a contiguous copy.
  Tensor c = parts[1].view({2, 24});
  CHECK(c.is_contiguous());
  CHECK(c.storage() != x.storage());
  CHECK(ref::host(c) == ref::host(parts[1].reshape({2, 24})));
  Tensor t = x.transpose(1, 2).view({2, 48});
  CHECK(t.is_contiguous());
  CHECK(ref::host(t) == ref::host(x.transpose(1, 2).reshape({2, 48})));
  CHECK_THROWS_AS(parts[1].view({5, 5}), UserError);
  // Gradients through split + view, and the views' values after a write to the base.
  Tensor a = grad_leaf({2, 3, 16}, gen);
  check_gradients(
      [](const std::vector<Tensor>& in) {
        auto p = in[0].split({5, 8, 3}, -1);
        return cat({p[1].view({6, 2, 4}).reshape({6, 8}) * p[1].view({6, 8}), p[2].view({6, 3})}, 1);
      },
      {a});
}
