#include "isolate/namespaces.h"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstring>

namespace cloister::namespaces {

Result<Fd> open_path(const std::string& path, uint64_t clone_flag) {
  std::string_view name = "?";
  for (const auto& k : all())
    if (k.clone_flag == clone_flag) name = k.name == "net" ? "network" : k.name;
  const std::string what = std::string(name) + " namespace " + path;
  if (path.empty() || path[0] != '/') return fail(invalid(what + ": not an absolute path"));
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return fail(sys_error("open " + what));
  Fd ns(fd);
  if (::ioctl(ns.get(), NS_GET_NSTYPE) != static_cast<int>(clone_flag))
    return fail(invalid("'" + path + "' is not a " + std::string(name) + " namespace"));
  return ns;
}

bool is_host(int fd, uint64_t clone_flag) {
  std::string_view name;
  for (const auto& k : all())
    if (k.clone_flag == clone_flag) name = k.name;
  struct stat ns {};
  if (name.empty() || ::fstat(fd, &ns) != 0) return true;
  // The initial namespaces are PID 1's and every kernel thread's (kthreadd
  // is PID 2); ours may be others. PID 1's may be unreadable (a sandboxed
  // host), and a runtime of its own uts or ipc namespace would then take
  // the host's for a pod's: without one of the two as a reference, every
  // namespace counts as the host's.
  bool reference = false;
  for (const char* pid : {"self", "1", "2"}) {
    struct stat h {};
    const std::string host = "/proc/" + std::string(pid) + "/ns/" + std::string(name);
    if (::stat(host.c_str(), &h) != 0) continue;
    if (h.st_dev == ns.st_dev && h.st_ino == ns.st_ino) return true;
    if (pid[0] != 's') reference = true;
    // The kernel's initial ipc, uts, pid and cgroup namespaces have fixed
    // inode numbers on nsfs (include/linux/proc_ns.h), whoever PID 2 is.
    const ino_t initial = clone_flag == CLONE_NEWIPC      ? 0xEFFFFFFFu
                          : clone_flag == CLONE_NEWUTS    ? 0xEFFFFFFEu
                          : clone_flag == CLONE_NEWPID    ? 0xEFFFFFFCu
                          : clone_flag == CLONE_NEWCGROUP ? 0xEFFFFFFBu
                                                          : 0;
    if (initial && h.st_dev == ns.st_dev && ns.st_ino == initial) return true;
  }
  return !reference;
}

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
