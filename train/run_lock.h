// One training process per run directory: an exclusive lock on <run dir>/.lock, taken before
// the run reads or writes anything there and held for the whole run.
//
// flock(2) on an open lock file: the kernel releases it when the process exits, however it
// exits (kill -9 included), so a stale lock never blocks a later run. The holder writes its
// pid into the file for the message a second process prints. Under mpirun only the main
// rank takes it (the other ranks write nothing into the run directory).
#pragma once

#include <string>

namespace ssmtrain {

class RunDirLock {
 public:
  // Creates the directory if needed and takes the lock. UserError (exit 2) naming the
  // directory and the holder's pid when another process holds it, or naming the directory
  // when it cannot be created or written.
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace ssmtrain
