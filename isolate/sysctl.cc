#include "isolate/sysctl.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <vector>

namespace cloister::sysctl {
namespace {

// The ipc namespace's parameters outside fs.mqueue (ipc/ipc_sysctl.c).
constexpr std::string_view kIpcKernel[] = {"msgmax", "msgmnb", "msgmni", "sem",
                                           "shmall", "shmmax", "shmmni", "shm_rmid_forced"};
constexpr size_t kMaxValue = 4096;

bool component_ok(std::string_view c, bool dots) {
  if (c.empty() || c == "." || c == "..") return false;
  for (unsigned char ch : c)
    if (!(std::isalnum(ch) || ch == '_' || ch == '-' || (dots && ch == '.'))) return false;
  return true;
}

}  // namespace

Result<std::string> path_of(const Setting& s, bool own_netns) {
  const std::string what = "sysctl " + (s.key.empty() ? std::string("''") : s.key);
  // runc's and the kernel's sysctl(8) convention: '/' separates when the
  // key has one (an interface name may hold a '.'), else '.'.
  const char sep = s.key.find('/') != std::string::npos ? '/' : '.';
  std::vector<std::string_view> parts;
  std::string_view rest = s.key;
  while (true) {
    size_t i = rest.find(sep);
    parts.push_back(rest.substr(0, i));
    if (i == std::string_view::npos) break;
    rest.remove_prefix(i + 1);
  }
  for (auto c : parts)
    if (!component_ok(c, sep == '/'))
      return fail(invalid(what + ": not a sysctl name (components of letters, digits, '_' and "
                                 "'-', separated by '.' or '/')"));
  const bool ipc =
      (parts.size() == 2 && parts[0] == "kernel" &&
       std::find(std::begin(kIpcKernel), std::end(kIpcKernel), parts[1]) != std::end(kIpcKernel)) ||
      (parts.size() == 3 && parts[0] == "fs" && parts[1] == "mqueue");
  const bool net = parts.size() >= 2 && parts[0] == "net";
  if (net && !own_netns)
    return fail(invalid(what + ": the sandbox shares the host's network namespace, so this would "
                               "change the host's network"));
  if (!ipc && !net)
    return fail(invalid(what +
                        ": not kept per namespace (only the ipc namespace's kernel.msg*, "
                        "kernel.sem, kernel.shm*, fs.mqueue.* and the network namespace's net.* "
                        "are), so setting it would change the host"));
  if (s.value.empty() || s.value.size() > kMaxValue)
    return fail(invalid(what + ": the value must be 1 to 4096 bytes"));
  for (unsigned char ch : s.value)
    if (ch < 0x20 && ch != '\t') return fail(invalid(what + ": the value has a control character"));
  std::string path = "/proc/sys";
  for (auto c : parts) path += "/" + std::string(c);
  // The init writes as host root: a congestion control that is not loaded
  // would make the kernel load its module for the host.
  if (path == "/proc/sys/net/ipv4/tcp_congestion_control") {
    std::string avail;
    if (int fd =
            ::open("/proc/sys/net/ipv4/tcp_available_congestion_control", O_RDONLY | O_CLOEXEC);
        fd >= 0) {
      char buf[512];
      ssize_t n = ::read(fd, buf, sizeof buf - 1);
      if (n > 0) avail.assign(buf, static_cast<size_t>(n));
      ::close(fd);
    }
    bool listed = false;
    size_t i = 0;
    while (i < avail.size()) {
      size_t j = avail.find_first_of(" \t\n", i);
      if (j == std::string::npos) j = avail.size();
      listed |= avail.compare(i, j - i, s.value) == 0 && j - i == s.value.size();
      i = j + 1;
    }
    if (!listed)
      return fail(invalid(what + ": '" + s.value +
                          "' is not one of the congestion controls "
                          "loaded (tcp_available_congestion_control: " +
                          avail + ")"));
  }
  return path;
}

bool is_net(const Setting& s) {
  return s.key.starts_with("net.") || s.key.starts_with("net/");
}

int apply(const char* path, const char* value) noexcept {
  int fd = ::open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return errno;
  const size_t n = std::strlen(value);
  ssize_t w;
  do w = ::write(fd, value, n);
  while (w < 0 && errno == EINTR);
  int err = w < 0 ? errno : (static_cast<size_t>(w) == n ? 0 : EIO);
  ::close(fd);
  return err;
}

}  // namespace cloister::sysctl
