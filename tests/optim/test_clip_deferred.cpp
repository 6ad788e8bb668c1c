// The deferred clip and AdamW's device-side skip: clip_grad_norm_deferred against
// clip_grad_norm, step_clipped against clipping then stepping (bitwise, on the CPU and on
// CUDA), a non-finite step that changes nothing and leaves the step counts as if it never
// ran, and (CUDA) updates launched while the previous skip flag is still on the device.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

#include "cuda_stream_block.h"
#include "gradcheck.h"
#include "optim/adamw.h"
#include "optim/clip.h"

using namespace ssmtrain;

namespace {

std::vector<Device> devices_under_test() {
  std::vector<Device> d{Device::cpu()};
  if (cuda_test_device()) d.push_back(Device::cuda(0));
  return d;
}

// Bitwise equality of two f32 tensors (NaN payloads included).
bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  std::vector<float> x = a.to_vector<float>(), y = b.to_vector<float>();
  return std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

// Parameters around the multi-tensor chunk and vector widths, in two groups. On the CPU
// every tensor stays under the size where the norm's loop goes parallel: an OpenMP
// reduction adds the threads' partial sums in no fixed order, so two calls may differ in
// the last bit on a many-core machine.
struct Model {
  std::vector<Tensor> params;
  std::vector<ParamGroup> groups;
  Model(Device device) {
    const std::vector<Dims> shapes = {{1}, {7}, {device.is_cuda() ? 65536 + 5 : 4099}, {40, 25}};
    Generator gen(5);
    ParamGroup decay{"decay", {}, std::nullopt, 1.0, 0.1}, no_decay{"no_decay", {}, std::nullopt, 1.0, 0.0};
    for (size_t i = 0; i < shapes.size(); ++i) {
      Tensor p = random_tensor(shapes[i], gen, DType::f32, device);
      const std::string name = "p" + std::to_string(i);
      p.requires_grad_().set_name(name);
      params.push_back(p);
      (i == 1 ? no_decay : decay).params.push_back({name, p, {}});
    }
    groups = {decay, no_decay};
  }
  // The gradients of step `step` (the same on every device); `nan` puts a NaN into p2's and
  // leaves p1 without a gradient.
  void set_grads(int step, bool nan = false) {
    Generator gen(100 + static_cast<uint64_t>(step));
    for (size_t i = 0; i < params.size(); ++i) {
      Tensor g = random_tensor(params[i].shape(), gen, DType::f32, Device::cpu(), -2, 2);
      if (nan && i == 2) g.data<float>()[3] = NAN;
      if (nan && i == 1) {
        params[i].zero_grad();
        continue;
      }
      params[i].set_grad(g.to(params[i].device()));
    }
  }
  void zero_grads() {
    for (Tensor& p : params) p.zero_grad();
  }
};

void check_same_state(const Model& a, const AdamW& oa, const Model& b, const AdamW& ob) {
  for (size_t i = 0; i < a.params.size(); ++i) {
    INFO("param " << i);
    CHECK(same_bits(a.params[i], b.params[i]));
  }
  auto sa = oa.export_state(), sb = ob.export_state();
  REQUIRE(sa.size() == sb.size());
  for (size_t k = 0; k < sa.size(); ++k) {
    INFO(sa[k].param_name << " " << sa[k].kind);
    CHECK(sa[k].kind == sb[k].kind);
    if (sa[k].kind == "step")
      CHECK(sa[k].value.item<int64_t>() == sb[k].value.item<int64_t>());
    else
      CHECK(same_bits(sa[k].value, sb[k].value));
  }
}

// The synchronous recipe the trainer used: clip, then step unless the norm is not finite.
void reference_step(Model& m, AdamW& opt, double max_norm) {
  if (clip_grad_norm(m.params, max_norm).finite) opt.step();
  m.zero_grads();
}

void deferred_step(Model& m, AdamW& opt, double max_norm) {
  opt.step_clipped(clip_grad_norm_deferred(m.params, max_norm));
  m.zero_grads();
}

}  // namespace

