// Scaling-law fits (SPECS 8) on synthetic points drawn from known laws.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "train/scaling.h"

using namespace ssmtrain;

namespace {

// The published Hoffmann et al. fit.
ScalingLaw hoffmann() {
  ScalingLaw l;
  l.E = 1.69, l.A = 406.4, l.B = 410.7, l.alpha = 0.34, l.beta = 0.28;
  return l;
}

// A grid of runs: N in 1e7 .. 1e10, D in 1e8 .. 1e12 (log-spaced), losses from `law`,
// optionally with multiplicative noise exp(sigma * u), u uniform in [-1, 1).
std::vector<ScalingPoint> grid_points(const ScalingLaw& law, double sigma, uint64_t seed) {
  std::vector<ScalingPoint> pts;
  Generator gen(seed);
  for (int i = 0; i < 7; ++i)
    for (int j = 0; j < 7; ++j) {
      const double n = std::pow(10.0, 7.0 + 0.5 * i), d = std::pow(10.0, 8.0 + 4.0 * j / 6.0);
      const double noise = sigma > 0 ? std::exp(sigma * (2.0 * gen.uniform() - 1.0)) : 1.0;
      pts.push_back({n, d, law.loss(n, d) * noise});
    }
  return pts;
}

}  // namespace

TEST_CASE("the Approach 3 fit recovers a known law from exact points") {
  const ScalingLaw truth = hoffmann();
  ScalingLaw fit = fit_scaling_law(grid_points(truth, 0, 1));
  // Exact data: the summed Huber objective has its zero at the true parameters, and L-BFGS
  // from the grid reaches it to optimiser precision. The exponents and E are pinned tightly
  // by 49 points spread over 3 and 4 decades; A and B (exponentials of the fitted log A,
  // log B) inherit a relative error of about log(N) times the exponent error.
  CHECK(fit.objective < 1e-12);
  CHECK(fit.alpha == doctest::Approx(truth.alpha).epsilon(1e-3));
  CHECK(fit.beta == doctest::Approx(truth.beta).epsilon(1e-3));
  CHECK(fit.E == doctest::Approx(truth.E).epsilon(1e-3));
  CHECK(fit.A == doctest::Approx(truth.A).epsilon(2e-2));
  CHECK(fit.B == doctest::Approx(truth.B).epsilon(2e-2));
}

TEST_CASE("the Approach 3 fit is robust to small noise and predicts held-out losses") {
  const ScalingLaw truth = hoffmann();
  ScalingLaw fit = fit_scaling_law(grid_points(truth, 0.002, 7));
  // 0.2% multiplicative noise: predictions at points inside the grid stay within a few
  // noise widths of the law.
  for (double n : {3e7, 4e8, 5e9})
    for (double d : {5e8, 2e10, 3e11}) {
      INFO("N ", n, " D ", d);
      CHECK(fit.loss(n, d) == doctest::Approx(truth.loss(n, d)).epsilon(0.01));
    }
}

TEST_CASE("the compute-optimal frontier minimises the law along C = 6 N D") {
  const ScalingLaw law = hoffmann();
  for (double c : {1e19, 1e21, 1e23}) {
    INFO("C ", c);
    const double n_opt = law.n_opt(c);
    // Brute force over log N: the closed form is the minimiser.
    double best_n = 0, best_l = 1e300;
    for (double ln = std::log(1e6); ln < std::log(1e13); ln += 1e-4) {
      const double n = std::exp(ln), l = law.loss(n, c / 6.0 / n);
      if (l < best_l) best_l = l, best_n = n;
    }
    CHECK(n_opt == doctest::Approx(best_n).epsilon(1e-3));
    CHECK(law.d_opt(c) * n_opt * 6.0 == doctest::Approx(c).epsilon(1e-12));
  }
  // The frontier's exponent is beta / (alpha + beta).
  CHECK(std::log(law.n_opt(1e23) / law.n_opt(1e21)) / std::log(100.0) ==
        doctest::Approx(0.28 / (0.34 + 0.28)).epsilon(1e-9));
}

