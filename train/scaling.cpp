#include "train/scaling.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>

#include "core/error.h"

namespace ssmtrain {

double ScalingLaw::loss(double n, double d) const { return E + A / std::pow(n, alpha) + B / std::pow(d, beta); }

double ScalingLaw::n_opt(double flops) const {
  const double G = std::pow(alpha * A / (beta * B), 1.0 / (alpha + beta));
  return G * std::pow(flops / 6.0, beta / (alpha + beta));
}

namespace {

using Vec = std::array<double, 5>;  // a, b, e, alpha, beta

double dot(const Vec& x, const Vec& y) {
  double s = 0;
  for (int i = 0; i < 5; ++i) s += x[i] * y[i];
  return s;
}

struct Objective {
  std::vector<double> log_n, log_d, log_loss;
  double delta;

  // Summed Huber loss of the log-space residuals, and its gradient.
  double operator()(const Vec& t, Vec& grad) const {
    grad.fill(0.0);
    double f = 0;
    for (size_t i = 0; i < log_n.size(); ++i) {
      const double u[3] = {t[0] - t[3] * log_n[i], t[1] - t[4] * log_d[i], t[2]};
      const double m = std::max({u[0], u[1], u[2]});
      const double w[3] = {std::exp(u[0] - m), std::exp(u[1] - m), std::exp(u[2] - m)};
      const double s = w[0] + w[1] + w[2];
      const double r = m + std::log(s) - log_loss[i];
      double dr;
      if (std::fabs(r) <= delta) {
        f += 0.5 * r * r;
        dr = r;
      } else {
        f += delta * (std::fabs(r) - 0.5 * delta);
        dr = r > 0 ? delta : -delta;
      }
      const double p0 = w[0] / s, p1 = w[1] / s, p2 = w[2] / s;
      grad[0] += dr * p0;
      grad[1] += dr * p1;
      grad[2] += dr * p2;
      grad[3] -= dr * p0 * log_n[i];
      grad[4] -= dr * p1 * log_d[i];
    }
    return f;
  }
};

// L-BFGS (history 8) with a backtracking Armijo line search; returns the final point and value.
double minimise(const Objective& obj, Vec& x, int max_iterations) {
  constexpr int kHistory = 8;
  Vec g;
  double f = obj(x, g);
  std::vector<Vec> s_hist, y_hist;
  std::vector<double> rho;
  for (int it = 0; it < max_iterations; ++it) {
    if (std::sqrt(dot(g, g)) < 1e-14) break;
    // Two-loop recursion: d = -H g.
    Vec q = g;
    std::vector<double> alpha(s_hist.size());
    for (int k = static_cast<int>(s_hist.size()) - 1; k >= 0; --k) {
      alpha[k] = rho[k] * dot(s_hist[k], q);
      for (int i = 0; i < 5; ++i) q[i] -= alpha[k] * y_hist[k][i];
    }
    double gamma = 1.0;
    if (!s_hist.empty()) gamma = dot(s_hist.back(), y_hist.back()) / dot(y_hist.back(), y_hist.back());
    else gamma = 1.0 / std::max(1.0, std::sqrt(dot(g, g)));
    for (double& v : q) v *= gamma;
    for (size_t k = 0; k < s_hist.size(); ++k) {
      const double beta = rho[k] * dot(y_hist[k], q);
      for (int i = 0; i < 5; ++i) q[i] += s_hist[k][i] * (alpha[k] - beta);
    }
    Vec d;
    for (int i = 0; i < 5; ++i) d[i] = -q[i];
    double slope = dot(g, d);
    if (slope >= 0) {  // not a descent direction: restart from steepest descent
      s_hist.clear(), y_hist.clear(), rho.clear();
      for (int i = 0; i < 5; ++i) d[i] = -g[i] / std::max(1.0, std::sqrt(dot(g, g)));
      slope = dot(g, d);
    }
    double step = 1.0, f_new = f;
    Vec x_new, g_new;
    bool accepted = false;
    for (int ls = 0; ls < 60; ++ls) {
      for (int i = 0; i < 5; ++i) x_new[i] = x[i] + step * d[i];
      f_new = obj(x_new, g_new);
      if (std::isfinite(f_new) && f_new <= f + 1e-4 * step * slope) {
        accepted = true;
        break;
      }
      step *= 0.5;
    }
    if (!accepted) break;
    Vec s, y;
    for (int i = 0; i < 5; ++i) s[i] = x_new[i] - x[i], y[i] = g_new[i] - g[i];
    const double sy = dot(s, y);
    if (sy > 1e-300) {
      if (static_cast<int>(s_hist.size()) == kHistory) s_hist.erase(s_hist.begin()), y_hist.erase(y_hist.begin()), rho.erase(rho.begin());
      s_hist.push_back(s), y_hist.push_back(y), rho.push_back(1.0 / sy);
    }
    const double improvement = f - f_new;
    x = x_new, g = g_new, f = f_new;
    if (improvement <= 1e-16 * std::max(f, 1e-300) && improvement >= 0 && it > 5) break;
  }
  return f;
}

}  // namespace

ScalingLaw fit_scaling_law(const std::vector<ScalingPoint>& points, const ScalingFitOptions& options) {
  SSMT_CHECK(points.size() >= 5, "scaling fit: needs at least 5 (N, D, loss) points, got ", points.size());
  Objective obj;
  obj.delta = options.huber_delta;
  for (const auto& p : points) {
    SSMT_CHECK(p.n > 0 && p.d > 0 && p.loss > 0, "scaling fit: every point needs N, D and loss > 0, got N ", p.n,
               ", D ", p.d, ", loss ", p.loss);
    obj.log_n.push_back(std::log(p.n));
    obj.log_d.push_back(std::log(p.d));
    obj.log_loss.push_back(std::log(p.loss));
  }
  std::vector<Vec> starts;
  for (int ia = 0; ia <= 4; ++ia)
    for (int ib = 0; ib <= 4; ++ib)
      for (int la = 0; la <= 5; ++la)
        for (int lb = 0; lb <= 5; ++lb)
          for (int le = 0; le <= 4; ++le)
            starts.push_back(Vec{5.0 * la, 5.0 * lb, -1.0 + 0.5 * le, 0.5 * ia, 0.5 * ib});
  std::vector<double> value(starts.size());
  std::vector<Vec> result(starts.size());
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t k = 0; k < static_cast<int64_t>(starts.size()); ++k) {
    Vec x = starts[k];
    value[k] = minimise(obj, x, options.max_iterations);
    result[k] = x;
  }
  // The best local minimum (ties: the first start), independent of the thread schedule.
  size_t best = 0;
  for (size_t k = 1; k < starts.size(); ++k)
    if (value[k] < value[best]) best = k;
  const Vec& t = result[best];
  ScalingLaw law;
  law.A = std::exp(t[0]);
  law.B = std::exp(t[1]);
  law.E = std::exp(t[2]);
  law.alpha = t[3];
  law.beta = t[4];
  law.objective = value[best];
  return law;
}

