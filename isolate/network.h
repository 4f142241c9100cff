// Network: a sandbox gets a fresh network namespace holding only a loopback
// device, brought up here; `network_mode: host` keeps the host's namespace
// instead. The sandbox joins it with setns(): one from the pool, or one the
// parent makes while the child sets up its mounts.
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
  // Inside the new network namespace. Returns 0 or errno (async-signal-safe).
  int apply() const noexcept;

 private:
  std::string request_;
};

// A new network namespace with lo up, made by the calling thread (which
// unshares its own and goes back; only that thread is touched), as an fd to
// setns() into. Aborts if the thread cannot go back: it would run on in the
// wrong namespace.
Result<Fd> make_netns(const LoopbackUp& lo);

// Creating a network namespace costs about half a millisecond, most of a
// sandbox's start on these hosts. The pool makes fresh ones (lo up, never
// used) ahead of time on a thread of its own; a sandbox that gets one joins
// it with setns() instead of CLONE_NEWNET. Each namespace is handed out once.
class NetnsPool {
 public:
  static NetnsPool& get();
  // A fresh namespace, or an empty Fd when none is ready or being made (the
  // caller then makes its own). Waits for one being made: the rest of its
  // making costs less than a new one. The pool's thread starts on the second
  // call: a process that starts one sandbox never pays for a thread (which
  // in a `cloister exec` costs more than the namespace).
  Fd take();
  // How many namespaces are kept ready; 0 turns the pool off (tests).
  void set_target(int n);
  // Returns once the pool is full (or off) and no namespace is being made:
  // making one holds a netlink socket for a moment (tests that count fds
  // wait for this).
  void wait_idle();

 private:
  NetnsPool() = default;
  struct State;
  State* state_ = nullptr;
};

}  // namespace cloister::network
