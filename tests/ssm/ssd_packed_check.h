// ssd_chunked_packed against ssd_chunked on the slices of the same xBC: the forward and every
// gradient must be bitwise equal (the same kernels run; only where dx, dBm and dCm are
// written differs), and the gradient of xBC must be [dx | dBm | dCm] row by row. Shared by
// the CPU tests (test_ssd.cpp) and the CUDA tests (test_ssm_cuda.cpp).
#pragma once

#include <doctest/doctest.h>

#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "gradcheck.h"
#include "ssm/kernels/ssd.h"

namespace ssmtrain::testing {

struct SsdPackedShape {
  int64_t B, L, H, P, G, N, Q;
};

inline void check_ssd_packed_matches_slices(const SsdPackedShape& s, DType dtype, Device device, Generator& gen,
                                            const Tensor& seq_idx = Tensor()) {
  const int64_t GN = s.G * s.N, W = s.H * s.P + 2 * GN;
  const DType pd = dtype == DType::f64 ? DType::f64 : DType::f32;
  const Tensor xBC0 = random_tensor({s.B, s.L, W}, gen, dtype, device);
  const Tensor dt0 = random_tensor({s.B, s.L, s.H}, gen, dtype, device, -1.5, 0.5);
  const Tensor A0 = random_tensor({s.H}, gen, pd, device, -1.5, -0.2);
  const Tensor D0 = random_tensor({s.H}, gen, pd, device);
  const Tensor bias0 = random_tensor({s.H}, gen, pd, device, -0.3, 0.3);
  const Tensor h00 = random_tensor({s.B, s.H, s.P, s.N}, gen, pd, device);
  const Tensor dy = random_tensor({s.B, s.L, s.H, s.P}, gen, dtype, device);
  const Tensor dh = random_tensor({s.B, s.H, s.P, s.N}, gen, pd, device);
  const Tensor seq = seq_idx.defined() ? seq_idx.to(device) : Tensor();
  auto leaf = [](const Tensor& t) { return t.clone().detach().requires_grad_(); };

  const Tensor xBC = leaf(xBC0), dt_a = leaf(dt0), A_a = leaf(A0), D_a = leaf(D0), bias_a = leaf(bias0),
               h0_a = leaf(h00);
  const SsdResult packed =
      ssd_chunked_packed(xBC, s.H, s.G, s.N, dt_a, A_a, D_a, bias_a, /*dt_softplus=*/true, s.Q, h0_a, seq);
  backward({packed.y, packed.h_last}, {dy, dh});

  auto parts = xBC0.split({s.H * s.P, GN, GN}, -1);
  const Tensor x = leaf(parts[0].contiguous().view({s.B, s.L, s.H, s.P}));
  const Tensor Bm = leaf(parts[1].contiguous().view({s.B, s.L, s.G, s.N}));
  const Tensor Cm = leaf(parts[2].contiguous().view({s.B, s.L, s.G, s.N}));
  const Tensor dt_b = leaf(dt0), A_b = leaf(A0), D_b = leaf(D0), bias_b = leaf(bias0), h0_b = leaf(h00);
  const SsdResult split = ssd_chunked(x, dt_b, A_b, Bm, Cm, D_b, bias_b, true, s.Q, h0_b, seq);
  backward({split.y, split.h_last}, {dy, dh});

  check_close(packed.y, split.y, 0, 0, "y");
  check_close(packed.h_last, split.h_last, 0, 0, "h_last");
  REQUIRE(xBC.grad().defined());
  const Tensor dxBC_ref = cat({x.grad().reshape({s.B, s.L, s.H * s.P}), Bm.grad().reshape({s.B, s.L, GN}),
                               Cm.grad().reshape({s.B, s.L, GN})},
                              -1);
  check_close(xBC.grad(), dxBC_ref, 0, 0, "dxBC = [dx | dBm | dCm]");
  check_close(dt_a.grad(), dt_b.grad(), 0, 0, "ddt");
  check_close(A_a.grad(), A_b.grad(), 0, 0, "dA");
  check_close(D_a.grad(), D_b.grad(), 0, 0, "dD");
  check_close(bias_a.grad(), bias_b.grad(), 0, 0, "ddt_bias");
  check_close(h0_a.grad(), h0_b.grad(), 0, 0, "dh0");
}

}  // namespace ssmtrain::testing