TEST_CASE("clip_grad_norm_deferred gives the synchronous clip's norm, factor and gradients") {
  for (Device device : devices_under_test()) {
    INFO("device " << device.str());
    Model a(device), b(device);
    a.set_grads(1);
    b.set_grads(1);
    ClipResult sync = clip_grad_norm(a.params, 10.0);
    DeviceClip deferred = clip_grad_norm_deferred(b.params, 10.0);
    CHECK(deferred.grads_scaled == device.is_cpu());
    CHECK(deferred.on_cuda() == device.is_cuda());
    ClipResult r = deferred.read();
    REQUIRE(sync.clipped);
    CHECK(r.norm == sync.norm);
    CHECK(r.scale == sync.scale);
    CHECK(r.clipped);
    CHECK(r.finite);
    CHECK_FALSE(r.skip);
    apply_clip_scale(b.params, deferred);
    for (size_t i = 0; i < a.params.size(); ++i) CHECK(same_bits(a.params[i].grad(), b.params[i].grad()));

    // max_norm <= 0 measures only.
    a.set_grads(2);
    ClipResult measured = clip_grad_norm_deferred(a.params, 0.0).read();
    CHECK(measured.norm == clip_grad_norm(a.params, 0.0).norm);
    CHECK_FALSE(measured.clipped);
    CHECK(measured.scale == 1.0);

    // A non-finite loss sets the skip flag; the norm stays finite.
    ClipResult bad_loss = clip_grad_norm_deferred(a.params, 10.0, Tensor::scalar(INFINITY, DType::f64, device)).read();
    CHECK(bad_loss.finite);
    CHECK(bad_loss.skip);
    CHECK_FALSE(clip_grad_norm_deferred(a.params, 10.0, Tensor::scalar(3.5, DType::f64, device)).read().skip);

    // A NaN gradient: not finite, skipped, gradients unchanged (the factor is 1; a NaN may
    // come back as the device's canonical NaN).
    a.set_grads(3, /*nan=*/true);
    Tensor before = a.params[2].grad().clone();
    DeviceClip nan_clip = clip_grad_norm_deferred(a.params, 10.0);
    apply_clip_scale(a.params, nan_clip);
    ClipResult nan_r = nan_clip.read();
    CHECK_FALSE(nan_r.finite);
    CHECK(nan_r.skip);
    CHECK(nan_r.scale == 1.0);
    check_close(a.params[2].grad(), before, 0, 0, "gradient after a factor of 1");
  }
}

TEST_CASE("AdamW step_clipped equals clipping then stepping and a non-finite step changes nothing") {
  for (Device device : devices_under_test()) {
    INFO("device " << device.str());
    Model a(device), b(device);
    AdamW reference(a.groups, 3e-3), deferred(b.groups, 3e-3);
    for (int step = 1; step <= 4; ++step) {
      const bool nan = step == 2;
      reference.set_lr(3e-3 * step / 4);
      deferred.set_lr(3e-3 * step / 4);
      a.set_grads(step, nan);
      b.set_grads(step, nan);
      reference_step(a, reference, 10.0);
      deferred_step(b, deferred, 10.0);
      deferred.resolve_pending();
      CHECK(deferred.pending_updates() == 0);
      INFO("after step " << step);
      CHECK(deferred.step_count() == reference.step_count());
      check_same_state(a, reference, b, deferred);
    }
    CHECK(reference.step_count() == 3);
  }
}

TEST_CASE("AdamW launches an update while the previous skip flag is still on the device") {
#if defined(SSMTRAIN_WITH_CUDA)
  if (!cuda_test_device()) return;
  const Device gpu = Device::cuda(0);
  Model a(gpu), c(gpu);
  AdamW reference(a.groups, 3e-3), held(c.groups, 3e-3);
  a.set_grads(1);
  reference_step(a, reference, 10.0);
  c.set_grads(1);
  deferred_step(c, held, 10.0);
  held.resolve_pending();
  // Skipped then applied, both launched while the stream is held: the second update must
  // use the bias corrections of a second step, not a third (p1 had no gradient in the
  // skipped update, so its count is not in question).
  {
    testing::StreamBlock block(0);
    c.set_grads(2, /*nan=*/true);
    deferred_step(c, held, 10.0);
    c.set_grads(3);
    deferred_step(c, held, 10.0);
    CHECK(held.pending_updates() == 2);  // step 3 went out before step 2's flag was known
    CHECK_FALSE(block.timed_out());
  }
  held.resolve_pending();
  for (int step : {2, 3}) {
    a.set_grads(step, step == 2);
    reference_step(a, reference, 10.0);
  }
  CHECK(held.step_count() == 2);
  check_same_state(a, reference, c, held);

  // Applied then applied: the undecided previous update went ahead, [0] is used.
  {
    testing::StreamBlock block(0);
    c.set_grads(4);
    deferred_step(c, held, 10.0);
    c.set_grads(5);
    deferred_step(c, held, 10.0);
    CHECK(held.pending_updates() == 2);
    CHECK_FALSE(block.timed_out());
  }
  held.resolve_pending();
  for (int step : {4, 5}) {
    a.set_grads(step);
    reference_step(a, reference, 10.0);
  }
  CHECK(held.step_count() == 4);
  check_same_state(a, reference, c, held);
#else
  MESSAGE("CUDA tests skipped: built without CUDA");
#endif
}
