#include "isolate/namespaces.h"

#include <sched.h>
#include <unistd.h>

#include <cctype>
#include <cstring>

namespace cloister::namespaces {

const std::vector<Kind>& all() {
  static const std::vector<Kind> kinds = {
      {"pid", CLONE_NEWPID}, {"mnt", CLONE_NEWNS},        {"ipc", CLONE_NEWIPC},
      {"uts", CLONE_NEWUTS}, {"cgroup", CLONE_NEWCGROUP}, {"net", CLONE_NEWNET},
  };
  return kinds;
}

uint64_t clone_flags(NetworkMode network) {
  uint64_t flags = 0;
  for (const auto& k : all())
    if (k.clone_flag != CLONE_NEWNET || network == NetworkMode::None) flags |= k.clone_flag;
  return flags;
}

Status check_hostname(const std::string& h) {
  if (h.empty() || h.size() > 64) return fail(invalid("hostname must be 1 to 64 characters"));
  if (h[0] == '-' || h[0] == '.')
    return fail(invalid("hostname '" + h + "' starts with '" + h[0] + "'"));
  for (char c : h)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.'))
      return fail(invalid("hostname '" + h + "' has a character outside [A-Za-z0-9.-]"));
  return {};
}

int set_hostname(const char* hostname) noexcept {
  return ::sethostname(hostname, std::strlen(hostname)) == 0 ? 0 : errno;
}

}  // namespace cloister::namespaces
