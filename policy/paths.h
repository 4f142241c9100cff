// Path rules: where a command may run (allowed_dirs) and what it may run
// (executables_dir). Both are enforced on file descriptors, not on strings,
// so that a symlink - present at check time or swapped in afterwards - can
// never lead out.
//
// allowed_dirs (Luminarys shell.allowed_dirs) are paths INSIDE the sandbox,
// like the work dir they bound. The parent checks the work dir lexically
// (INVALID when it is not at or below one of them) and, where a host path
// backs it, resolves it early on the host (precheck_work_dir); the sandbox's
// init then
// enters it with openat2(allowed dir, rest, RESOLVE_BENEATH |
// RESOLVE_NO_MAGICLINKS) after pivot_root, in the sandbox's own view, and
// fchdir()s to the result. The check is the use: no host path mapping and
// no window between them. A symlink out of the allowed dir (absolute, or
// with enough ".."), or an allowed dir that is itself a symlink, fails the
// spawn with INVALID.
//
// executables_dir (ToastStunt's executables/) is a HOST directory. argv[0]
// must name a file inside it: absolute paths, "..", "./", empty names and
// components, backslashes and drive letters are refused with INVALID before
// anything is opened; then the file is opened with openat2(dir, name,
// O_PATH, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) and must be a regular,
// executable, non-set-id file. The sandbox execs that very fd
// (execveat(fd, "", AT_EMPTY_PATH)): the checked file is the executed file.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "isolate/error.h"
#include "isolate/fd.h"

namespace cloister::policy {

// The allowed dir (of `allowed`) that holds `work_dir` (a normalized
// absolute sandbox path), or INVALID. An empty list allows any work dir and
// returns "".
Result<std::string> check_work_dir(const std::vector<std::string>& allowed,
                                   const std::string& work_dir);

// A mount of the sandbox view with a host path behind it (a volume, or a
// host path seen at the same place).
struct HostMount {
  std::string target;  // sandbox path
  std::string source;  // host path
};

// The same resolution as the sandbox's init does, done early on the host
// through the mount that backs the allowed dir, so that the common refusal
// (a symlink leading out) is an INVALID from exec(), decided and audited
// with the rest. Where no host path backs the dir (tmpfs), it lies under a
// different mount than the work dir, or a path does not exist yet, it
// passes: the init's check at start stays the authority.
Status precheck_work_dir(const std::vector<HostMount>& mounts, const std::string& allowed_dir,
                         const std::string& work_dir);

// ToastStunt's path rules for argv[0] in an executables_dir executor.
Status check_executable_name(std::string_view name);

struct Executable {
  Fd fd;                // O_PATH, close-on-exec
  bool script = false;  // starts with "#!": the interpreter must see /dev/fd/N
  std::string path;     // host path, for messages and audit
};

// Checks the name and opens the file beneath dir (see above). INVALID for
// every refusal, including a name that does not exist (as ToastStunt's
// E_INVARG).
Result<Executable> open_executable(const std::string& dir, std::string_view name);

}  // namespace cloister::policy
