#include "ssm/mamba2.h"

#include <cmath>

#include "core/backend.h"
#include "core/ops.h"
#include "nn/init.h"
#include "ssm/kernels/causal_conv1d.h"
#include "ssm/kernels/gated_norm.h"
#include "ssm/kernels/ssd.h"
#include "ssm/mixer_util.h"

namespace ssmtrain {

Mamba2::Mamba2(const Mamba2Options& o, Generator& gen) : opt_(o) {
  d_inner_ = o.expand * o.d_model;
  SSMT_CHECK(o.headdim > 0 && d_inner_ % o.headdim == 0, "mamba2: d_inner = expand * d_model = ", d_inner_,
             " is not divisible by headdim ", o.headdim);
  nheads_ = d_inner_ / o.headdim;
  SSMT_CHECK(o.ngroups > 0 && nheads_ % o.ngroups == 0, "mamba2: heads ", nheads_, " not divisible by ngroups ",
             o.ngroups);
  conv_dim_ = d_inner_ + 2 * o.ngroups * o.d_state;
  LinearOptions nobias;
  nobias.bias = false;
  in_proj_ = register_module("in_proj",
                             std::make_shared<Linear>(o.d_model, 2 * d_inner_ + 2 * o.ngroups * o.d_state + nheads_,
                                                      gen, nobias));
  conv_ = register_module("conv1d", std::make_shared<Conv1dParams>(conv_dim_, o.d_conv, gen));
  dt_bias_ = register_parameter("dt_bias", Tensor::empty({nheads_}), {param_tag::no_decay});
  init_dt_bias(dt_bias_, gen, o.dt_min, o.dt_max, o.dt_init_floor);
  std::vector<float> alog(static_cast<size_t>(nheads_));
  for (float& a : alog) a = static_cast<float>(std::log(1.0 + 15.0 * gen.uniform()));  // log U(1, 16)
  A_log_ = register_parameter("A_log", Tensor::from_vector(alog, {nheads_}), {param_tag::no_decay});
  D_ = register_parameter("D", Tensor::ones({nheads_}), {param_tag::no_decay});
  norm_weight_ = register_parameter("norm_weight", Tensor::ones({d_inner_}), {param_tag::no_decay});
  out_proj_ = register_module("out_proj", std::make_shared<Linear>(d_inner_, o.d_model, gen, nobias));
}

Tensor Mamba2::mix(const Tensor& xBC, const Tensor& z, const Tensor& dt, const Tensor& h0, Tensor* h_last,
                   const Tensor& seq_idx) {
  const int64_t Bsz = xBC.size(0), L = xBC.size(1), G = opt_.ngroups;
  // x, Bm, Cm are column slices of xBC, read in place; the backward writes their gradients
  // into one gradient of xBC.
  auto r = ssd_chunked_packed(xBC, nheads_, G, opt_.d_state, dt, -exp(A_log_), D_, dt_bias_, /*dt_softplus=*/true,
                              opt_.chunk_size, h0, seq_idx);
  if (h_last) *h_last = r.h_last;
  // Gated RMSNorm: y * silu(z), normalised per group of d_inner / G channels, then the weight.
  return gated_rms_norm(r.y.reshape({Bsz, L, d_inner_}), z, norm_weight_, d_inner_ / G, opt_.norm_eps);
}

Tensor Mamba2::forward(const Tensor& x) { return forward(x, Tensor()); }

Tensor Mamba2::forward(const Tensor& x, const Tensor& seq_idx) {
  SSMT_CHECK(x.dim() == 3 && x.size(2) == opt_.d_model, "mamba2: input ", x.describe(), ": expected (B, L, ",
             opt_.d_model, ")");
  const DType dtp = x.dtype();
  // in_proj as three products (z, xBC, dt), one tape node (linear_split): each part comes out
  // contiguous, and the backward accumulates x's gradient inside the GEMMs instead of
  // assembling the three parts' gradients into one (B, L, 2 d_inner + 2 G N + H) buffer.
  auto parts = linear_split(x, linear_weight(in_proj_->weight(), dtp), {d_inner_, conv_dim_, nheads_});
  Tensor xBC = causal_conv1d(parts[1], conv_->weight, conv_->bias, /*silu=*/true, Tensor(), seq_idx).out;
  Tensor y = mix(xBC, parts[0], parts[2], Tensor(), nullptr, seq_idx);
  return linear(y, linear_weight(out_proj_->weight(), dtp));
}

namespace {
struct Mamba2State : MixerState {
  Tensor conv;  // (B, conv_dim, d_conv - 1)
  Tensor ssm;   // (B, H, P, N)
};
}  // namespace

std::unique_ptr<MixerState> Mamba2::init_state(int64_t batch, Device device, DType dtype) {
  auto s = std::make_unique<Mamba2State>();
  s->conv = Tensor::zeros({batch, conv_dim_, opt_.d_conv - 1}, dtype, device);
  s->ssm = Tensor::zeros({batch, nheads_, opt_.headdim, opt_.d_state}, dtype == DType::f64 ? DType::f64 : DType::f32,
                         device);
  return s;
}

Tensor Mamba2::step(const Tensor& x_t, MixerState& state) {
  auto& s = dynamic_cast<Mamba2State&>(state);
  NoGradGuard ng;
  const DType dtp = x_t.dtype();
  Tensor proj = linear(x_t, linear_weight(in_proj_->weight(), dtp));  // (B, ...)
  auto parts = proj.split({d_inner_, conv_dim_, nheads_}, -1);
  Tensor xBC = causal_conv1d_step(parts[1].contiguous(), s.conv, conv_->weight, conv_->bias, /*silu=*/true);
  Tensor h_last;
  Tensor y = mix(xBC.unsqueeze(1), parts[0].unsqueeze(1), parts[2].unsqueeze(1), s.ssm, &h_last);
  s.ssm = h_last;
  return linear(y.squeeze(1), linear_weight(out_proj_->weight(), dtp));
}

void Mamba2Options::validate(const MixerContext& c) const {
  if (c.name.empty()) return;
  const int64_t d_inner = c.expand * c.d_model;
  SSMT_CHECK(d_inner % headdim == 0, c.key("headdim"), " (", headdim,
             ") must divide d_inner = model.expand * model.d_model = ", d_inner, " for mamba2 layers");
  const int64_t heads = d_inner / headdim;
  SSMT_CHECK(heads % ngroups == 0, c.key("ngroups"), " (", ngroups, ") must divide the number of mamba2 heads ",
             "d_inner / ", c.key("headdim"), " = ", heads);
}

MixerEntry mamba2_mixer_entry() {
  auto build = [](const Mamba2Options& options, const MixerContext& c, Generator& gen) -> std::shared_ptr<Mixer> {
    Mamba2Options o = options;
    o.d_model = c.d_model, o.d_state = c.d_state, o.d_conv = c.d_conv, o.expand = c.expand;
    o.norm_eps = c.norm_eps;
    return std::make_shared<Mamba2>(o, gen);
  };
  return mixer_entry<Mamba2Options>({{"mamba2", "SSD"}}, build);
}

}  // namespace ssmtrain
