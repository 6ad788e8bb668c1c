#include "train/profile_run.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <sstream>

namespace ssmtrain {

namespace {
constexpr int64_t kWarmupSteps = 2;  // the first steps allocate memory and pick kernels
}

ProfileRun::ProfileRun(const Config& config, const TrainOptions& options, Device device, int64_t first_step,
                       int64_t budget_steps, RunLog& log)
    : device_(device), path_(options.run_dir + "/profile.json"), log_(log) {
  const int64_t wanted = options.profile_steps >= 0 ? options.profile_steps : config.train.profile_steps;
  int64_t end = budget_steps;
  if (options.max_steps > 0) end = std::min(end, options.max_steps);
  const int64_t remaining = end - first_step;
  if (wanted <= 0 || remaining <= 0 || !log_.enabled()) return;
  // Warm-up shrinks when the run is too short for it and all the requested steps.
  count_ = std::min(wanted, remaining);
  start_step_ = first_step + std::clamp<int64_t>(remaining - wanted, 0, kWarmupSteps);
}

ProfileRun::~ProfileRun() {
  if (!recording_) return;
  if (std::uncaught_exceptions() > 0) {
    profiler::stop();
    return;
  }
  finish();
}

ProfileRun::Step ProfileRun::step(int64_t step) {
  if (step == start_step_ && !recording_ && recorded_ == 0) {
    profiler::start(device_);
    recording_ = true;
    log_.info("profile: recording steps " + std::to_string(step + 1) + " to " + std::to_string(step + count_));
  }
  if (recording_) profiler::step_boundary(step + 1);  // numbered like the logs: step 1 is the first
  return Step(*this);
}

ProfileRun::Step::Step(ProfileRun& run) : run_(run) {
  if (run_.recording_) scope_.emplace("step");
}

ProfileRun::Step::~Step() {
  if (!scope_) return;
  scope_.reset();
  if (++run_.recorded_ >= run_.count_ && std::uncaught_exceptions() == 0) run_.finish();
}

void ProfileRun::finish() noexcept {
  recording_ = false;
  try {
    profiler::stop();
    profiler::write_chrome_trace(path_);
    std::istringstream table(profiler::summary_table(recorded_));
    for (std::string line; std::getline(table, line);) log_.info(line);
    log_.info("profile: trace written to " + path_ + " (open it in https://ui.perfetto.dev or chrome://tracing)");
  } catch (const std::exception& e) {
    // A profile is a diagnostic: failing to write it must not end the run.
    log_.info(std::string("profile: ") + e.what());
  }
}

}  // namespace ssmtrain
