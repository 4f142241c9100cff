// Concurrency limits (ToastStunt's EXEC_MAX_PROCESSES): counters of running
// processes, per executor and per caller. acquire() answers LIMIT when the
// counter is full; the Slot it returns gives its place back when it is
// released or destroyed (a Process holds its slots until it has ended).
// Thread-safe.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include "isolate/error.h"

namespace cloister::policy {

class Slot {
 public:
  Slot() = default;
  explicit Slot(std::function<void()> release) : release_(std::move(release)) {}
  Slot(Slot&& o) noexcept : release_(std::exchange(o.release_, nullptr)) {}
  Slot& operator=(Slot&& o) noexcept {
    if (this != &o) {
      release();
      release_ = std::exchange(o.release_, nullptr);
    }
    return *this;
  }
  Slot(const Slot&) = delete;
  Slot& operator=(const Slot&) = delete;
  ~Slot() { release(); }
  void release() {
    if (release_) std::exchange(release_, nullptr)();
  }
  bool held() const { return static_cast<bool>(release_); }

 private:
  std::function<void()> release_;
};

// Counters by key (an executor name, a uid). A max of 0 means unlimited
// (the slot is still counted, for in_use()).
class Counters : public std::enable_shared_from_this<Counters> {
 public:
  static std::shared_ptr<Counters> make() { return std::make_shared<Counters>(); }
  // LIMIT "<what>: N of N <unit> running" when full.
  Result<Slot> acquire(const std::string& key, uint64_t max, const std::string& what,
                       std::string_view unit = "processes");
  uint64_t in_use(const std::string& key) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> used_;
};

}  // namespace cloister::policy
