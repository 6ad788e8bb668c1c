// The message of the UserError a callable throws, for tests of error messages.
#pragma once

#include <doctest/doctest.h>

#include <exception>
#include <functional>
#include <string>

#include "core/error.h"

namespace ssmtrain::testing {

// The UserError message that f throws, or "" with a test failure when it throws nothing or
// something else.
inline std::string user_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL_CHECK("expected a UserError, got another exception: " << e.what());
    return "";
  }
  FAIL_CHECK("expected a UserError, nothing was thrown");
  return "";
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace ssmtrain::testing
