// Warm inits: sandboxes set up ahead of their command.
//
// From an executor's second spawn on, the library's prestart thread (one per
// process, at nice 19) keeps kInits inits of the executor ready: exec'd,
// sent their setup, in their cgroups, mounts done, credentials dropped and
// seccomp on, waiting only for their command on their control socket. A
// spawn takes one (WarmPool::take) and is done once the payload execs. Inits
// made before a mount on the host are stale (their copies of the host's trees
// predate it) and are discarded at the next take. A warm init is killed,
// reaped and its cgroup removed when its pool goes.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>

namespace cloister {

namespace cgroups {
class Manager;
}
class Sandbox;
class TemplateCache;
struct PendingInit;

class WarmPool {
 public:
  // Two, so that a caller starting sandboxes back to back finds one ready
  // while the one it just took is replaced: with one, every such start
  // waited for the whole set-up of the next init (0.8 ms at the median here).
  static constexpr size_t kInits = 2;

  WarmPool();
  ~WarmPool();  // kills and reaps the inits it holds
  WarmPool(const WarmPool&) = delete;
  WarmPool& operator=(const WarmPool&) = delete;

  // Counts a spawn, and returns an init made for this cgroup manager at the
  // templates' current mount generation, or null. One being made is waited
  // for: it is nearer to ready than one the caller would make now.
  std::unique_ptr<PendingInit> take(const cgroups::Manager* cgroups,
                                    const TemplateCache& templates);
  // Asks the prestart thread to fill the pool of sb (from its second spawn on).
  void refill(const Sandbox& sb, const std::shared_ptr<cgroups::Manager>& cgroups);
  // Blocks until the prestart thread has nothing queued or in hand.
  static void drain();

 private:
  friend class Prestarter;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<PendingInit>> inits_;
  bool filling_ = false;  // the prestart thread is making one
  int spawns_ = 0;
};

}  // namespace cloister
