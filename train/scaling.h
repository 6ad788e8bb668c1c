// Scaling laws (SPECS section 8): the Chinchilla "Approach 3" fit of
//   L(N, D) = E + A / N^alpha + B / D^beta
// to (N, D, loss) points, the compute-optimal frontier it implies, and the IsoFLOP
// ("Approach 2") estimate of N_opt(C) from per-budget parabolas.
//
// The fit follows Hoffmann et al. (2022) as specified: parameters (a, b, e, alpha, beta)
// with A = exp(a), B = exp(b), E = exp(e); the model's log-loss
// LSE(a - alpha log N, b - beta log D, e) against log L under a Huber loss with
// delta = 1e-3, summed (not averaged) over the points; minimised by L-BFGS from every point
// of the grid alpha, beta in {0, 0.5, .., 2}, a, b in {0, 5, .., 25}, e in {-1, -0.5, .., 1};
// the best local minimum wins.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ssmtrain {

struct ScalingPoint {
  double n = 0;     // parameters N
  double d = 0;     // training tokens D
  double loss = 0;  // final loss (nats), > 0
};

struct ScalingLaw {
  double E = 0, A = 0, B = 0, alpha = 0, beta = 0;
  double objective = 0;  // the summed Huber loss at the optimum

  double loss(double n, double d) const;  // E + A / n^alpha + B / d^beta
  // Compute-optimal split of C FLOPs (C = 6 N D): N_opt = G (C/6)^(beta/(alpha+beta)),
  // D_opt = (C/6) / N_opt, G = (alpha A / (beta B))^(1/(alpha+beta)).
  double n_opt(double flops) const;
  double d_opt(double flops) const { return flops / 6.0 / n_opt(flops); }
};

struct ScalingFitOptions {
  double huber_delta = 1e-3;
  int max_iterations = 500;  // L-BFGS iterations per starting point
};

// Why these points cannot identify L(N, D) (empty when they can): the law has separate N and
// D terms, so it needs at least 3 distinct N and 3 distinct D (to a relative 1%), and D must
// not follow N (log D against log N with r^2 > 0.99, as in a ladder at a fixed tokens per
// parameter); otherwise exponents and coefficients trade off freely (e.g. a fit of 2 token
// budgets gives E = 0 and D exponents near 50).
std::string scaling_fit_problem(const std::vector<ScalingPoint>& points);

// Why a fitted law should not be trusted (empty when nothing stands out): an optimum outside
// the region its starting points cover (alpha, beta in [0, 2], log A, log B in [0, 25], log E
// in [-1, 1], each with a margin), where the data no longer pin the parameters down.
std::string scaling_fit_warning(const ScalingLaw& law);

// UserError for fewer than 5 points or a non-positive N, D or loss.
ScalingLaw fit_scaling_law(const std::vector<ScalingPoint>& points, const ScalingFitOptions& options = {});

// Bootstrap intervals of a fitted law: `resamples` refits of the points drawn with
// replacement (resample r uses the seed seed + r, so the result does not depend on the
// thread schedule), each started from `law`, the fit of all points (a resample moves the
// optimum a little; restarting the 4500-point grid for each would cost 4500x as much and
// find the same basin). Resamples that cannot identify the law (scaling_fit_problem) are
// skipped and counted. Each interval is the central `level` (e.g. 0.9) of the refits.
struct ScalingInterval {
  double lo = 0, hi = 0;
};
struct ScalingBootstrap {
  int resamples = 0;  // asked for
  int used = 0;       // identifiable resamples that were fitted
  double level = 0;
  ScalingInterval E, A, B, alpha, beta;
  ScalingInterval exponent;  // a = beta / (alpha + beta) of N_opt ~ C^a
};
ScalingBootstrap bootstrap_scaling_law(const std::vector<ScalingPoint>& points, const ScalingLaw& law, int resamples,
                                       double level = 0.9, uint64_t seed = 1,
                                       const ScalingFitOptions& options = {});

// IsoFLOP analysis: for each budget, a parabola of loss in log N through its runs (at least 3
// distinct N) and its minimum; then N_opt = k C^a fitted by least squares in log-log space
// (at least 2 budgets). A budget whose runs do not bracket a minimum (the lowest loss at its
// smallest or largest size, or a parabola that opens downwards) would place N_opt by
// extrapolation: it is left out and named in `skipped`.
struct IsoFlopBudget {
  double flops = 0;
  double n_opt = 0;     // the parabola's minimiser
  double loss_opt = 0;  // the parabola's minimum
};
struct IsoFlopFit {
  std::vector<IsoFlopBudget> budgets;
  double k = 0, a = 0;  // N_opt = k C^a
  std::vector<std::string> skipped;  // the budgets left out, each with the reason
};
// points: (N, D, loss) with C = 6 N D; runs are grouped by C to a relative tolerance of 1%.
IsoFlopFit fit_isoflop(const std::vector<ScalingPoint>& points);

}  // namespace ssmtrain
