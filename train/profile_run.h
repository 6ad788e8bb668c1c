// Profiling a window of training steps (train.profile_steps, `ssmtrain train --profile N`):
// after 2 warm-up steps, N steps are recorded with core/profiler.h, each wrapped in a "step"
// span; then the Chrome trace goes to <run dir>/profile.json and the per-op table to the run
// log. Only the process that logs (the main rank; the others hold RunLog::null()) records.
//
// The trainer's loop holds one ProfileRun and opens one Step per iteration:
//     ProfileRun profile(config_, options_, device_, state_.step, budget_.steps, *log_);
//     while (...) { auto profiled = profile.step(state_.step); ... }
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/profiler.h"
#include "train/config.h"
#include "train/metrics.h"
#include "train/trainer.h"

namespace ssmtrain {

class ProfileRun {
 public:
  // first_step: the step the loop starts at (after a resume); budget_steps: the step it ends
  // at unless --max-steps stops it earlier. log: the run log; nothing is recorded where it
  // is disabled (RunLog::null()).
  ProfileRun(const Config& config, const TrainOptions& options, Device device, int64_t first_step, int64_t budget_steps,
             RunLog& log);
  // A recording cut short (a stop signal, the non-finite guard) is still written, with the
  // steps it holds; after an exception it is only stopped.
  ~ProfileRun();
  ProfileRun(const ProfileRun&) = delete;
  ProfileRun& operator=(const ProfileRun&) = delete;

  // The "step" span of one loop iteration (nothing when the step is not recorded).
  class Step {
   public:
    ~Step();
    Step(const Step&) = delete;
    Step& operator=(const Step&) = delete;

   private:
    friend class ProfileRun;
    explicit Step(ProfileRun& run);
    ProfileRun& run_;
    std::optional<ProfileScope> scope_;
  };
  [[nodiscard]] Step step(int64_t step);

  int64_t first_recorded() const { return start_step_; }  // -1 when nothing will be recorded
  int64_t steps_to_record() const { return count_; }

 private:
  void finish() noexcept;  // stop, write the trace, log the table

  Device device_;
  std::string path_;
  RunLog& log_;
  int64_t start_step_ = -1, count_ = 0, recorded_ = 0;
  bool recording_ = false;
};

}  // namespace ssmtrain
