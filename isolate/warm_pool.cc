#include "isolate/warm_pool.h"

#include <sys/resource.h>

#include <thread>

#include "isolate/pending_init.h"

namespace cloister {

// The thread that makes warm inits, one at a time, for every pool that asks.
class Prestarter {
 public:
  static Prestarter& get() {
    static Prestarter* p = new Prestarter;  // never destroyed: its inits follow it
    return *p;
  }
  // Returns once nothing is queued or being made.
  void drain() {
    std::unique_lock lk(mu_);
    idle_.wait(lk, [&] { return queue_.empty() && !busy_; });
  }
  void request(std::weak_ptr<const Sandbox> sb, std::shared_ptr<cgroups::Manager> cgroups) {
    {
      std::lock_guard lk(mu_);
      queue_.emplace_back(std::move(sb), std::move(cgroups));
      if (!started_) {
        started_ = true;
        std::thread([this] { loop(); }).detach();
      }
    }
    cv_.notify_one();
  }

 private:
  void loop() {
    mark_long_lived_thread();
    // Background work: it gets what the callers leave of the CPUs. The inits
    // cloned here inherit it until their command comes (give_command).
    ::setpriority(PRIO_PROCESS, 0, kBackgroundNice);
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return !queue_.empty(); });
      auto [weak, cgroups] = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lk.unlock();
      if (auto sb = weak.lock()) fill(*sb, cgroups);
      // The last owner may be us: the sandbox (and its warm inits) go here.
      cgroups.reset();
      weak.reset();
      lk.lock();
      busy_ = false;
      if (queue_.empty()) idle_.notify_all();
    }
  }
  void fill(const Sandbox& sb, const std::shared_ptr<cgroups::Manager>& cgroups) {
    WarmPool& pool = sb.warm_;
    for (;;) {
      {
        std::lock_guard wl(pool.mu_);
        if (pool.inits_.size() >= WarmPool::kInits || pool.filling_) return;
        pool.filling_ = true;
      }
      // A failure here is left for the next spawn, which starts its own
      // init and reports the error to its caller.
      auto p = sb.start_init(cgroups.get());
      std::lock_guard wl(pool.mu_);
      if (p) {
        (*p)->background = true;
        pool.inits_.push_back(std::move(*p));
      }
      pool.filling_ = false;
      pool.cv_.notify_all();
      if (!p) return;
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, idle_;
  bool busy_ = false;
  std::deque<std::pair<std::weak_ptr<const Sandbox>, std::shared_ptr<cgroups::Manager>>> queue_;
  bool started_ = false;
};

WarmPool::WarmPool() = default;
WarmPool::~WarmPool() = default;  // each PendingInit's Spawned kills and reaps

std::unique_ptr<PendingInit> WarmPool::take(const cgroups::Manager* cgroups,
                                            const TemplateCache& templates) {
  std::unique_lock lk(mu_);
  ++spawns_;
  cv_.wait(lk, [&] { return !inits_.empty() || !filling_; });
  if (inits_.empty()) return nullptr;  // (a one-shot caller never opens the mount table)
  // Their mounts copied the host's trees when they were made: after a mount
  // on the host since, they go (killed and reaped) and new ones start.
  const uint64_t gen = templates.generation();
  while (!inits_.empty() && inits_.front()->mount_gen != gen) inits_.pop_front();
  for (auto it = inits_.begin(); it != inits_.end(); ++it)
    if ((*it)->manager == cgroups) {
      auto p = std::move(*it);
      inits_.erase(it);
      return p;
    }
  return nullptr;
}

void WarmPool::refill(const Sandbox& sb, const std::shared_ptr<cgroups::Manager>& cgroups) {
  {
    std::lock_guard lk(mu_);
    // A process that starts one sandbox never pays for a second.
    if (spawns_ < 2 || inits_.size() >= kInits || filling_) return;
  }
  Prestarter::get().request(sb.weak_from_this(), cgroups);
}

void WarmPool::drain() {
  Prestarter::get().drain();
}

}  // namespace cloister