TEST_CASE("IsoFLOP parabolas find each budget's minimum and the exponent of N_opt") {
  // Runs on IsoFLOP lines of the Hoffmann law: for each C, five sizes around the optimum.
  const ScalingLaw law = hoffmann();
  std::vector<ScalingPoint> pts;
  for (double c : {1e18, 1e19, 1e20, 1e21}) {
    const double center = law.n_opt(c);
    for (double f : {0.25, 0.5, 1.0, 2.0, 4.0}) {
      const double n = center * f;
      pts.push_back({n, c / 6.0 / n, law.loss(n, c / 6.0 / n)});
    }
  }
  IsoFlopFit fit = fit_isoflop(pts);
  REQUIRE(fit.budgets.size() == 4);
  // The loss along an IsoFLOP line is not exactly a parabola in log N, but symmetric samples
  // around the optimum put the parabola's vertex within a few percent of it.
  for (const auto& b : fit.budgets) {
    INFO("C ", b.flops);
    CHECK(b.n_opt == doctest::Approx(law.n_opt(b.flops)).epsilon(0.05));
  }
  CHECK(fit.a == doctest::Approx(0.28 / 0.62).epsilon(0.02));
}

TEST_CASE("an IsoFLOP budget whose lowest loss is at the edge of its sizes is left out and named") {
  // Loss along each budget's sizes; at C2 the sizes stop short of the optimum (the loss still
  // falls at the largest size), at C1 and C3 they bracket it.
  auto bowl = [](double n, double n_opt) { return 2.0 + 0.1 * std::pow(std::log(n / n_opt), 2); };
  std::vector<ScalingPoint> pts;
  for (double n : {1e6, 2e6, 4e6, 8e6}) pts.push_back({n, 1e13 / (6 * n), bowl(n, 3e6)});
  for (double n : {1e6, 2e6, 4e6, 8e6}) pts.push_back({n, 1e14 / (6 * n), bowl(n, 2e7)});
  for (double n : {1e6, 2e6, 4e6, 8e6}) pts.push_back({n, 1e15 / (6 * n), bowl(n, 5e6)});
  const IsoFlopFit fit = fit_isoflop(pts);
  REQUIRE(fit.budgets.size() == 2);
  CHECK(fit.budgets[0].n_opt == doctest::Approx(3e6).epsilon(1e-6));
  CHECK(fit.budgets[1].n_opt == doctest::Approx(5e6).epsilon(1e-6));
  REQUIRE(fit.skipped.size() == 1);
  CHECK(fit.skipped[0].find("C = 1e+14") != std::string::npos);
  CHECK(fit.skipped[0].find("largest size") != std::string::npos);
  CHECK(fit.skipped[0].find("add larger models") != std::string::npos);
  // With one bracketed budget left there is no fit; the message names the budgets left out.
  std::vector<ScalingPoint> one(pts.begin(), pts.begin() + 8);
  CHECK_THROWS_WITH_AS(fit_isoflop(one), doctest::Contains("largest size"), UserError);
}

TEST_CASE("scaling fits reject too few or invalid points by name") {
  std::vector<ScalingPoint> few = {{1e7, 1e9, 3.0}, {1e8, 1e9, 2.8}};
  CHECK_THROWS_WITH_AS(fit_scaling_law(few), doctest::Contains("at least 5"), UserError);
  std::vector<ScalingPoint> bad(5, ScalingPoint{1e7, 1e9, 3.0});
  bad[2].loss = 0;
  CHECK_THROWS_WITH_AS(fit_scaling_law(bad), doctest::Contains("loss > 0"), UserError);
  std::vector<ScalingPoint> two_sizes = {{1e7, 1e9, 3}, {2e7, 5e8, 2.9}, {1e7, 1e9, 3.01}};
  CHECK_THROWS_WITH_AS(fit_isoflop(two_sizes), doctest::Contains("at least 3"), UserError);
}

TEST_CASE("a scaling fit needs 3 distinct N and 3 distinct D; fewer are named, not fitted") {
  std::vector<ScalingPoint> two_budgets;
  for (double n : {1e6, 2e6, 4e6, 8e6})
    for (double d : {1e8, 2e8}) two_budgets.push_back({n, d, 2.0 + 400.0 / std::pow(n, 0.3) + 300.0 / std::pow(d, 0.3)});
  const std::string problem = scaling_fit_problem(two_budgets);
  CHECK(problem.find("these have 4 and 2") != std::string::npos);
  std::vector<ScalingPoint> grid;
  for (double n : {1e6, 2e6, 4e6})
    for (double d : {1e8, 2e8, 4e8}) grid.push_back({n, d, 2.0 + 400.0 / std::pow(n, 0.3) + 300.0 / std::pow(d, 0.3)});
  CHECK(scaling_fit_problem(grid).empty());
  // Values within 1% are one value.
  grid.push_back({1.005e6, 1e8, 3.0});
  CHECK(scaling_fit_problem(grid).empty());
}

