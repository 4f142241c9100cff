#include "isolate/error.h"

#include <cstring>

namespace cloister {

std::string_view kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::Invalid:
      return "INVALID";
    case ErrorKind::PermissionDenied:
      return "PERMISSION_DENIED";
    case ErrorKind::NotFound:
      return "NOT_FOUND";
    case ErrorKind::Limit:
      return "LIMIT";
    case ErrorKind::Timeout:
      return "TIMEOUT";
    case ErrorKind::Internal:
      return "INTERNAL";
  }
  return "INTERNAL";
}

std::string Error::what() const {
  if (code == 0) return message;
  std::string s = message;
  if (!s.empty()) s += ": ";
  s += std::strerror(code);
  return s;
}

Error Error::wrap(std::string_view context) const {
  Error e = *this;
  std::string m(context);
  if (!message.empty()) {
    m += ": ";
    m += message;
  }
  e.message = std::move(m);
  return e;
}

Error make_error(ErrorKind kind, std::string message, int code) {
  return Error{kind, code, std::move(message)};
}

Error sys_error(std::string_view context, int err) {
  ErrorKind kind = ErrorKind::Internal;
  switch (err) {
    case EPERM:
    case EACCES:
      kind = ErrorKind::PermissionDenied;
      break;
    case ENOENT:
      kind = ErrorKind::NotFound;
      break;
    case EAGAIN:
    case EMFILE:
    case ENFILE:
    case ENOSPC:
    case ENOMEM:
      kind = ErrorKind::Limit;
      break;
    case EINVAL:
      kind = ErrorKind::Invalid;
      break;
    default:
      break;
  }
  return Error{kind, err, std::string(context)};
}

}  // namespace cloister
