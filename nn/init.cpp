// In-place initialisers on top of the backend's counter-based random fills.
#include "nn/init.h"

#include <cmath>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/ops.h"
#include "nn/module.h"

namespace ssmtrain::init {

namespace {
void require_contiguous(const Tensor& t, const char* what) {
  SSMT_CHECK(t.defined(), what, ": the tensor is undefined");
  SSMT_CHECK(t.is_contiguous(), what, ": ", t.describe(), " must be contiguous");
  SSMT_CHECK(is_floating(t.dtype()), what, ": ", t.describe(), " must be floating");
}
}  // namespace

void normal_(const Tensor& t, Generator& gen, double mean, double std) {
  require_contiguous(t, "init::normal_");
  uint64_t first = gen.advance(static_cast<uint64_t>(t.numel()));
  if (t.numel() > 0) backend(t.device()).fill_normal(t, gen.seed(), first, mean, std);
}

void uniform_(const Tensor& t, Generator& gen, double low, double high) {
  require_contiguous(t, "init::uniform_");
  uint64_t first = gen.advance(static_cast<uint64_t>(t.numel()));
  if (t.numel() > 0) backend(t.device()).fill_uniform(t, gen.seed(), first, low, high);
}

void constant_(const Tensor& t, double value) {
  require_contiguous(t, "init::constant_");
  if (t.numel() > 0) backend(t.device()).fill(t, value);
}

void zeros_(const Tensor& t) { constant_(t, 0.0); }

void scale_(const Tensor& t, double factor) {
  require_contiguous(t, "init::scale_");
  NoGradGuard no_grad;
  Tensor scaled = mul(t.detach(), factor);
  backend(t.device()).copy(scaled, t);
}

int64_t fan_in(const Tensor& t) {
  SSMT_CHECK(t.dim() >= 1, "init::fan_in: ", t.describe(), " has no dimensions");
  if (t.dim() == 1) return t.size(0);
  int64_t receptive = 1;
  for (int i = 2; i < t.dim(); ++i) receptive *= t.size(i);
  return t.size(1) * receptive;
}

void kaiming_uniform_(const Tensor& t, Generator& gen, double a) {
  int64_t fan = fan_in(t);
  SSMT_CHECK(fan > 0, "init::kaiming_uniform_: ", t.describe(), " has fan_in 0");
  double gain = std::sqrt(2.0 / (1.0 + a * a));
  double bound = gain * std::sqrt(3.0 / static_cast<double>(fan));
  uniform_(t, gen, -bound, bound);
}

int rescale_residual_projections(Module& root, int n_residual_branches, const std::vector<std::string>& suffixes) {
  SSMT_CHECK(n_residual_branches > 0, "rescale_residual_projections: n_residual_branches must be positive, got ",
             n_residual_branches);
  double factor = 1.0 / std::sqrt(static_cast<double>(n_residual_branches));
  int count = 0;
  for (const auto& p : root.named_parameters()) {
    for (const auto& s : suffixes) {
      bool match = p.name == s || (p.name.size() > s.size() && p.name.compare(p.name.size() - s.size(), s.size(), s) == 0 &&
                                   p.name[p.name.size() - s.size() - 1] == '.');
      if (match) {
        scale_(p.tensor, factor);
        ++count;
        break;
      }
    }
  }
  return count;
}

}  // namespace ssmtrain::init
