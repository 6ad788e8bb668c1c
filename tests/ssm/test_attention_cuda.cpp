// causal_attention and rotary_embedding on CUDA against the CPU ops in f64 (the harness of
// cuda_compare.h: inputs drawn in f64 and rounded once to the device dtype, the CPU
// reference run in f64 on exactly those values, identical output gradients on both sides),
// forward and backward, on random data with sizes that are not multiples of the kernels'
// tiles (64 queries / keys forward, 32 and 64 in the backward), grouped-query heads, fewer
// queries than keys (the KV-cache step), and q, k, v read in place from a fused projection.
// CUDA cases print a visible skip without a GPU.
//
// q and k are drawn from U(-2, 2): the scaled scores have a standard deviation of 4/3 and
// reach |s| ~ 5 over a few hundred keys, so the online max changes between key tiles
// (exercising the rescaling of the running sums) while the softmax keeps several keys in
// play (a one-hot softmax would make dQ and dK nearly cancelling sums, whose relative error
// says little).
//
// Tolerances (relative error in the 2-norm; largest elementwise error relative to max |ref|):
//  - bf16 on tensor cores (head dim 64, 128). The inputs are rounded identically on both
//    sides, so the errors are the kernel's own roundings, each a relative 2^-9 = u = 1.95e-3
//    at most per element (u / sqrt(3) rms): the probabilities P rounded to bf16 before
//    O += P V and dV += P^T dO; dS rounded before dQ += dS K and dK += dS^T Q; Dsum =
//    <dO, O> computed from the bf16-rounded O where the reference has the exact O (an
//    error of at most u |dO . O| in dP - Dsum, which is of the size of dP for random data);
//    and the final rounding of every output. Scores and products are accumulated in fp32
//    over <= 128 channels and <= 200 keys (< 1e-5 relative). A gradient thus carries at
//    most three such roundings: <= 3u = 5.9e-3 in the 2-norm (rms ~ 2u / sqrt(3) = 2.3e-3);
//    bound 1e-2. Elementwise, an element is a sum of up to 200 rounded terms of both signs
//    whose errors can align; relative to max |ref| a few u per term is at most ~ 6u = 1.2e-2
//    in practice; bound 3e-2. A wrong index, mask, scale or missing rescale gives O(1).
//  - f32 (generic kernel): fp32 arithmetic throughout against f64: dot products of <= 128
//    terms and sums over <= 200 keys, worst case (128 + 200) eps = 2e-5, typically
//    sqrt(n) eps ~ 1e-6; exp of scores |s| <= 10 adds ~ 10 eps. Bounds 2e-5 relative
//    norm, 2e-4 of max |ref| elementwise (as the other f32 op tests).
//  - bf16 on the generic kernel (head dims other than 64 and 128): fp32 arithmetic, the
//    outputs rounded once (u) and Dsum from the rounded O (u): 6e-3 relative norm,
//    1.2e-2 elementwise (as the other bf16 op tests).
//  - rotary: angles in double on both sides, then one fp32 rotation (2 products and a sum):
//    f32 1e-6 / 1e-6; bf16 output rounding only: 4e-3 / 4e-3.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_compare.h"
#include "gradcheck.h"
#include "ssm/attention.h"
#include "ssm/kernels/attention.h"

