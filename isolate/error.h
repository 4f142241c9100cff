// Errors are values. Every fallible call in libcloister returns Result<T>
// (std::expected) carrying an Error: a kind that callers branch on, the errno
// that caused it (0 when none), and a message that names what was being done.
// Errors are wrapped with context as they move up, outermost first:
//   "start executor 'shell': mount plan: bind /data: No such file or directory"
// No exception leaves the library.
#pragma once

#include <cerrno>
#include <expected>
#include <string>
#include <string_view>

namespace cloister {

// The kinds a caller may branch on. The names (kind_name) are part of the CLI
// and protocol surface: INVALID, PERMISSION_DENIED, NOT_FOUND, LIMIT, TIMEOUT,
// INTERNAL.
enum class ErrorKind { Invalid, PermissionDenied, NotFound, Limit, Timeout, Internal };

std::string_view kind_name(ErrorKind kind);

struct Error {
  ErrorKind kind = ErrorKind::Internal;
  int code = 0;         // errno, or 0
  std::string message;  // context chain, without the strerror text
  // Set when the failure is the payload's own execve: the command was not
  // found (NotFound) or cannot be executed (other kinds). Shells report
  // these as 127 and 126.
  bool at_exec = false;

  // message + ": " + strerror(code) when code != 0.
  std::string what() const;
  // A copy with "context: " prepended to the message.
  Error wrap(std::string_view context) const;
};

// [[nodiscard]]: a result dropped on the floor is an error ignored. Cast to
// (void) where ignoring one is the intent (best-effort cleanup).
template <class T>
class [[nodiscard]] Result : public std::expected<T, Error> {
 public:
  using std::expected<T, Error>::expected;
  Result(const std::expected<T, Error>& e) : std::expected<T, Error>(e) {}
  Result(std::expected<T, Error>&& e) : std::expected<T, Error>(std::move(e)) {}
};
using Status = Result<void>;

inline std::unexpected<Error> fail(Error e) {
  return std::unexpected<Error>(std::move(e));
}

// A system call failed: the kind is derived from errno (EPERM/EACCES ->
// PermissionDenied, ENOENT -> NotFound, EAGAIN/EMFILE/ENFILE/ENOSPC ->
// Limit, EINVAL -> Invalid, else Internal).
Error sys_error(std::string_view context, int err = errno);
Error make_error(ErrorKind kind, std::string message, int code = 0);
inline Error invalid(std::string message) {
  return make_error(ErrorKind::Invalid, std::move(message));
}
inline Error internal(std::string message, int code = 0) {
  return make_error(ErrorKind::Internal, std::move(message), code);
}

// Prepends context to the error of a failed result, passes a value through.
template <class T>
Result<T> with_context(Result<T> r, std::string_view context) {
  if (!r) return fail(r.error().wrap(context));
  return r;
}

}  // namespace cloister
