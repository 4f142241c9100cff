#include "isolate/mount_template.h"

#include <fcntl.h>
#include <poll.h>

namespace cloister {

uint64_t TemplateCache::generation_locked() const {
  // Any mount or unmount on the host since the last look (POLLPRI on the
  // mount table) makes copies of the host's trees taken before it stale.
  if (!mountinfo_) mountinfo_ = Fd(::open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC));
  pollfd p{mountinfo_.get(), POLLPRI, 0};
  if (!mountinfo_ || (::poll(&p, 1, 0) == 1 && (p.revents & (POLLPRI | POLLERR)))) ++gen_;
  return gen_;
}

uint64_t TemplateCache::generation() const {
  std::lock_guard lk(mu_);
  return generation_locked();
}

std::shared_ptr<const mounts::MountTemplate> TemplateCache::get(uint64_t* gen) const {
  std::lock_guard lk(mu_);
  // A one-shot caller keeps nothing open: no template, no watch on the
  // mount table (nor warm inits, which start with the second spawn).
  if (++uses_ < 2) {
    *gen = gen_;
    return nullptr;
  }
  // Read before a build: a change during it is seen at the next look.
  *gen = generation_locked();
  if (!plan_->templatable() || broken_) return nullptr;
  if (template_ && template_gen_ != *gen) template_.reset();
  if (!template_) {
    auto t = plan_->build_template(userns_->get());
    if (!t) {
      // The full plan works everywhere; the template is only faster.
      broken_ = true;
      return nullptr;
    }
    template_ = std::make_shared<const mounts::MountTemplate>(std::move(*t));
    template_gen_ = *gen;
  }
  return template_;
}

}  // namespace cloister
