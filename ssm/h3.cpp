#include "ssm/h3.h"

#include <cmath>
#include <vector>

#include "core/ops.h"
#include "nn/init.h"
#include "ssm/kernels/causal_conv1d.h"
#include "ssm/mixer_util.h"
#include "ssm/s4.h"

namespace ssmtrain {

// The widest filter the depthwise causal conv runs on CUDA (causal_conv1d.h).
constexpr int64_t kMaxConvWidth = 4;

H3::H3(const H3Options& o, Generator& gen) : opt_(o) {
  SSMT_CHECK(o.d_model > 0, "h3: d_model must be positive, got ", o.d_model);
  SSMT_CHECK(o.head_dim >= 1 && o.d_model % o.head_dim == 0, "model.h3.head_dim (", o.head_dim,
             ") must divide d_model (", o.d_model, ")");
  SSMT_CHECK(o.shift_width >= 1, "model.h3.shift_width must be >= 1, got ", o.shift_width);
  SSMT_CHECK(o.dt_min > 0 && o.dt_max >= o.dt_min, "model.h3.dt_min / dt_max: need 0 < dt_min <= dt_max, got ",
             o.dt_min, " and ", o.dt_max);
  disc_ = parse_s4_discretization(o.discretization, "model.h3.discretization");
  D_model_ = o.d_model, P_ = o.head_dim, H_ = o.d_model / o.head_dim;
  const S4InitModes modes = s4_init_modes(o.init, o.d_state);
  N2_ = static_cast<int64_t>(modes.Lambda.size());

  in_proj_ = register_module("in_proj", std::make_shared<Linear>(D_model_, 3 * D_model_, gen));
  // PyTorch's depthwise Conv1d init, U(+-1/sqrt(W)).
  shift_weight_ = register_parameter("shift_weight", Tensor::empty({D_model_, o.shift_width}));
  const double bound = 1.0 / std::sqrt(static_cast<double>(o.shift_width));
  init::uniform_(shift_weight_, gen, -bound, bound);

  std::vector<float> log_dt(H_), log_A_real(H_ * N2_), A_imag(H_ * N2_), B(H_ * N2_ * 2);
  const double lo = std::log(o.dt_min), hi = std::log(o.dt_max);
  for (auto& v : log_dt) v = static_cast<float>(lo + (hi - lo) * gen.uniform());
  for (int64_t h = 0; h < H_; ++h)
    for (int64_t n = 0; n < N2_; ++n) {
      const int64_t i = h * N2_ + n;
      log_A_real[i] = static_cast<float>(std::log(-modes.Lambda[n].real()));
      A_imag[i] = static_cast<float>(modes.Lambda[n].imag());
      B[2 * i] = static_cast<float>(modes.B[n].real()), B[2 * i + 1] = static_cast<float>(modes.B[n].imag());
    }
  log_dt_ = register_parameter("log_dt", Tensor::from_vector(log_dt, {H_}), {param_tag::ssm});
  log_A_real_ = register_parameter("log_A_real", Tensor::from_vector(log_A_real, {H_, N2_}), {param_tag::ssm});
  A_imag_ = register_parameter("A_imag", Tensor::from_vector(A_imag, {H_, N2_}), {param_tag::ssm});
  B_ = register_parameter("B", Tensor::from_vector(B, {H_, N2_, 2}), {param_tag::ssm});
  C_ = register_parameter("C", Tensor::empty({H_, N2_, 2}));  // complex normal, unit variance
  init::normal_(C_, gen, 0.0, std::sqrt(0.5));
  D_ = register_parameter("D", Tensor::empty({H_}), {param_tag::no_decay});
  init::normal_(D_, gen, 0.0, 1.0);
  out_proj_ = register_module("out_proj", std::make_shared<Linear>(D_model_, D_model_, gen));
}

Tensor H3::ssm_kernel(int64_t L) {
  Tensor A = stack({neg(exp(log_A_real_)), A_imag_}, -1);
  return s4d_vandermonde_kernel(exp(log_dt_), A, B_, C_, L, disc_);
}

Tensor H3::shift(const Tensor& k) {
  const int64_t W = opt_.shift_width, L = k.size(1);
  if (W <= kMaxConvWidth) return causal_conv1d(k, shift_weight_).out;
  // Longer filters: the same taps as an fft_conv kernel. causal_conv1d's tap j multiplies the
  // input j - (W - 1) steps back, fft_conv's tap j the input j steps back: reverse the taps,
  // then cut or zero-pad them to L.
  std::vector<int64_t> rev(static_cast<size_t>(W));
  for (int64_t j = 0; j < W; ++j) rev[j] = W - 1 - j;
  Tensor taps = index_select(as_dtype(shift_weight_, k.dtype()), 1,
                             Tensor::from_vector(rev, {W}).to(shift_weight_.device()));
  Tensor K = W >= L ? taps.narrow(1, 0, L) : pad(taps, 1, 0, L - W);
  return fft_conv(k, K);
}

Tensor H3::forward(const Tensor& x) {
  SSMT_CHECK(x.dim() == 3 && x.size(2) == D_model_, "h3: input ", x.describe(), ": expected (B, L, ", D_model_, ")");
  const int64_t Bsz = x.size(0), L = x.size(1), P = P_, H = H_;
  SSMT_CHECK(L >= 1, "h3: input ", x.describe(), " has an empty sequence axis");
  const DType pd = log_dt_.dtype();
  Tensor qkv = linear(x, as_dtype(in_proj_->weight(), x.dtype()), as_dtype(in_proj_->bias(), x.dtype()));
  auto parts = as_dtype(qkv, pd).chunk(3, -1);
  const Tensor &q = parts[0], &v = parts[2];
  Tensor k = shift(parts[1]);
  Tensor K = ssm_kernel(L);  // (H, L)
  Tensor y;
  if (P == 1) {
    Tensor kv = k * v;
    y = q * (fft_conv(kv, K) + kv * D_);
  } else {
    // The P x P memory of each head, flattened into channels (h, i, j); the head's kernel and
    // skip are shared by its P * P channels.
    Tensor kv = (k.view({Bsz, L, H, P, 1}) * v.view({Bsz, L, H, 1, P})).reshape({Bsz, L, H * P * P});
    Tensor Kx = K.unsqueeze(1).expand({H, P * P, L}).reshape({H * P * P, L});
    Tensor Dx = D_.unsqueeze(1).expand({H, P * P}).reshape({H * P * P});
    Tensor S = (fft_conv(kv, Kx) + kv * Dx).view({Bsz, L, H, P, P});
    y = sum(q.view({Bsz, L, H, P, 1}) * S, {3}).reshape({Bsz, L, D_model_});
  }
  y = as_dtype(y, x.dtype());
  return linear(y, as_dtype(out_proj_->weight(), x.dtype()), as_dtype(out_proj_->bias(), x.dtype()));
}

void H3Options::validate(const MixerContext& c) const {
  SSMT_CHECK(dt_min <= dt_max, c.key("dt_min"), " (", format_number(dt_min), ") must not exceed ", c.key("dt_max"),
             " (", format_number(dt_max), ")");
  if (c.name.empty()) return;
  SSMT_CHECK(c.d_model % head_dim == 0, c.key("head_dim"), " (", head_dim, ") must divide model.d_model (",
             c.d_model, ") for h3 layers");
  SSMT_CHECK(c.d_state >= 2 && c.d_state % 2 == 0, "model.d_state (", c.d_state,
             ") must be even and >= 2 for h3 layers (d_state / 2 complex modes of the diagonal SSM)");
}

MixerEntry h3_mixer_entry() {
  auto build = [](const H3Options& options, const MixerContext& c, Generator& gen) -> std::shared_ptr<Mixer> {
    H3Options o = options;
    o.d_model = c.d_model, o.d_state = c.d_state;
    return std::make_shared<H3>(o, gen);
  };
  return mixer_entry<H3Options>({{"h3", "H3: shift SSM and diagonal SSM with multiplicative gating"}}, build, "h3",
                                "H3 layers (Fu et al. 2023; SPECS section 10, docs/h3_hyena.md).");
}

}  // namespace ssmtrain
