// The MoE layer on CUDA against the CPU: the routing (exactly: integer counts and indices),
// dispatch and combine (f32, bf16), and the whole Switch block forward and backward (router
// and experts, the balancing and z losses, top-1 and top-2, with capacity drops and dropless),
// plus the determinism of its gradients and the usage summary. CUDA cases print a visible
// skip without a GPU. Filter: -tc='*MoE*CUDA*' or -tc='moe_*CUDA*'.
//
// Tolerances (cuda_compare.h's two measures: relative 2-norm error, and max error relative
// to max |ref|):
//  - routing, dispatch and the weight stacking: integers, copies and single roundings of
//    the same values, so equality.
//  - combine f32: sums of k <= 2 products per element, the gate gradient a dot product over
//    D <= 96 terms: error <= D * eps = 96 * 6e-8 = 6e-6 relative to the sum of |terms|.
//    kF32 = {2e-5, 2e-4}, the bound the other SSM ops use (same analysis, ~10x margin).
//  - combine bf16: arithmetic in f32, only the outputs and the dyd rows are rounded to bf16
//    (2^-9 = 2e-3 relative per element): kBf16 = {6e-3, 1.2e-2} as for the other ops.
//  - the block in f32 (TF32 off, the default, so cuBLAS computes true f32 products): every
//    value is a chain of at most 6 sums of <= 24 terms (router, fc1, fc2, combine and their
//    transposes in the backward; the weight gradients sum over <= 2T = 148 rows), each with
//    error <= n * eps relative to the sum of |terms|: <= 148 * 6e-8 = 9e-6 worst case for the
//    longest sum, a few 1e-6 for the rest. kF32 applies.
//  - the block in bf16 (activations, expert weights and GEMM operands in bf16, fp32
//    accumulation; router in f32): a value passes through up to four bf16 roundings of
//    2^-9 = 2e-3 each (the input x, the cast weights, the hidden activations h, the output or
//    the gradient rows), so <= 4 x 2e-3 = 8e-3 relative in the 2-norm; a small element of a
//    sum can reach a few times that relative to max |ref|. Bounds {1.2e-2, 3e-2}.
//  - Routing must be the same on both sides: the data are checked to stay > 1e-4 away from
//    any tie of the deciding probabilities, while the f32 router's probabilities are exact
//    to ~1e-6.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "cuda_compare.h"
#include "gradcheck.h"
#include "ssm/kernels/moe_routing.h"
#include "ssm/model.h"
#include "ssm/moe.h"

