// What cloister-top-reader (runtime/top_reader.cc) and runtime/top.cc agree
// on: the shared memory the reader writes command lines into, and how it
// is started.
//
// argv: "cloister-top-reader", the fd of the memfd of slots, then one
// /proc/PID directory fd per process; those fds are all it holds. It fills
// slot i from the i-th directory's cmdline and exits 0; any other exit
// status means it read nothing more (bad arguments, a failed mmap). It
// drops every capability first (and sets no_new_privs): on a host whose
// /proc hides other users' processes (hidepid) it reads none of theirs.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace cloister::top {

// At most this many bytes of each command line, as ps reads them: a
// payload's argv can be megabytes, shared by a thousand forks.
constexpr size_t kArgvMax = 4096;

// One slot per process: the reader fills data, then publishes its length;
// kUnread until it does.
struct Slot {
  std::atomic<uint32_t> len;
  char data[kArgvMax];
};
static_assert(std::atomic<uint32_t>::is_always_lock_free);
constexpr uint32_t kUnread = UINT32_MAX;

}  // namespace cloister::top
