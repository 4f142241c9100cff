#include "policy/limits.h"

namespace cloister::policy {

Result<Slot> Counters::acquire(const std::string& key, uint64_t max, const std::string& what,
                               std::string_view unit) {
  std::lock_guard lk(mu_);
  uint64_t& n = used_[key];
  if (max > 0 && n >= max)
    return fail(make_error(ErrorKind::Limit, what + ": " + std::to_string(n) + " of " +
                                                 std::to_string(max) + " " + std::string(unit) +
                                                 " running"));
  ++n;
  // The slot keeps the counters alive: a Process may outlive its Executor.
  return Slot([self = shared_from_this(), key] {
    std::lock_guard lk(self->mu_);
    auto it = self->used_.find(key);
    if (it != self->used_.end() && it->second > 0 && --it->second == 0) self->used_.erase(it);
  });
}

uint64_t Counters::in_use(const std::string& key) const {
  std::lock_guard lk(mu_);
  auto it = used_.find(key);
  return it == used_.end() ? 0 : it->second;
}

}  // namespace cloister::policy
