#include "ssm/h3.h"

#include <cmath>
#include <complex>
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

  const S4DiagInit init = s4_diag_init(modes, H_, o.dt_min, o.dt_max, gen);  // as S4D's
  log_dt_ = register_parameter("log_dt", Tensor::from_vector(init.log_dt, {H_}), {param_tag::ssm});
  log_A_real_ = register_parameter("log_A_real", Tensor::from_vector(init.log_A_real, {H_, N2_}), {param_tag::ssm});
  A_imag_ = register_parameter("A_imag", Tensor::from_vector(init.A_imag, {H_, N2_}), {param_tag::ssm});
  B_ = register_parameter("B", Tensor::from_vector(init.B, {H_, N2_, 2}), {param_tag::ssm});
  C_ = register_parameter("C", Tensor::empty({H_, N2_, 2}));  // complex normal, unit variance
  init::normal_(C_, gen, 0.0, std::sqrt(0.5));
  D_ = register_parameter("D", Tensor::empty({H_}), {param_tag::no_decay});
  init::normal_(D_, gen, 0.0, 1.0);
  out_proj_ = register_module("out_proj", std::make_shared<Linear>(D_model_, D_model_, gen));
}

Tensor H3::ssm_kernel(int64_t L) {
  return s4d_vandermonde_kernel(exp(log_dt_), s4_diag_A(log_A_real_, A_imag_), B_, C_, L, disc_);
}

Tensor H3::shift(const Tensor& k) {
  const int64_t W = opt_.shift_width, L = k.size(1);
  if (W <= kMaxConvWidth) return causal_conv1d(k, shift_weight_).out;
  // Longer filters: the same taps as an fft_conv kernel. causal_conv1d's tap j multiplies the
  // input j - (W - 1) steps back, fft_conv's tap j the input j steps back: reverse the taps,
  // then cut or zero-pad them to L.
  if (!reversed_taps_.defined() || reversed_taps_.device() != shift_weight_.device()) {
    std::vector<int64_t> rev(static_cast<size_t>(W));
    for (int64_t j = 0; j < W; ++j) rev[j] = W - 1 - j;
    reversed_taps_ = Tensor::from_vector(rev, {W}).to(shift_weight_.device());  // once per device
  }
  Tensor taps = index_select(as_dtype(shift_weight_, k.dtype()), 1, reversed_taps_);
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

namespace {

struct H3State : MixerState {
  Tensor keys;                    // (B, W, D) the last W inputs of the shift SSM, oldest first
  Tensor Ar, Ai, Br, Bi, Cr, Ci;  // (H, 1, N2) Abar, Bbar, C
  Tensor hr, hi;                  // (B, H, P * P, N2) the diagonal SSM's state
};

}  // namespace

std::unique_ptr<MixerState> H3::init_state(int64_t batch, Device device, DType dtype) {
  NoGradGuard ng;
  (void)dtype;  // the state lives in the parameters' dtype, like the convolution mode
  const DType pd = log_dt_.dtype();
  const auto log_dt = log_dt_.to_vector<double>(), lar = log_A_real_.to_vector<double>();
  const auto aim = A_imag_.to_vector<double>(), Bv = B_.to_vector<double>(), Cv = C_.to_vector<double>();
  std::vector<double> ar(H_ * N2_), ai(H_ * N2_), br(H_ * N2_), bi(H_ * N2_), cr(H_ * N2_), ci(H_ * N2_);
  for (int64_t h = 0; h < H_; ++h)
    for (int64_t n = 0; n < N2_; ++n) {
      const int64_t i = h * N2_ + n;
      std::complex<double> z, E;
      s4_discretize_mode({-std::exp(lar[i]), aim[i]}, std::exp(log_dt[h]), disc_, z, E);
      const std::complex<double> bbar = E * std::complex<double>(Bv[2 * i], Bv[2 * i + 1]);
      ar[i] = z.real(), ai[i] = z.imag(), br[i] = bbar.real(), bi[i] = bbar.imag();
      cr[i] = Cv[2 * i], ci[i] = Cv[2 * i + 1];
    }
  auto put = [&](const std::vector<double>& v) { return Tensor::from_vector(v, {H_, 1, N2_}).to(pd).to(device); };
  auto st = std::make_unique<H3State>();
  st->Ar = put(ar), st->Ai = put(ai), st->Br = put(br), st->Bi = put(bi), st->Cr = put(cr), st->Ci = put(ci);
  st->keys = Tensor::zeros({batch, opt_.shift_width, D_model_}, pd, device);
  st->hr = Tensor::zeros({batch, H_, P_ * P_, N2_}, pd, device);
  st->hi = Tensor::zeros({batch, H_, P_ * P_, N2_}, pd, device);
  return st;
}

Tensor H3::step(const Tensor& x_t, MixerState& state) {
  auto& s = dynamic_cast<H3State&>(state);
  SSMT_CHECK(x_t.dim() == 2 && x_t.size(1) == D_model_, "h3: step input ", x_t.describe(), ": expected (B, ", D_model_,
             ")");
  NoGradGuard ng;
  const int64_t Bsz = x_t.size(0), P = P_, H = H_, W = opt_.shift_width;
  const DType pd = log_dt_.dtype();
  Tensor qkv = linear(x_t, as_dtype(in_proj_->weight(), x_t.dtype()), as_dtype(in_proj_->bias(), x_t.dtype()));
  auto parts = as_dtype(qkv, pd).chunk(3, -1);
  const Tensor &q = parts[0], &v = parts[2];
  // The shift SSM: the window of the last W keys against the taps (oldest first).
  s.keys = W == 1 ? parts[1].unsqueeze(1).contiguous() : cat({s.keys.narrow(1, 1, W - 1), parts[1].unsqueeze(1)}, 1);
  Tensor k = sum(s.keys * as_dtype(shift_weight_, pd).transpose(0, 1), {1});  // (B, D)
  Tensor u = (k.view({Bsz, H, P, 1}) * v.view({Bsz, H, 1, P})).reshape({Bsz, H, P * P, 1});
  Tensor hr = s.Ar * s.hr - s.Ai * s.hi + s.Br * u;
  Tensor hi = s.Ar * s.hi + s.Ai * s.hr + s.Bi * u;
  s.hr = hr, s.hi = hi;
  Tensor S = sum(s.Cr * hr - s.Ci * hi, {3}) * 2.0 + D_.view({H, 1}) * u.squeeze(-1);  // (B, H, P * P)
  Tensor y = sum(q.view({Bsz, H, P, 1}) * S.view({Bsz, H, P, P}), {2}).reshape({Bsz, D_model_});
  y = as_dtype(y, x_t.dtype());
  return linear(y, as_dtype(out_proj_->weight(), x_t.dtype()), as_dtype(out_proj_->bias(), x_t.dtype()));
}

void H3Options::validate(const MixerContext& c) const {
  SSMT_CHECK(dt_min <= dt_max, c.key("dt_min"), " (", format_number(dt_min), ") must not exceed ", c.key("dt_max"),
             " (", format_number(dt_max), ")");
  if (c.name.empty()) return;
  SSMT_CHECK(c.d_model % head_dim == 0, c.key("head_dim"), " (", head_dim, ") must divide model.d_model (", c.d_model,
             ") for h3 layers");
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
