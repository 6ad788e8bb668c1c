// Learning-rate schedules against their closed forms.
#include <doctest/doctest.h>

#include <cmath>
#include <numbers>

#include "core/error.h"
#include "optim/schedule.h"

using namespace ssmtrain;

namespace {
// Relative closeness (doctest's Approx alone has an absolute floor far above these lrs).
doctest::Approx rel(double v) { return doctest::Approx(v).scale(0).epsilon(1e-9); }

ScheduleConfig config(ScheduleKind kind) {
  ScheduleConfig c;
  c.kind = kind;
  c.peak_lr = 1e-3;
  c.min_lr = 1e-4;
  c.warmup_steps = 10;
  c.total_steps = 110;
  return c;
}
}  // namespace

TEST_CASE("warmup is linear and reaches the peak at the last warmup step") {
  for (ScheduleKind k : {ScheduleKind::constant, ScheduleKind::cosine, ScheduleKind::linear, ScheduleKind::wsd}) {
    ScheduleConfig c = config(k);
    CHECK(learning_rate(c, 0) == rel(1e-4));
    CHECK(learning_rate(c, 4) == rel(5e-4));
    CHECK(learning_rate(c, 9) == rel(1e-3));
    CHECK(learning_rate(c, 10) == rel(1e-3));
  }
}

TEST_CASE("cosine schedule follows its closed form") {
  ScheduleConfig c = config(ScheduleKind::cosine);
  // p = (step - 10) / 100; lr = 1e-4 + 0.5 * 9e-4 * (1 + cos(pi p))
  CHECK(learning_rate(c, 35) == rel(1e-4 + 4.5e-4 * (1 + std::cos(std::numbers::pi * 0.25))));
  CHECK(learning_rate(c, 60) == rel(5.5e-4));
  CHECK(learning_rate(c, 85) == rel(1e-4 + 4.5e-4 * (1 - std::sqrt(0.5))));  // cos(3 pi / 4)
  CHECK(learning_rate(c, 109) == rel(1e-4 + 4.5e-4 * (1 + std::cos(std::numbers::pi * 0.99))));
  CHECK(learning_rate(c, 110) == rel(1e-4));
  CHECK(learning_rate(c, 5000) == rel(1e-4));
  // Non-increasing after warmup.
  for (int64_t s = 10; s < 120; ++s) CHECK(learning_rate(c, s + 1) <= learning_rate(c, s));
}

TEST_CASE("linear schedule follows its closed form") {
  ScheduleConfig c = config(ScheduleKind::linear);
  CHECK(learning_rate(c, 35) == rel(1e-3 - 9e-4 * 0.25));
  CHECK(learning_rate(c, 60) == rel(5.5e-4));
  CHECK(learning_rate(c, 100) == rel(1e-3 - 9e-4 * 0.9));
  CHECK(learning_rate(c, 110) == rel(1e-4));
}

TEST_CASE("constant schedule stays at the peak after warmup") {
  ScheduleConfig c = config(ScheduleKind::constant);
  CHECK(learning_rate(c, 50) == rel(1e-3));
  CHECK(learning_rate(c, 1000) == rel(1e-3));
  c.warmup_steps = 0;
  CHECK(learning_rate(c, 0) == rel(1e-3));
}

TEST_CASE("warmup stable decay schedule decays linearly over the last fraction") {
  ScheduleConfig c = config(ScheduleKind::wsd);
  c.total_steps = 100;
  c.decay_fraction = 0.2;  // decay over steps 80..100
  CHECK(learning_rate(c, 50) == rel(1e-3));
  CHECK(learning_rate(c, 79) == rel(1e-3));
  CHECK(learning_rate(c, 80) == rel(1e-3));
  CHECK(learning_rate(c, 85) == rel(1e-3 - 9e-4 * 0.25));
  CHECK(learning_rate(c, 90) == rel(5.5e-4));
  CHECK(learning_rate(c, 100) == rel(1e-4));
  // A decay phase longer than what follows warmup starts right after warmup.
  c.decay_fraction = 1.0;
  CHECK(learning_rate(c, 10) == rel(1e-3));
  CHECK(learning_rate(c, 55) == rel(5.5e-4));
}

TEST_CASE("schedule settings are validated with the key named") {
  ScheduleConfig c = config(ScheduleKind::cosine);
  c.min_lr = 2e-3;
  CHECK_THROWS_WITH_AS(learning_rate(c, 0), doctest::Contains("optim.min_lr"), UserError);
  c = config(ScheduleKind::cosine);
  c.warmup_steps = 200;
  CHECK_THROWS_WITH_AS(learning_rate(c, 0), doctest::Contains("optim.warmup_steps"), UserError);
  CHECK_THROWS_WITH_AS(schedule_kind_from_name("exponential"), doctest::Contains("optim.schedule"), UserError);
  CHECK(schedule_kind_from_name("wsd") == ScheduleKind::wsd);
  CHECK(std::string(schedule_kind_name(ScheduleKind::cosine)) == "cosine");
  // Warmup over the whole run: the decay phase is empty, the last step is at the peak.
  c = config(ScheduleKind::cosine);
  c.warmup_steps = c.total_steps;
  CHECK(learning_rate(c, c.total_steps - 1) == rel(1e-3));
  CHECK(learning_rate(c, c.total_steps) == rel(1e-4));
}
