// Capabilities: names from a table, and the child-side step that leaves a
// process with exactly the capabilities it was given (default: none).
//
// Parent side: parse and validate names (accepts "CAP_NET_RAW", "net_raw",
// "ALL"). Child side (async-signal-safe, raw syscalls only): drop the bounding
// set to the kept set, then set effective, permitted, inheritable and ambient
// to it, so that a non-root payload keeps them across execve too.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isolate/error.h"

namespace cloister::capabilities {

// Highest capability number this kernel knows (from /proc/sys/kernel/cap_last_cap).
int last_cap();
std::optional<int> from_name(std::string_view name);
std::string name(int cap);  // "CAP_NET_RAW"

// The set to keep: cap_add minus cap_drop, where "ALL" in cap_drop means
// nothing beyond cap_add and "ALL" in cap_add means every capability.
Result<uint64_t> resolve(const std::vector<std::string>& add, const std::vector<std::string>& drop);

// Child side (the init, which gets last from the library: it reads no
// file). Needs CAP_SETPCAP for the bounding set; apply() is called after the
// uid change (with PR_SET_KEEPCAPS) so the final sets survive it. Returns 0
// or errno.
int drop_bounding(uint64_t keep, int last) noexcept;
int apply(uint64_t keep, int last) noexcept;

}  // namespace cloister::capabilities
