// Namespaces: which ones a sandbox gets, from a table, and the UTS step.
// Always new: pid, mount, ipc, uts, cgroup. Network: new (lo only) unless
// network_mode is host. The user namespace is not used: the sandbox runs as
// the configured uid with every capability dropped (see docs/security.md).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "isolate/error.h"
#include "isolate/fd.h"
#include "isolate/spec.h"

namespace cloister::namespaces {

struct Kind {
  std::string_view name;  // as in /proc/PID/ns
  uint64_t clone_flag;
};
const std::vector<Kind>& all();

uint64_t clone_flags(NetworkMode network);

// A valid hostname: 1-64 bytes of [A-Za-z0-9.-], not starting with '-' or '.'.
Status check_hostname(const std::string& hostname);

// A namespace given by path (an OCI config's linux.namespaces[].path, a
// /proc/PID/ns/* or a bind of one): opened, and checked with NS_GET_NSTYPE
// to be of the kind of clone_flag; INVALID naming the path otherwise.
Result<Fd> open_path(const std::string& path, uint64_t clone_flag);
// Whether a namespace fd is the host's of its kind: ours, PID 1's or
// kthreadd's (PID 2, in the initial namespaces), or for ipc, uts, pid and
// cgroup the kernel's initial one by its fixed inode number; a namespace
// that cannot be compared, or compared with neither PID 1's nor PID 2's,
// counts as the host's.
bool is_host(int fd, uint64_t clone_flag);

// Child side. Returns 0 or errno.
int set_hostname(const char* hostname) noexcept;

}  // namespace cloister::namespaces