namespace ssmtrain {
namespace {

using namespace cuda_compare;

constexpr Tolerance kTensorCore{1e-2, 3e-2};
constexpr Tolerance kF32{2e-5, 2e-4};
constexpr Tolerance kBf16Generic{6e-3, 1.2e-2};

struct Shape {
  int64_t B, Lq, Lk, H, Hkv, D;
};

std::vector<Arg> attention_args(const Shape& s, DType dtype, Generator& gen) {
  return {{"q", random_tensor({s.B, s.Lq, s.H, s.D}, gen, DType::f64, Device::cpu(), -2, 2), dtype},
          {"k", random_tensor({s.B, s.Lk, s.Hkv, s.D}, gen, DType::f64, Device::cpu(), -2, 2), dtype},
          {"v", random_tensor({s.B, s.Lk, s.Hkv, s.D}, gen, DType::f64), dtype}};
}

void compare_attention(const Shape& s, DType dtype, Tolerance tol, Generator& gen) {
  INFO("B ", s.B, " Lq ", s.Lq, " Lk ", s.Lk, " H ", s.H, " Hkv ", s.Hkv, " D ", s.D, " ", dtype_name(dtype));
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  compare_with_cpu(
      [scale](const std::vector<Tensor>& in) {
        return std::vector<Tensor>{causal_attention(in[0], in[1], in[2], scale)};
      },
      attention_args(s, dtype, gen), {"o"}, tol, gen);
}

}  // namespace

TEST_CASE("causal_attention CUDA bf16 tensor-core kernels match the CPU (head dim 64 and 128)") {
  if (!cuda_test_device()) return;
  Generator gen(101);
  for (const Shape s : {Shape{2, 150, 150, 4, 4, 64}, Shape{1, 200, 200, 4, 2, 64}, Shape{2, 77, 77, 2, 2, 128},
                        Shape{1, 130, 130, 4, 1, 128}, Shape{1, 64, 64, 2, 2, 64}, Shape{2, 1, 1, 2, 1, 64}})
    compare_attention(s, DType::bf16, kTensorCore, gen);
}

TEST_CASE("causal_attention CUDA bf16 with fewer queries than keys (KV-cache steps) matches the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(103);
  for (const Shape s : {Shape{2, 1, 97, 4, 2, 64}, Shape{1, 50, 130, 2, 2, 128}, Shape{1, 3, 70, 2, 1, 64}})
    compare_attention(s, DType::bf16, kTensorCore, gen);
}

TEST_CASE("causal_attention CUDA f32 (generic kernel) matches the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(107);
  for (const Shape s :
       {Shape{2, 45, 45, 4, 2, 64}, Shape{1, 70, 70, 2, 2, 40}, Shape{1, 20, 33, 3, 1, 128}, Shape{1, 9, 9, 1, 1, 200}})
    compare_attention(s, DType::f32, kF32, gen);
}

TEST_CASE("causal_attention CUDA bf16 with other head dims (generic kernel) matches the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(109);
  for (const Shape s : {Shape{2, 40, 40, 2, 1, 32}, Shape{1, 35, 35, 2, 2, 96}})
    compare_attention(s, DType::bf16, kBf16Generic, gen);
}

TEST_CASE("causal_attention CUDA reads q, k, v in place from a fused projection") {
  if (!cuda_test_device()) return;
  Generator gen(113);
  for (DType dtype : {DType::bf16, DType::f32}) {
    const int64_t B = 2, L = 90, H = 4, Hkv = 2, D = 64, W = (H + 2 * Hkv) * D;
    compare_with_cpu(
        [&](const std::vector<Tensor>& in) {
          auto parts = in[0].split({H * D, Hkv * D, Hkv * D}, -1);
          return std::vector<Tensor>{causal_attention(parts[0].view({B, L, H, D}), parts[1].view({B, L, Hkv, D}),
                                                      parts[2].view({B, L, Hkv, D}), 0.125)};
        },
        {{"proj", random_tensor({B, L, W}, gen, DType::f64, Device::cpu(), -2, 2), dtype}}, {"o"},
        dtype == DType::bf16 ? kTensorCore : kF32, gen);
  }
}

TEST_CASE("causal_attention CUDA with packed documents matches the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(117);
  // Documents of 50, 1, 90 and 59 positions in row 0, 200 in row 1: boundaries inside and
  // across the 64-position tiles.
  const int64_t B = 2, L = 200;
  std::vector<int32_t> docs(static_cast<size_t>(B * L));
  for (int64_t t = 0; t < L; ++t) docs[t] = t < 50 ? 0 : t < 51 ? 1 : t < 141 ? 2 : 3, docs[L + t] = 7;
  const Tensor seq_idx = Tensor::from_vector(docs, {B, L});
  for (const auto& [dtype, D, tol] : {std::tuple<DType, int64_t, Tolerance>{DType::bf16, 64, kTensorCore},
                                      {DType::bf16, 128, kTensorCore},
                                      {DType::f32, 64, kF32}}) {
    INFO(dtype_name(dtype), " D ", D);
    const Shape s{B, L, L, 4, 2, D};
    compare_with_cpu(
        [&](const std::vector<Tensor>& in) {
          return std::vector<Tensor>{causal_attention(in[0], in[1], in[2], 0.1, seq_idx.to(in[0].device()))};
        },
        attention_args(s, dtype, gen), {"o"}, tol, gen);
  }
}

TEST_CASE("causal_attention CUDA gradients are deterministic") {
  if (!cuda_test_device()) return;
  Generator gen(127);
  for (DType dtype : {DType::bf16, DType::f32}) {
    const Tensor q0 = random_tensor({2, 150, 4, 64}, gen, dtype, Device::cuda(), -3, 3);
    const Tensor k0 = random_tensor({2, 150, 2, 64}, gen, dtype, Device::cuda(), -3, 3);
    const Tensor v0 = random_tensor({2, 150, 2, 64}, gen, dtype, Device::cuda());
    const Tensor w = random_tensor({2, 150, 4, 64}, gen, DType::f32, Device::cuda());
    auto run = [&] {
      Tensor q = q0.detach(), k = k0.detach(), v = v0.detach();
      q.requires_grad_(), k.requires_grad_(), v.requires_grad_();
      backward(sum(mul(cast(causal_attention(q, k, v, 0.125), DType::f32), w)));
      return std::vector<std::vector<double>>{q.grad().to_vector<double>(), k.grad().to_vector<double>(),
                                              v.grad().to_vector<double>()};
    };
    CHECK(run() == run());
  }
}

TEST_CASE("rotary_embedding CUDA matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(131);
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t offset : {0, 4000}) {
      INFO(dtype_name(dtype), " offset ", offset);
      compare_with_cpu(
          [offset](const std::vector<Tensor>& in) {
            return std::vector<Tensor>{rotary_embedding(in[0], offset, 10000.0)};
          },
          {{"x", random_tensor({2, 37, 3, 64}, gen, DType::f64), dtype}}, {"y"},
          dtype == DType::bf16 ? Tolerance{4e-3, 4e-3} : Tolerance{1e-6, 1e-6}, gen);
    }
}

