// Resource limits by name. These hosts lack CAP_SYS_RESOURCE, so a limit can
// only be lowered: values above the current hard limit are clamped to it at
// validation time (and reported), never attempted in the child.
#pragma once

#include <sys/resource.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "isolate/error.h"

namespace cloister::rlimits {

struct Limit {
  int resource = 0;
  rlim_t soft = RLIM_INFINITY;
  rlim_t hard = RLIM_INFINITY;
};

// "nofile", "RLIMIT_NOFILE" and "NOFILE" are all accepted.
std::optional<int> from_name(std::string_view name);
std::string name(int resource);  // "nofile"

// Validates soft <= hard and lowers both to the caller's current hard limit.
Result<Limit> make(int resource, rlim_t soft, rlim_t hard);

// Child side: setrlimit; returns 0 or errno.
int apply(const Limit& l) noexcept;

}  // namespace cloister::rlimits