TEST_CASE("a fitted law outside the region of its starting points is flagged") {
  ScalingLaw chinchilla;
  chinchilla.E = 1.69, chinchilla.A = 406.4, chinchilla.B = 410.7, chinchilla.alpha = 0.34, chinchilla.beta = 0.28;
  CHECK(scaling_fit_warning(chinchilla).empty());
  ScalingLaw runaway = chinchilla;  // the fit of two token budgets seen in a real sweep
  runaway.E = 1e-300, runaway.B = 9.9e198, runaway.beta = 49.7;
  const std::string w = scaling_fit_warning(runaway);
  CHECK(w.find("beta = 49.7") != std::string::npos);
  CHECK(w.find("log B") != std::string::npos);
  CHECK(w.find("log E") != std::string::npos);
  CHECK(w.find("alpha") == std::string::npos);
}

// Bootstrap intervals: with noise, the 90% intervals of the refits must contain the true
// exponents (the noise of 0.5% moves each fit by a few hundredths, far inside what an
// interval of 49 points spans), be ordered, and be narrower for less noise; exact points give
// intervals of (near) zero width around the truth. Deterministic for a seed.
TEST_CASE("bootstrap intervals of a fitted law contain the truth and shrink with the noise") {
  const ScalingLaw truth = hoffmann();
  const std::vector<ScalingPoint> noisy = grid_points(truth, 0.005, 3);
  const ScalingLaw fit = fit_scaling_law(noisy);
  const ScalingBootstrap ci = bootstrap_scaling_law(noisy, fit, 60, 0.9, 11);
  CHECK(ci.resamples == 60);
  CHECK(ci.used > 50);
  CHECK(ci.alpha.lo <= ci.alpha.hi);
  CHECK(ci.alpha.lo < truth.alpha);
  CHECK(ci.alpha.hi > truth.alpha);
  CHECK(ci.beta.lo < truth.beta);
  CHECK(ci.beta.hi > truth.beta);
  const double a = truth.beta / (truth.alpha + truth.beta);
  CHECK(ci.exponent.lo < a);
  CHECK(ci.exponent.hi > a);
  const ScalingBootstrap again = bootstrap_scaling_law(noisy, fit, 60, 0.9, 11);
  CHECK(again.alpha.lo == ci.alpha.lo);
  CHECK(again.beta.hi == ci.beta.hi);
  const std::vector<ScalingPoint> exact = grid_points(truth, 0, 1);
  const ScalingBootstrap tight = bootstrap_scaling_law(exact, fit_scaling_law(exact), 20, 0.9, 5);
  CHECK(tight.alpha.hi - tight.alpha.lo < 1e-3);
  CHECK(tight.alpha.lo == doctest::Approx(truth.alpha).epsilon(1e-3));
  CHECK(tight.alpha.hi - tight.alpha.lo < 0.1 * (ci.alpha.hi - ci.alpha.lo));
  CHECK_THROWS_AS(bootstrap_scaling_law(noisy, fit, 10, 1.5), UserError);
}

// A Chinchilla ladder (D = 20 N, whatever the number of sizes) cannot separate the N and D
// terms: the fit is refused with the reason, and the same sizes at three budgets each are
// accepted.
TEST_CASE("a ladder at fixed tokens per parameter cannot identify the law") {
  const ScalingLaw truth = hoffmann();
  std::vector<ScalingPoint> ladder, grid;
  for (double n : {1e7, 3e7, 1e8, 3e8, 1e9, 3e9}) {
    ladder.push_back({n, 20 * n * (1 + 0.001 * n / 3e9), truth.loss(n, 20 * n)});  // D rounded a little
    for (double tpp : {5.0, 20.0, 80.0}) grid.push_back({n, tpp * n, truth.loss(n, tpp * n)});
  }
  const std::string why = scaling_fit_problem(ladder);
  CHECK(why.find("follow their sizes") != std::string::npos);
  CHECK(why.find("budget.flops") != std::string::npos);
  CHECK(scaling_fit_problem(grid).empty());
  const ScalingLaw fit = fit_scaling_law(grid);
  CHECK(fit.alpha == doctest::Approx(truth.alpha).epsilon(1e-3));
  CHECK(fit.beta == doctest::Approx(truth.beta).epsilon(1e-3));
}