TEST_CASE("attention mixer CUDA: generation with the KV cache equals the full forward (bf16)") {
  if (!cuda_test_device()) return;
  AttentionOptions o;
  o.d_model = 128, o.heads = 2, o.kv_heads = 1, o.head_dim = 64;
  Generator gen(137);
  Attention attn(o, gen);
  attn.to(Device::cuda());
  NoGradGuard ng;
  const int64_t B = 2, L = 80;
  const Tensor x = random_tensor({B, L, 128}, gen, DType::bf16, Device::cuda());
  const Tensor full = attn.forward(x);
  auto state = attn.init_state(B, Device::cuda(), DType::bf16);
  std::vector<Tensor> steps;
  for (int64_t t = 0; t < L; ++t) steps.push_back(attn.step(x.select(1, t).contiguous(), *state).unsqueeze(1));
  // The step attends with one query over the cache through the same key tiles as the
  // forward, but its projections are GEMMs of another shape ((B, D) rows instead of
  // (B L, D)), for which cuBLAS may sum in another order: bf16 values an ulp apart enter the
  // same chain of roundings as the tensor-core comparison above, whose bounds apply.
  expect_near(cat(steps, 1).to(Device::cpu()), full.to(Device::cpu()), kTensorCore, "stepped vs full output");
}

}  // namespace ssmtrain