ScalingBootstrap bootstrap_scaling_law(const std::vector<ScalingPoint>& points, const ScalingLaw& law, int resamples,
                                       double level, uint64_t seed, const ScalingFitOptions& options) {
  SSMT_CHECK(resamples >= 0, "scaling bootstrap: resamples must be >= 0, got ", resamples);
  SSMT_CHECK(level > 0 && level < 1, "scaling bootstrap: level must be in (0, 1), got ", level);
  SSMT_CHECK(law.A > 0 && law.B > 0 && law.E > 0, "scaling bootstrap: needs a fitted law");
  ScalingBootstrap out;
  out.resamples = resamples;
  out.level = level;
  const Vec start{std::log(law.A), std::log(law.B), std::log(law.E), law.alpha, law.beta};
  std::vector<Vec> fits(static_cast<size_t>(resamples));
  std::vector<char> ok(static_cast<size_t>(resamples), 0);
#pragma omp parallel for schedule(dynamic, 1)
  for (int r = 0; r < resamples; ++r) {
    std::mt19937_64 rng(seed + static_cast<uint64_t>(r));
    std::uniform_int_distribution<size_t> pick(0, points.size() - 1);
    std::vector<ScalingPoint> sample(points.size());
    for (auto& p : sample) p = points[pick(rng)];
    if (!scaling_fit_problem(sample).empty()) continue;
    Objective obj;
    obj.delta = options.huber_delta;
    for (const auto& p : sample) {
      obj.log_n.push_back(std::log(p.n));
      obj.log_d.push_back(std::log(p.d));
      obj.log_loss.push_back(std::log(p.loss));
    }
    Vec x = start;
    minimise(obj, x, options.max_iterations);
    fits[static_cast<size_t>(r)] = x;
    ok[static_cast<size_t>(r)] = 1;
  }
  // Percentile intervals (nearest rank) of each quantity over the fitted resamples.
  std::vector<std::vector<double>> q(6);
  for (int r = 0; r < resamples; ++r) {
    if (!ok[static_cast<size_t>(r)]) continue;
    const Vec& t = fits[static_cast<size_t>(r)];
    const double v[6] = {std::exp(t[2]), std::exp(t[0]), std::exp(t[1]), t[3], t[4], t[4] / (t[3] + t[4])};
    for (int k = 0; k < 6; ++k) q[static_cast<size_t>(k)].push_back(v[k]);
  }
  out.used = static_cast<int>(q[0].size());
  if (out.used == 0) return out;
  auto interval = [&](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const double tail = (1 - level) / 2 * static_cast<double>(v.size() - 1);
    const auto lo = static_cast<size_t>(std::floor(tail));
    const auto hi = static_cast<size_t>(std::ceil(static_cast<double>(v.size() - 1) - tail));
    return ScalingInterval{v[lo], v[std::min(hi, v.size() - 1)]};
  };
  out.E = interval(q[0]);
  out.A = interval(q[1]);
  out.B = interval(q[2]);
  out.alpha = interval(q[3]);
  out.beta = interval(q[4]);
  out.exponent = interval(q[5]);
  return out;
}

