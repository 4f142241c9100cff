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
#include <linux/seccomp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

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

int install(const sock_filter* insns, size_t n) noexcept;
// The same for a compiled filter.
inline int apply(const Filter& filter) noexcept {
  return install(filter.insns().data(), filter.insns().size());
}

// Child side: installs a program (SECCOMP_SET_MODE_FILTER, with TSYNC off:
// this thread and its children only); none (n == 0) means unconfined.
// Needs no_new_privs or CAP_SYS_ADMIN. Returns 0 or errno.
inline int install(const sock_filter* insns, size_t n) noexcept {
  if (n == 0) return 0;
  if (n > BPF_MAXINSNS) return EINVAL;
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(n);
  prog.filter = const_cast<sock_filter*>(insns);
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) return errno;
  return 0;
}

}  // namespace cloister::seccomp
