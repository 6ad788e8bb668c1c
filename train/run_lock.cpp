#include "train/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include "core/error.h"

namespace ssmtrain {

namespace {

std::string read_holder(int fd) {
  char buf[32] = {};
  const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  std::string s = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s.empty() ? "unknown" : s;
}

}  // namespace

RunDirLock::RunDirLock(const std::string& run_dir) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec)
    throw UserError(detail::concat("cannot create the run directory '", run_dir, "': ", ec.message(),
                                   " (choose another --run-dir or run.dir)"));
  const std::string path = run_dir + "/.lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw UserError(detail::concat("cannot write to the run directory '", run_dir, "' (", path, ": ",
                                   std::strerror(errno), "); choose another --run-dir or run.dir"));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string holder = read_holder(fd_);
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK)
      throw UserError(detail::concat("run directory '", run_dir, "' is in use by another ssmtrain process (pid ",
                                     holder, "); wait for it to finish, or choose another --run-dir or run.name"));
    throw UserError(detail::concat("cannot lock the run directory '", run_dir, "' (", path, ": ",
                                   std::strerror(err), ")"));
  }
  // The holder's pid, for the message above (the lock, not this text, is what excludes).
  const std::string pid = std::to_string(static_cast<long>(::getpid())) + "\n";
  // A failed write costs only the pid in another process's message; the lock is held.
  [[maybe_unused]] const bool wrote =
      ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, pid.data(), pid.size(), 0) == static_cast<ssize_t>(pid.size());
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the descriptor releases the lock
}

}  // namespace ssmtrain
