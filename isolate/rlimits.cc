#include "isolate/rlimits.h"

#include <algorithm>
#include <cctype>

namespace cloister::rlimits {
namespace {

struct Entry {
  std::string_view name;
  int resource;
};
constexpr Entry kTable[] = {
    {"as", RLIMIT_AS},           {"core", RLIMIT_CORE},         {"cpu", RLIMIT_CPU},
    {"data", RLIMIT_DATA},       {"fsize", RLIMIT_FSIZE},       {"locks", RLIMIT_LOCKS},
    {"memlock", RLIMIT_MEMLOCK}, {"msgqueue", RLIMIT_MSGQUEUE}, {"nice", RLIMIT_NICE},
    {"nofile", RLIMIT_NOFILE},   {"nproc", RLIMIT_NPROC},       {"rss", RLIMIT_RSS},
    {"rtprio", RLIMIT_RTPRIO},   {"rttime", RLIMIT_RTTIME},     {"sigpending", RLIMIT_SIGPENDING},
    {"stack", RLIMIT_STACK},
};

}  // namespace

std::optional<int> from_name(std::string_view n) {
  std::string s(n);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (s.starts_with("rlimit_")) s.erase(0, 7);
  for (const auto& e : kTable)
    if (e.name == s) return e.resource;
  return std::nullopt;
}

std::string name(int resource) {
  for (const auto& e : kTable)
    if (e.resource == resource) return std::string(e.name);
  return std::to_string(resource);
}

Result<Limit> make(int resource, rlim_t soft, rlim_t hard) {
  if (soft > hard)
    return fail(invalid("rlimit " + name(resource) + ": soft limit above hard limit"));
  struct rlimit cur {};
  if (::getrlimit(resource, &cur) != 0) return fail(sys_error("getrlimit " + name(resource)));
  Limit l{resource, std::min(soft, cur.rlim_max), std::min(hard, cur.rlim_max)};
  return l;
}

int apply(const Limit& l) noexcept {
  struct rlimit r {
    l.soft, l.hard
  };
  return ::setrlimit(l.resource, &r) == 0 ? 0 : errno;
}

}  // namespace cloister::rlimits