namespace {
std::string format_g(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}
}  // namespace

IsoFlopFit fit_isoflop(const std::vector<ScalingPoint>& points) {
  std::vector<std::pair<double, ScalingPoint>> by_c;
  for (const auto& p : points) {
    SSMT_CHECK(p.n > 0 && p.d > 0 && p.loss > 0, "isoflop fit: every point needs N, D and loss > 0");
    by_c.emplace_back(6.0 * p.n * p.d, p);
  }
  std::sort(by_c.begin(), by_c.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  IsoFlopFit fit;
  for (size_t i = 0; i < by_c.size();) {
    size_t j = i;
    while (j < by_c.size() && by_c[j].first <= by_c[i].first * 1.01) ++j;
    // Least squares loss = c0 + c1 x + c2 x^2 over x = ln N (normal equations, 3x3).
    double S[5] = {0, 0, 0, 0, 0}, T[3] = {0, 0, 0};
    std::vector<double> xs;
    for (size_t k = i; k < j; ++k) {
      const double x = std::log(by_c[k].second.n), y = by_c[k].second.loss;
      double xp = 1;
      for (int e = 0; e < 5; ++e) S[e] += xp, xp *= x;
      T[0] += y, T[1] += y * x, T[2] += y * x * x;
      xs.push_back(x);
    }
    std::sort(xs.begin(), xs.end());
    const auto distinct = std::unique(xs.begin(), xs.end()) - xs.begin();
    const std::string budget = "C = " + format_g(by_c[i].first);
    const auto best = std::min_element(by_c.begin() + i, by_c.begin() + j, [](const auto& x, const auto& y) {
      return x.second.loss < y.second.loss;
    });
    const double best_x = std::log(best->second.n);
    const size_t first = i;
    i = j;
    if (distinct < 3) {
      fit.skipped.push_back(budget + ": runs at " + std::to_string(distinct) +
                            " model size(s); a parabola needs at least 3");
      continue;
    }
    if (best_x <= xs.front() || best_x >= xs[distinct - 1]) {
      fit.skipped.push_back(budget + ": the lowest loss is at the " +
                            (best_x <= xs.front() ? "smallest" : "largest") + " size (N = " +
                            format_g(best->second.n) + "), so the runs do not bracket the minimum; add " +
                            (best_x <= xs.front() ? "smaller" : "larger") + " models");
      continue;
    }
    // Solve [[S0 S1 S2][S1 S2 S3][S2 S3 S4]] c = T by Cramer's rule.
    auto det3 = [](double m[3][3]) {
      return m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
             m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    };
    double M[3][3] = {{S[0], S[1], S[2]}, {S[1], S[2], S[3]}, {S[2], S[3], S[4]}};
    const double det = det3(M);
    double c[3];
    for (int col = 0; col < 3; ++col) {
      double Mc[3][3];
      for (int r = 0; r < 3; ++r)
        for (int q = 0; q < 3; ++q) Mc[r][q] = q == col ? T[r] : M[r][q];
      c[col] = det3(Mc) / det;
    }
    if (!(c[2] > 0)) {
      fit.skipped.push_back(budget + ": the loss parabola in log N opens downwards (no minimum)");
      continue;
    }
    const double x_opt = -c[1] / (2 * c[2]);
    fit.budgets.push_back({by_c[first].first, std::exp(x_opt), c[0] - c[1] * c[1] / (4 * c[2])});
  }
  std::string why;
  for (const std::string& s : fit.skipped) why += "; " + s;
  SSMT_CHECK(fit.budgets.size() >= 2, "isoflop fit: needs at least 2 compute budgets whose runs bracket a minimum, got ",
             fit.budgets.size(), why);
  // ln N_opt = ln k + a ln C by least squares.
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  const double m = static_cast<double>(fit.budgets.size());
  for (const auto& b : fit.budgets) {
    const double x = std::log(b.flops), y = std::log(b.n_opt);
    sx += x, sy += y, sxx += x * x, sxy += x * y;
  }
  fit.a = (m * sxy - sx * sy) / (m * sxx - sx * sx);
  fit.k = std::exp((sy - fit.a * sx) / m);
  return fit;
}

namespace {

// The number of values in v distinct to a relative tolerance.
size_t distinct(std::vector<double> v, double rel) {
  std::sort(v.begin(), v.end());
  size_t n = 0;
  for (size_t i = 0; i < v.size(); ++i)
    if (i == 0 || v[i] > v[i - 1] * (1 + rel)) ++n;
  return n;
}

}  // namespace

std::string scaling_fit_problem(const std::vector<ScalingPoint>& points) {
  std::vector<double> ns, ds;
  for (const auto& p : points) ns.push_back(p.n), ds.push_back(p.d);
  const size_t n = distinct(ns, 0.01), d = distinct(ds, 0.01);
  if (n < 3 || d < 3)
    return "the runs cannot identify L(N, D) = E + A/N^alpha + B/D^beta: it needs at least 3 distinct model sizes N "
           "and 3 distinct token counts D, these have " +
           std::to_string(n) + " and " + std::to_string(d) + "; add values to the grid";
  // D a power of N (a Chinchilla ladder, D = 20 N): log D is a linear function of log N, so
  // A/N^alpha and B/D^beta are the same curve along the runs and trade off freely. The
  // squared correlation of log N and log D says how close to that the runs are.
  double mn = 0, md = 0;
  for (const auto& p : points) mn += std::log(p.n), md += std::log(p.d);
  mn /= static_cast<double>(points.size()), md /= static_cast<double>(points.size());
  double snn = 0, sdd = 0, snd = 0;
  for (const auto& p : points) {
    const double a = std::log(p.n) - mn, b = std::log(p.d) - md;
    snn += a * a, sdd += b * b, snd += a * b;
  }
  const double r2 = snd * snd / (snn * sdd);
  if (r2 <= 0.99) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.4f", r2);
  return std::string("the runs cannot identify L(N, D) = E + A/N^alpha + B/D^beta: their token counts follow their "
                     "sizes (log D against log N has r^2 = ") +
         buf +
         ", as in a ladder at a fixed tokens_per_param), so the N and D terms cannot be told apart; add runs at "
         "other budgets (budget.flops or budget.tokens in the grid)";
}

std::string scaling_fit_warning(const ScalingLaw& law) {
  // The start grid of fit_scaling_law, widened by a margin: an optimum beyond it ran off
  // along a direction the points do not constrain.
  std::string why;
  auto outside = [&](const char* name, double v, double lo, double hi) {
    if (std::isfinite(v) && v >= lo && v <= hi) return;
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s%s = %.4g is outside [%g, %g]", why.empty() ? "" : "; ", name, v, lo, hi);
    why += buf;
  };
  outside("alpha", law.alpha, 0.0, 3.0);
  outside("beta", law.beta, 0.0, 3.0);
  outside("log A", std::log(law.A), -5.0, 30.0);
  outside("log B", std::log(law.B), -5.0, 30.0);
  outside("log E", std::log(law.E), -4.0, 4.0);
  if (why.empty()) return "";
  return "the fit lies outside the region its starting points cover (" + why +
         "): the runs do not pin the law down; add model sizes and token budgets";
}

}  // namespace ssmtrain
