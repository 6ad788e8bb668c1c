#include "ssm/hyena.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/ops.h"
#include "nn/init.h"
#include "ssm/kernels/causal_conv1d.h"
#include "ssm/kernels/s4_kernel.h"
#include "ssm/mixer_util.h"

namespace ssmtrain {

std::vector<double> hyena_positions(int64_t L, int64_t Lr, int64_t E) {
  const int64_t bands = (E - 1) / 2;
  const double tden = static_cast<double>(std::max<int64_t>(Lr - 1, 1));
  std::vector<double> pos(static_cast<size_t>(L * E), 0.0);
  for (int64_t t = 0; t < L; ++t) {
    double* row = &pos[t * E];
    row[0] = static_cast<double>(t) / tden;
    const double w = 2.0 * M_PI * static_cast<double>(t) / static_cast<double>(Lr);
    for (int64_t k = 0; k < bands; ++k) {
      // f_k = linspace(1e-4, bands - 1, bands), as the reference's PositionalEmbedding.
      const double f = bands == 1 ? 1e-4 : 1e-4 + (bands - 1 - 1e-4) * static_cast<double>(k) / (bands - 1);
      row[1 + k] = std::cos(f * w);
      row[1 + bands + k] = -std::sin(f * w);
    }
  }
  return pos;
}

std::vector<double> hyena_window(int64_t L, int64_t Lr, int64_t C, const HyenaOptions& o) {
  const double tden = static_cast<double>(std::max<int64_t>(Lr - 1, 1));
  const double slow = std::abs(std::log(o.decay_target)) / o.slow_decay_pct;
  const double fast = std::abs(std::log(o.decay_target)) / o.fast_decay_pct;
  std::vector<double> win(static_cast<size_t>(L * C));
  for (int64_t t = 0; t < L; ++t)
    for (int64_t c = 0; c < C; ++c) {
      const double alpha = C == 1 ? slow : slow + (fast - slow) * static_cast<double>(c) / static_cast<double>(C - 1);
      win[t * C + c] = std::exp(-alpha * static_cast<double>(t) / tden) + o.window_shift;
    }
  return win;
}

Hyena::Hyena(const HyenaOptions& o, Generator& gen) : opt_(o) {
  SSMT_CHECK(o.d_model > 0, "hyena: d_model must be positive, got ", o.d_model);
  SSMT_CHECK(o.order >= 1, "model.hyena.order must be >= 1, got ", o.order);
  SSMT_CHECK(o.filter_emb_dim >= 3 && o.filter_emb_dim % 2 == 1,
             "model.hyena.filter_emb_dim must be odd and >= 3, got ", o.filter_emb_dim);
  SSMT_CHECK(o.short_width >= 1 && o.short_width <= 4, "model.hyena.short_width must be in [1, 4], got ",
             o.short_width);
  D_ = o.d_model, N_ = o.order;
  const int64_t streams = (N_ + 1) * D_, F = o.filter_width;
  in_proj_ = register_module("in_proj", std::make_shared<Linear>(D_, streams, gen));
  short_conv_ = register_module("short_conv", std::make_shared<Conv1dParams>(streams, o.short_width, gen));

  // The filter FFN: PyTorch Linear inits, Sin frequencies at filter_sine_freq.
  auto add_linear = [&](int64_t in, int64_t out, bool bias) {
    LinearOptions lo;
    lo.bias = bias;
    const std::string name = "filter_fc" + std::to_string(filter_linears_.size());
    auto lin = register_module(name, std::make_shared<Linear>(in, out, gen, lo));
    lin->tag_all_parameters(param_tag::ssm);
    filter_linears_.push_back(lin);
  };
  auto add_freq = [&] {
    const std::string name = "filter_freq" + std::to_string(filter_freqs_.size());
    filter_freqs_.push_back(register_parameter(name, Tensor::full({F}, o.filter_sine_freq), {param_tag::ssm}));
  };
  add_linear(o.filter_emb_dim, F, true);
  add_freq();
  for (int64_t i = 0; i < o.filter_layers; ++i) {
    add_linear(F, F, true);
    add_freq();
  }
  add_linear(F, N_ * D_, false);
  filter_bias_ = register_parameter("filter_bias", Tensor::empty({N_, D_}), {param_tag::ssm});
  init::normal_(filter_bias_, gen, 0.0, 1.0);
  out_proj_ = register_module("out_proj", std::make_shared<Linear>(D_, D_, gen));
}

void Hyena::ensure_constants(int64_t L) {
  const Tensor& ref = filter_bias_;
  if (pos_.defined() && pos_.size(0) == L && pos_.device() == ref.device() && pos_.dtype() == ref.dtype()) return;
  const int64_t Lr = opt_.l_max > 0 ? opt_.l_max : L;
  NoGradGuard ng;
  pos_ = Tensor::from_vector(hyena_positions(L, Lr, opt_.filter_emb_dim), {L, opt_.filter_emb_dim})
             .to(ref.dtype())
             .to(ref.device());
  window_ = Tensor::from_vector(hyena_window(L, Lr, N_ * D_, opt_), {L, N_ * D_}).to(ref.dtype()).to(ref.device());
}

Tensor Hyena::filters(int64_t L) {
  ensure_constants(L);
  Tensor h = pos_;
  for (size_t i = 0; i < filter_freqs_.size(); ++i)
    h = sin(linear(h, filter_linears_[i]->weight(), filter_linears_[i]->bias()) * filter_freqs_[i]);
  h = linear(h, filter_linears_.back()->weight()) * window_;  // (L, N D)
  return h.transpose(0, 1).contiguous();                      // (N D, L)
}

Tensor Hyena::forward(const Tensor& x) {
  SSMT_CHECK(x.dim() == 3 && x.size(2) == D_, "hyena: input ", x.describe(), ": expected (B, L, ", D_, ")");
  const int64_t L = x.size(1);
  SSMT_CHECK(L >= 1, "hyena: input ", x.describe(), " has an empty sequence axis");
  const DType pd = filter_bias_.dtype();
  Tensor proj = linear(x, as_dtype(in_proj_->weight(), x.dtype()), as_dtype(in_proj_->bias(), x.dtype()));
  Tensor uc = as_dtype(causal_conv1d(proj, short_conv_->weight, short_conv_->bias).out, pd);
  auto streams = uc.chunk(static_cast<int>(N_ + 1), -1);  // x_1 .. x_N, v
  Tensor K = filters(L);                                  // (N D, L)
  Tensor z = streams[N_];
  for (int64_t n = 0; n < N_; ++n)
    z = streams[n] * (fft_conv(z, K.narrow(0, n * D_, D_)) + z * filter_bias_.select(0, n));
  z = as_dtype(z, x.dtype());
  return linear(z, as_dtype(out_proj_->weight(), x.dtype()), as_dtype(out_proj_->bias(), x.dtype()));
}

namespace {

struct HyenaState : MixerState {
  Tensor conv;                  // (B, (N+1) D, short_width - 1) the short conv's window
  std::vector<Tensor> history;  // per long conv: (B, t, D) its inputs so far, newest first
  Tensor taps;                  // (T, N D) the filters' first T >= t taps, tap-major
  int64_t t = 0;
};

}  // namespace

std::unique_ptr<MixerState> Hyena::init_state(int64_t batch, Device device, DType dtype) {
  SSMT_CHECK(opt_.l_max > 0,
             "hyena: generation needs the filters' reference length: set model.hyena.l_max "
             "(or train.seq_len, which the model builder uses)");
  auto st = std::make_unique<HyenaState>();
  st->conv = Tensor::zeros({batch, (N_ + 1) * D_, opt_.short_width - 1}, dtype, device);
  st->history.resize(static_cast<size_t>(N_));
  return st;
}

Tensor Hyena::step(const Tensor& x_t, MixerState& state) {
  auto& s = dynamic_cast<HyenaState&>(state);
  SSMT_CHECK(x_t.dim() == 2 && x_t.size(1) == D_, "hyena: step input ", x_t.describe(), ": expected (B, ", D_, ")");
  NoGradGuard ng;
  const DType pd = filter_bias_.dtype();
  Tensor proj = linear(x_t, as_dtype(in_proj_->weight(), x_t.dtype()), as_dtype(in_proj_->bias(), x_t.dtype()));
  Tensor uc = as_dtype(causal_conv1d_step(proj.contiguous(), s.conv, short_conv_->weight, short_conv_->bias), pd);
  auto streams = uc.chunk(static_cast<int>(N_ + 1), -1);
  if (!s.taps.defined() || s.taps.size(0) <= s.t) {  // the filters for twice the length so far
    const int64_t T = std::max<int64_t>(opt_.l_max, 2 * (s.t + 1));
    s.taps = filters(T).transpose(0, 1).contiguous();
  }
  const int64_t n_taps = s.t + 1;
  Tensor z = streams[N_];
  for (int64_t n = 0; n < N_; ++n) {
    Tensor& hist = s.history[n];
    hist = hist.defined() ? cat({z.unsqueeze(1), hist}, 1) : z.unsqueeze(1).contiguous();
    Tensor conv = sum(hist * s.taps.narrow(0, 0, n_taps).narrow(1, n * D_, D_), {1});  // (B, D)
    z = streams[n] * (conv + z * filter_bias_.select(0, n));
  }
  ++s.t;
  z = as_dtype(z, x_t.dtype());
  return linear(z, as_dtype(out_proj_->weight(), x_t.dtype()), as_dtype(out_proj_->bias(), x_t.dtype()));
}

void HyenaOptions::validate(const MixerContext& c) const {
  SSMT_CHECK(filter_emb_dim % 2 == 1, c.key("filter_emb_dim"), " (", filter_emb_dim,
             ") must be odd: t and (filter_emb_dim - 1) / 2 cosine/sine pairs");
}

MixerEntry hyena_mixer_entry() {
  auto build = [](const HyenaOptions& options, const MixerContext& c, Generator& gen) -> std::shared_ptr<Mixer> {
    HyenaOptions o = options;
    o.d_model = c.d_model;
    // Fixed from the config (not from the first input), so evaluation at another length uses
    // the positions the filters were trained on.
    if (o.l_max == 0) o.l_max = c.seq_len;
    return std::make_shared<Hyena>(o, gen);
  };
  return mixer_entry<HyenaOptions>({{"hyena", "Hyena operator: implicit long convolutions with gating"}}, build,
                                   "hyena", "Hyena layers (Poli et al. 2023; SPECS section 10, docs/h3_hyena.md).");
}

}  // namespace ssmtrain
