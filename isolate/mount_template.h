// Mount templates, per sandbox: when to build one and when it is stale.
//
// A plan's template (MountPlan::build_template) is the read-only part of the
// root built once in a mount namespace of its own; sandboxes enter it and
// mount only /proc, /dev and their tmpfs mounts. The cache builds it at the
// plan's second use (a one-shot caller never pays for it, nor keeps a watch
// on the mount table open), and again after any mount or unmount on the host
// (POLLPRI on /proc/self/mountinfo), since the template holds copies of the
// host's trees made when it was built. A plan whose template cannot be built
// falls back to the full plan for good.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

#include "isolate/fd.h"
#include "isolate/mounts.h"

namespace cloister {

class TemplateCache {
 public:
  // userns: the sandbox's user namespace, for idmapped sources (may hold none).
  TemplateCache(const mounts::MountPlan* plan, const Fd* userns) : plan_(plan), userns_(userns) {}
  TemplateCache(const TemplateCache&) = delete;
  TemplateCache& operator=(const TemplateCache&) = delete;

  // The template for the next sandbox, or null (first use, no template, or
  // it cannot be built: the full plan serves). *gen gets the generation of
  // the host's mount table that the sandbox is made at.
  std::shared_ptr<const mounts::MountTemplate> get(uint64_t* gen) const;
  // Counts the changes of the host's mount table seen so far (opens the
  // watch on first use).
  uint64_t generation() const;

 private:
  uint64_t generation_locked() const;

  const mounts::MountPlan* plan_;
  const Fd* userns_;
  mutable std::mutex mu_;
  mutable std::shared_ptr<const mounts::MountTemplate> template_;
  mutable Fd mountinfo_;  // polled for changes of the host's mount table
  mutable int uses_ = 0;
  mutable uint64_t gen_ = 0;
  mutable uint64_t template_gen_ = 0;
  mutable bool broken_ = false;
};

}  // namespace cloister
