// Internal to isolate/: an init cloned and setting itself up, not given its
// command yet; made per spawn, or ahead of time for a sandbox's warm pool.
#pragma once

#include <cstdint>
#include <optional>

#include "isolate/spawn.h"
#include "isolate/userns.h"

namespace cloister {

// The nice value of the library's background work (warm inits being set
// up, network namespaces made ahead, sandboxes tearing down): it must not take
// the CPU from sandboxes that are starting or running.
constexpr int kBackgroundNice = 19;

// Marks the calling thread as one of the library's own that live as long as
// the process: it may clone sandboxes itself (PR_SET_PDEATHSIG follows the
// thread that cloned).
void mark_long_lived_thread();

struct PendingInit {
  Spawned out;
  Fd report;  // read end: EOF at the payload's exec, or a wire::Report
  Fd ctl;     // the library's end of the init's control socket
  bool templated = false;
  bool background = false;  // cloned by the prestart thread, at its priority
  uint64_t mount_gen = 0;   // TemplateCache::generation() when cloned
  const cgroups::Manager* manager = nullptr;
  // The ids of the user namespace it enters (a pool's slot, or the spec's),
  // none for an unprivileged sandbox: the payload's stdio pipes are given
  // to its user (give_command).
  std::optional<userns::Map> ids;
  // A joined init cloned into a cgroup of the exec's own: the sandbox's,
  // beside which it moves once its payload is forked (give_command).
  const cgroups::Cgroup* home = nullptr;
  Status attached;
  Status netns_made;
};

}  // namespace cloister
