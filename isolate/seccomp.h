// seccomp: profiles are data (JSON, in the shape of Docker's seccomp profiles:
// defaultAction, syscalls[] with names, action, errnoRet and args), compiled
// to BPF with libseccomp in the parent before the clone. The child only hands
// the finished program to the kernel (apply), which is async-signal-safe.
//
// Only the native ABI (x86_64 here) is allowed: an x32 or i386 syscall kills
// the whole process with SIGSYS (bad-arch action SCMP_ACT_KILL_PROCESS), under
// every profile. See docs/security.md.
// The built-in default profile is configs/seccomp-default.json, compiled in.
#pragma once

#include <linux/filter.h>

#include <string>
#include <string_view>
#include <vector>

#include "isolate/error.h"

namespace cloister::seccomp {

class Filter {
 public:
  Filter() = default;
  explicit Filter(std::vector<sock_filter> insns) : insns_(std::move(insns)) {}
  // An empty filter means "unconfined": apply() does nothing.
  bool empty() const { return insns_.empty(); }
  const std::vector<sock_filter>& insns() const { return insns_; }

 private:
  std::vector<sock_filter> insns_;
};

// Compiles a profile given as JSON text. Errors name the offending entry.
Result<Filter> compile(std::string_view profile_json);
// "" or "default": the built-in profile; "unconfined": an empty filter;
// otherwise a path to a JSON profile. Compiled results are cached per name.
Result<Filter> load(const std::string& profile);

// Child side: installs the filter (SECCOMP_SET_MODE_FILTER, with TSYNC off).
// Needs no_new_privs or CAP_SYS_ADMIN. Returns 0 or errno.
int apply(const Filter& filter) noexcept;

}  // namespace cloister::seccomp
