// Two forms of one selective scan compared bit for bit: the tests of A given as log(-A) and of
// delta recomputed in the backward (test_selective_scan.cpp on the CPU, test_ssm_cuda.cpp on
// the GPU).
#pragma once

#include <doctest/doctest.h>

#include <functional>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "ssm/kernels/selective_scan.h"

namespace ssmtrain::testing {

// run(x, variant) builds the scan of one form from the leaves x.
using ScanVariant = std::function<SelectiveScanResult(const std::vector<Tensor>& x, int variant)>;

// Runs run(x, v) for v = 0 and 1 on fresh leaves sharing the values of `inputs` (undefined
// entries stay undefined), takes sum(cast(out, w's dtype) * w) + sum(h_last) back through
// each, and checks that out, h_last and every leaf's gradient agree bit for bit.
inline void check_scan_variants_bitwise(const std::vector<Tensor>& inputs, const Tensor& w, const ScanVariant& run) {
  auto host = [](const Tensor& t) { return t.to(Device::cpu()).to_vector<double>(); };
  std::vector<std::vector<double>> got[2];
  for (int v = 0; v < 2; ++v) {
    std::vector<Tensor> x;
    for (const Tensor& t : inputs) x.push_back(t.defined() ? t.detach().requires_grad_() : Tensor());
    const SelectiveScanResult r = run(x, v);
    backward(sum(cast(r.out, w.dtype()) * w) + sum(r.h_last));
    got[v] = {host(r.out), host(r.h_last)};
    for (const Tensor& t : x)
      if (t.defined()) got[v].push_back(host(t.grad()));
  }
  REQUIRE(got[0].size() == got[1].size());
  for (size_t k = 0; k < got[0].size(); ++k) {
    CAPTURE(k);  // out, h_last, then the gradients of the defined inputs in order
    CHECK(got[1][k] == got[0][k]);
  }
}

}  // namespace ssmtrain::testing
