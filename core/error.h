// Errors, in two tiers (docs/design.md):
//  - UserError: the user's mistake (config, data, checkpoint, shapes at the API). The
//    message names the key, file or tensor and what was expected; the CLI prints it and
//    exits with code 2, without a stack trace.
//  - SSMT_ASSERT: an internal invariant. Failing it is a bug in ssmtrain; it throws
//    InternalError with file:line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace ssmtrain {

class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& msg) : std::runtime_error(msg) {}
};

class InternalError : public std::logic_error {
 public:
  explicit InternalError(const std::string& msg) : std::logic_error(msg) {}
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace ssmtrain

// Throw a UserError built from the streamed arguments when cond is false.
#define SSMT_CHECK(cond, ...)                                                        \
  do {                                                                               \
    if (!(cond)) throw ::ssmtrain::UserError(::ssmtrain::detail::concat(__VA_ARGS__)); \
  } while (0)

#define SSMT_ASSERT(cond, ...)                                                           \
  do {                                                                                   \
    if (!(cond))                                                                         \
      throw ::ssmtrain::InternalError(::ssmtrain::detail::concat(                        \
          __FILE__, ":", __LINE__, ": internal error: ", #cond, " ", ##__VA_ARGS__)); \
  } while (0)