namespace ssmtrain {
namespace {

using namespace cuda_compare;

constexpr Tolerance kF32{2e-5, 2e-4};
constexpr Tolerance kBf16{6e-3, 1.2e-2};
constexpr Tolerance kBlockBf16{1.2e-2, 3e-2};

struct RouteCase {
  int64_t T, E, k;
};

// The smallest gap between consecutive ranks among the first k + 1 router probabilities
// of any token, computed in f64 on the CPU.
double routing_margin(SwitchMoE& cpu_moe, const Tensor& x_f64) {
  NoGradGuard no_grad;
  const int64_t E = cpu_moe.options().num_experts, k = cpu_moe.options().top_k;
  Tensor w;
  for (const auto& p : cpu_moe.named_parameters())
    if (p.name == "router.weight") w = p.tensor;
  const std::vector<double> p =
      softmax(linear(x_f64.reshape({-1, cpu_moe.options().d_model}), w), -1).to_vector<double>();
  double margin = 1e300;
  for (size_t t = 0; t * E < p.size(); ++t) {
    std::vector<double> row(p.begin() + static_cast<int64_t>(t) * E, p.begin() + static_cast<int64_t>(t + 1) * E);
    std::sort(row.rbegin(), row.rend());
    for (int64_t j = 0; j < std::min(k, E - 1); ++j) margin = std::min(margin, row[j] - row[j + 1]);
  }
  return margin;
}

struct BlockCase {
  int64_t E, top_k;
  double capacity_factor;
  DType dtype;
};

// The block's output, its input gradient and every parameter gradient on `device`, from the
// loss sum(cast(y, f32) * W) + aux (W fixed, bf16-representable).
struct BlockRun {
  Tensor y, dx;
  Tensor y_eval;  // the evaluation-mode output (blocks sized by the busiest expert)
  std::vector<std::pair<std::string, Tensor>> grads;
  ExpertUsage usage;
};
BlockRun run_block(const BlockCase& c, Device device, DType dtype, const Tensor& x_values, const Tensor& w_values) {
  Generator gen(77);
  MoEOptions o;
  o.d_model = 16, o.num_experts = c.E, o.d_ff = 24, o.top_k = c.top_k, o.capacity_factor = c.capacity_factor;
  o.aux_loss_coef = 0.5, o.z_loss_coef = 0.1;
  SwitchMoE moe(o, gen);
  if (dtype == DType::f64) moe.to(DType::f64);
  moe.to(device);
  moe.train();
  clear_tape();
  Tensor x = x_values.to(dtype).to(device).detach();
  x.requires_grad_();
  Tensor y = moe.forward(x);
  Tensor aux = moe.take_aux_loss();
  const DType loss_dtype = dtype == DType::f64 ? DType::f64 : DType::f32;
  Tensor loss = add(sum(mul(cast(y, loss_dtype), w_values.to(loss_dtype).to(device))), cast(aux, loss_dtype));
  backward(loss);
  BlockRun r;
  r.y = y.detach().to(Device::cpu());
  r.dx = x.grad().to(Device::cpu());
  for (const auto& p : moe.named_parameters()) {
    Tensor g = p.tensor.grad();
    r.grads.emplace_back(p.name, g.defined() ? g.to(Device::cpu()) : Tensor::zeros(p.tensor.shape(), DType::f64));
  }
  r.usage = moe.usage();
  moe.eval();
  NoGradGuard no_grad;
  r.y_eval = moe.forward(x).to(Device::cpu());
  return r;
}

}  // namespace

TEST_CASE("moe_route CUDA equals the CPU routing (top-1, top-2, capacity drops, ties, several chunks)") {
  if (!cuda_test_device()) return;
  Generator gen(41);
  // T crosses the 256-token chunks with tails; E up to 64; integer probabilities give ties.
  const RouteCase cases[] = {{1, 1, 1},     {5, 3, 2},     {255, 8, 1},   {257, 8, 2},
                             {1000, 32, 1}, {1000, 32, 2}, {3001, 64, 2}, {4096, 8, 1}};
  for (const RouteCase& c : cases) {
    for (int64_t capacity : {int64_t{1}, std::max<int64_t>(1, c.T * c.k / c.E), std::max<int64_t>(1, c.T)}) {
      for (bool ties : {true, false}) {
        CAPTURE(c.T);
        CAPTURE(c.E);
        CAPTURE(c.k);
        CAPTURE(capacity);
        CAPTURE(ties);
        Tensor probs = random_tensor({c.T, c.E}, gen, DType::f64, Device::cpu(), 0, 4);
        if (ties) {
          std::vector<double> pv = probs.to_vector<double>();
          for (double& v : pv) v = std::floor(v);
          probs = Tensor::from_vector(pv, {c.T, c.E});
        }
        probs = probs.to(DType::f32);
        Tensor usage_cpu = Tensor::zeros({c.E + 2}, DType::f64);
        Tensor usage_dev = Tensor::full({c.E + 2}, 0.0, DType::f64, Device::cuda());
        const MoeRouting want = moe_route(probs, c.k, capacity, usage_cpu);
        const MoeRouting got = moe_route(probs.to(Device::cuda()), c.k, capacity, usage_dev);
        CHECK(got.expert.to_vector<int64_t>() == want.expert.to_vector<int64_t>());
        CHECK(got.slot.to_vector<int64_t>() == want.slot.to_vector<int64_t>());
        CHECK(got.first_counts.to_vector<int64_t>() == want.first_counts.to_vector<int64_t>());
        CHECK(got.counts.to_vector<int64_t>() == want.counts.to_vector<int64_t>());
        CHECK(usage_dev.to_vector<double>() == usage_cpu.to_vector<double>());
      }
    }
  }
}

TEST_CASE("moe_dispatch and moe_combine CUDA match the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(43);
  struct Shape {
    int64_t T, D, E, k, capacity;
  };
  // D = 96 and 64 (16-byte rows in f32 and bf16: the vector copy), D = 5 and 7 (element copy).
  const Shape shapes[] = {{300, 96, 8, 2, 40}, {77, 5, 4, 1, 10}, {513, 64, 16, 2, 513}, {40, 7, 3, 2, 9}};
  for (const Shape& s : shapes) {
    for (DType dt : {DType::f32, DType::bf16}) {
      CAPTURE(s.T);
      CAPTURE(s.D);
      CAPTURE(dtype_name(dt));
      const MoeRouting r = moe_route(random_tensor({s.T, s.E}, gen, DType::f32), s.k, s.capacity);
      const Tensor slot_host = r.slot;
      const int64_t rows = s.E * s.capacity;
      OpFn op = [&](const std::vector<Tensor>& in) {
        const Tensor slot = slot_host.to(in[0].device());
        return std::vector<Tensor>{moe_dispatch(in[0], slot, rows), moe_combine(in[1], slot, in[2])};
      };
      std::vector<Arg> args{{"x", random_tensor({s.T, s.D}, gen, DType::f64), dt},
                            {"yd", random_tensor({rows, s.D}, gen, DType::f64), dt},
                            {"gate", random_tensor({s.T, s.k}, gen, DType::f64), DType::f32}};
      compare_with_cpu(op, args, {"xd", "y"}, dt == DType::bf16 ? kBf16 : kF32, gen);
    }
  }
}

TEST_CASE("moe_stack_weights CUDA equals the CPU (casts are exact roundings, 70 experts in two launches)") {
  if (!cuda_test_device()) return;
  Generator gen(45);
  for (const int64_t E : {int64_t{1}, int64_t{5}, int64_t{70}}) {
    for (const DType dt : {DType::f32, DType::bf16}) {
      CAPTURE(E);
      CAPTURE(dtype_name(dt));
      std::vector<Tensor> host, dev;
      for (int64_t e = 0; e < E; ++e) {
        host.push_back(random_tensor({7, 33}, gen, DType::f32));
        dev.push_back(host.back().to(Device::cuda()));
        host.back().requires_grad_();
        dev.back().requires_grad_();
      }
      const Tensor g = random_tensor({E, 7, 33}, gen, DType::f32).to(dt);
      clear_tape();
      Tensor out_dev = moe_stack_weights(dev, dt);
      backward(sum(mul(cast(out_dev, DType::f32), g.to(DType::f32).to(Device::cuda()))));
      Tensor out_cpu = moe_stack_weights(host, dt);
      backward(sum(mul(cast(out_cpu, DType::f32), g.to(DType::f32))));
      CHECK(out_dev.to(Device::cpu()).to_vector<double>() == out_cpu.to_vector<double>());
      for (int64_t e = 0; e < E; ++e)
        CHECK(dev[e].grad().to(Device::cpu()).to_vector<double>() == host[e].grad().to_vector<double>());
    }
  }
}

const BlockCase kBlockCases[] = {{8, 1, 1.0, DType::f32},  {8, 2, 1.25, DType::f32}, {8, 1, 0.0, DType::f32},
                                 {32, 2, 0.0, DType::f32}, {8, 1, 0.5, DType::bf16}, {8, 2, 0.0, DType::bf16},
                                 {32, 1, 1.0, DType::f32}};

// The block cases' input: x (rounded to the device dtype once; the reference runs in f64 on
// those values), drawn until every token's first k + 1 router probabilities are at least
// 1e-4 apart, so rounding cannot make the two sides route differently. With 32 experts and
// 74 tokens an unscaled draw has a gap below 1e-4 most of the time; x scaled by 4 spreads the
// logits, and a few draws suffice. Returns an undefined tensor when 200 draws all fail.
Tensor block_input(const BlockCase& c, Generator& gen) {
  Generator g2(77);
  MoEOptions o;
  o.d_model = 16, o.num_experts = c.E, o.d_ff = 24, o.top_k = c.top_k;
  SwitchMoE probe(o, g2);
  probe.to(DType::f64);
  for (int attempt = 0; attempt < 200; ++attempt) {
    const Tensor x = mul(random_tensor({2, 37, 16}, gen, DType::f64), 4.0).to(c.dtype).to(DType::f64);
    if (routing_margin(probe, x) > 1e-4) return x;
  }
  return Tensor();
}

TEST_CASE("the Switch MoE block CUDA cases find inputs whose routing has a margin (checked on the CPU)") {
  for (const BlockCase& c : kBlockCases) {
    CAPTURE(c.E);
    CAPTURE(c.top_k);
    Generator gen(1000 + static_cast<uint64_t>(c.E) * 10 + static_cast<uint64_t>(c.top_k));
    CHECK(block_input(c, gen).defined());
  }
}

TEST_CASE("Switch MoE block CUDA matches the CPU in forward and backward (top-1, top-2, drops, dropless)") {
  if (!cuda_test_device()) return;
  for (const BlockCase& c : kBlockCases) {
    CAPTURE(c.E);
    CAPTURE(c.top_k);
    CAPTURE(c.capacity_factor);
    CAPTURE(dtype_name(c.dtype));
    Generator gen(1000 + static_cast<uint64_t>(c.E) * 10 + static_cast<uint64_t>(c.top_k));
    const Tensor x = block_input(c, gen);
    REQUIRE(x.defined());
    const Tensor w = random_tensor({2, 37, 16}, gen, DType::f64).to(DType::bf16).to(DType::f64);
    const BlockRun ref = run_block(c, Device::cpu(), DType::f64, x, w);
    const BlockRun dev = run_block(c, Device::cuda(), c.dtype, x, w);
    const Tolerance tol = c.dtype == DType::bf16 ? kBlockBf16 : kF32;
    CHECK(dev.usage.tokens_routed == ref.usage.tokens_routed);
    CHECK(dev.usage.dropped == ref.usage.dropped);
    CHECK(dev.usage.assignments == ref.usage.assignments);
    if (c.capacity_factor == 0.5) CHECK(ref.usage.dropped > 0);
    expect_near(dev.y.to(DType::f64), ref.y, tol, "y");
    expect_near(dev.dx.to(DType::f64), ref.dx, tol, "dx");
    expect_near(dev.y_eval.to(DType::f64), ref.y_eval, tol, "y in evaluation");
    REQUIRE(dev.grads.size() == ref.grads.size());
    for (size_t i = 0; i < ref.grads.size(); ++i)
      expect_near(dev.grads[i].second.to(DType::f64), ref.grads[i].second, tol, "d" + ref.grads[i].first);
  }
}

TEST_CASE("MoE expert pipeline CUDA at a real size matches the CPU (64 experts, d_model 512, d_ff 1536, bf16)") {
  // The block's pieces at the shapes, on the CUDA routing's own slots (so near-ties
  // in the router cannot make the two sides route differently): dispatch, the two
  // strided-batched GEMMs over 64 experts (cuBLAS, bf16 with fp32 accumulation), GELU and the
  // weighted combine, forward and every gradient, against the CPU in f64.
  if (!cuda_test_device()) return;
  Generator gen(47);
  const int64_t T = 2048, E = 64, D = 512, F = 1536, k = 2, C = 80;  // C = floor(1.25 * k * T / E)
  const MoeRouting r = moe_route(random_tensor({T, E}, gen, DType::f32, Device::cuda()), k, C);
  const Tensor slot_host = r.slot.to(Device::cpu());
  const std::vector<int64_t> slots = slot_host.to_vector<int64_t>();
  REQUIRE(std::count(slots.begin(), slots.end(), -1) > 0);  // some assignments are dropped
  OpFn op = [&](const std::vector<Tensor>& in) {
    const Tensor slot = slot_host.to(in[0].device());
    Tensor xd = moe_dispatch(in[0], slot, E * C).reshape({E, C, D});
    Tensor h = gelu(matmul(xd, in[1].transpose(1, 2)));  // (E, C, F)
    Tensor yd = matmul(h, in[2].transpose(1, 2));        // (E, C, D)
    return std::vector<Tensor>{moe_combine(yd.reshape({E * C, D}), slot, in[3])};
  };
  // Weights at the init scale (U(+-1/sqrt(fan_in))), so the hidden activations are O(1).
  std::vector<Arg> args{{"x", random_tensor({T, D}, gen, DType::f64), DType::bf16},
                        {"w1", mul(random_tensor({E, F, D}, gen, DType::f64), 1.0 / std::sqrt(512.0)), DType::bf16},
                        {"w2", mul(random_tensor({E, D, F}, gen, DType::f64), 1.0 / std::sqrt(1536.0)), DType::bf16},
                        {"gate", random_tensor({T, k}, gen, DType::f64, Device::cpu(), 0, 1), DType::f32}};
  compare_with_cpu(op, args, {"y"}, kBlockBf16, gen);
}

TEST_CASE("Switch MoE block CUDA gradients are deterministic") {
  if (!cuda_test_device()) return;
  Generator gen(5);
  const Tensor x = random_tensor({4, 200, 16}, gen, DType::f64);
  const Tensor w = random_tensor({4, 200, 16}, gen, DType::f64);
  const BlockCase c{16, 2, 1.0, DType::f32};
  const BlockRun a = run_block(c, Device::cuda(), DType::f32, x, w);
  const BlockRun b = run_block(c, Device::cuda(), DType::f32, x, w);
  CHECK(a.y.to_vector<double>() == b.y.to_vector<double>());
  CHECK(a.dx.to_vector<double>() == b.dx.to_vector<double>());
  for (size_t i = 0; i < a.grads.size(); ++i) {
    INFO(a.grads[i].first);
    CHECK(a.grads[i].second.to_vector<double>() == b.grads[i].second.to_vector<double>());
  }
}

TEST_CASE("MoE usage summary CUDA is reduced on the device as on the host and resets the accumulators") {
  for (const Device device : {Device::cpu(), Device::cuda()}) {
    if (device.is_cuda() && !cuda_test_device()) continue;  // the CPU half runs everywhere
    CAPTURE(device.str());
    ModelSpec spec;
    spec.model.mixer = "mamba", spec.model.n_layer = 4, spec.model.d_model = 16, spec.model.vocab_size = 32;
    spec.model.mixers.get<MoEOptions>().every = 2;
    spec.model.mixers.get<MoEOptions>().num_experts = 4;
    spec.model.mixers.get<MoEOptions>().capacity_factor = 0.5;
    Generator gen(2);
    auto model = build_language_model(spec, gen);
    model->to(device);
    model->train();
    Generator data(3);
    Tensor ids = Tensor::randint({2, 24}, data, 0, 32).to(device);
    NoGradGuard no_grad;
    model->forward(ids);
    model->forward(ids);  // two forwards accumulate
    // The summary from the host-read counts: mean dropped share, max busiest / mean load.
    double dropped = 0, max_load = 0;
    const auto usage = moe_usage(*model);
    REQUIRE(usage.size() == 2);
    for (const auto& [name, u] : usage) {
      CHECK(u.tokens == 2 * 48);
      dropped += static_cast<double>(u.dropped) / static_cast<double>(u.assignments) / 2;
      const int64_t busiest = *std::max_element(u.tokens_routed.begin(), u.tokens_routed.end());
      max_load = std::max(max_load, static_cast<double>(busiest) * 4 / static_cast<double>(u.tokens));
    }
    const std::optional<MoeSummary> summary = moe_summary(*model);
    REQUIRE(summary.has_value());
    CHECK(dropped > 0);
    CHECK(summary->dropped == doctest::Approx(dropped).epsilon(1e-12));
    CHECK(summary->max_load == doctest::Approx(max_load).epsilon(1e-12));
    for (const auto& [name, u] : moe_usage(*model)) CHECK(u.assignments == 0);  // reset
  }
}

}  // namespace ssmtrain
