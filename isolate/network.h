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
#include "isolate/fd.h"

namespace cloister::network {

class LoopbackUp {
 public:
  static Result<LoopbackUp> prepare();
  // Child side, inside the new network namespace. Returns 0 or errno.
  int apply() const noexcept;

 private:
  std::string request_;
};

// Creating a network namespace costs about half a millisecond, most of a
// sandbox's start on these hosts. The pool makes fresh ones (lo up, never
// used) ahead of time on a thread of its own; a sandbox that gets one joins
// it with setns() instead of CLONE_NEWNET. Each namespace is handed out once.
class NetnsPool {
 public:
  static NetnsPool& get();
  // A fresh namespace, or an empty Fd when none is ready (the caller then
  // creates one with CLONE_NEWNET). The pool's thread starts on the second
  // call: a process that starts one sandbox never pays for it.
  Fd take();
  // How many namespaces are kept ready; 0 turns the pool off (tests).
  void set_target(int n);

 private:
  NetnsPool() = default;
  struct State;
  State* state_ = nullptr;
};

}  // namespace cloister::network
