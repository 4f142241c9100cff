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

// RFC 1123: dot-separated labels of letters, digits and '-', none empty,
// longer than 63 or starting or ending with '-'; HOST_NAME_MAX (64) in all.
// The one validator of a hostname, for every front end.
Status check_hostname(const std::string& h) {
  if (h.empty() || h.size() > 64) return fail(invalid("hostname must be 1 to 64 characters"));
  size_t start = 0;
  while (start <= h.size()) {
    size_t end = h.find('.', start);
    if (end == std::string::npos) end = h.size();
    const std::string label = h.substr(start, end - start);
    if (label.empty()) return fail(invalid("hostname '" + h + "' has an empty label"));
    if (label.size() > 63)
      return fail(invalid("hostname '" + h + "' has a label longer than 63 characters"));
    if (label.front() == '-' || label.back() == '-')
      return fail(invalid("hostname '" + h + "' has a label starting or ending with '-'"));
    for (char c : label)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-'))
        return fail(invalid("hostname '" + h + "' has a character outside [A-Za-z0-9.-]"));
    start = end + 1;
  }
  return {};
}

int set_hostname(const char* hostname) noexcept {
  return ::sethostname(hostname, std::strlen(hostname)) == 0 ? 0 : errno;
}

}  // namespace cloister::namespaces
