// Status codes and the one error type of the native core.
//
// The same table runs through every layer (DESIGN.md, "Errors"): a core StatusCode becomes a
// Python exception (modelserve.errors), a gRPC status and an HTTP status. Keep the enumerators in
// this order: their integer values cross the binding.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace modelserve {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,   // bad shape / datatype / config          -> 400
  kNotFound = 2,          // unknown model / version / tensor        -> 404
  kUnavailable = 3,       // not ready, draining, shut down          -> 503
  kResourceExhausted = 4, // queue full, memory limit                -> 429
  kDeadlineExceeded = 5,  // queue timeout                           -> 504
  kInternal = 6,          // the backend raised, invariant broken    -> 500
  kCancelled = 7,         // the client cancelled a queued request   -> 499
  kPermissionDenied = 8,  // a management call without its token     -> 403
  kUnimplemented = 9,     // a protocol feature modelserve lacks       -> 501
};

const char* status_code_name(StatusCode code);

// A status: a code and a message that names the model, version, tensor, key and the expected
// and actual values involved.
struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;

  static Status ok() { return {}; }
  bool is_ok() const { return code == StatusCode::kOk; }
};

// The exception the core throws for user-visible failures. Internal invariants use assert().
class Error : public std::runtime_error {
 public:
  Error(StatusCode code, std::string message)
      : std::runtime_error(std::move(message)), code_(code) {}
  StatusCode code() const { return code_; }
  Status status() const { return {code_, what()}; }

 private:
  StatusCode code_;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

}  // namespace modelserve

// Precondition on user input: throws Error(code, message) when `cond` is false. The message is
// built only on failure; pass its parts as further arguments, e.g.
//   MS_EXPECTS(n <= max, kInvalidArgument, "batch of ", n, " exceeds max_batch_size ", max);
#define MS_EXPECTS(cond, code, ...)                                                    \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      throw ::modelserve::Error(::modelserve::StatusCode::code,                        \
                                ::modelserve::detail::concat(__VA_ARGS__));            \
    }                                                                                  \
  } while (0)

#define MS_FAIL(code, ...)                                                             \
  throw ::modelserve::Error(::modelserve::StatusCode::code,                            \
                            ::modelserve::detail::concat(__VA_ARGS__))
