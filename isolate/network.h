// Network: a sandbox gets a fresh network namespace (CLONE_NEWNET) holding
// only a loopback device, brought up here; `network_mode: host` keeps the
// host's namespace instead.
//
// The RTM_NEWLINK request that sets lo up is built once with libnl in the
// parent; the child only sends those bytes over a netlink socket and reads
// the acknowledgement (async-signal-safe).
#pragma once

#include <string>

#include "isolate/error.h"

namespace cloister::network {

class LoopbackUp {
 public:
  static Result<LoopbackUp> prepare();
  // Child side, inside the new network namespace. Returns 0 or errno.
  int apply() const noexcept;

 private:
  std::string request_;
};

}  // namespace cloister::network
