#include "isolate/capabilities.h"

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>

#include "isolate/fd.h"

namespace cloister::capabilities {
namespace {

// Names from linux/capability.h; the index is the capability number.
constexpr std::string_view kNames[] = {
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
};
constexpr int kKnown = static_cast<int>(std::size(kNames));

std::string upper(std::string_view s) {
  std::string u(s);
  std::transform(u.begin(), u.end(), u.begin(), [](unsigned char c) { return std::toupper(c); });
  return u;
}

}  // namespace

int last_cap() {
  static const int value = [] {
    auto text = read_file("/proc/sys/kernel/cap_last_cap");
    if (!text) return kKnown - 1;
    return std::clamp(std::atoi(text->c_str()), 0, 63);
  }();
  return value;
}

std::optional<int> from_name(std::string_view name) {
  std::string u = upper(name);
  if (!u.starts_with("CAP_")) u = "CAP_" + u;
  for (int i = 0; i < kKnown; ++i)
    if (kNames[i] == u) return i <= last_cap() ? std::optional<int>(i) : std::nullopt;
  return std::nullopt;
}

std::string name(int cap) {
  if (cap >= 0 && cap < kKnown) return std::string(kNames[cap]);
  return "CAP_" + std::to_string(cap);
}

Result<uint64_t> resolve(const std::vector<std::string>& add,
                         const std::vector<std::string>& drop) {
  const uint64_t all = last_cap() >= 63 ? ~0ULL : ((1ULL << (last_cap() + 1)) - 1);
  uint64_t keep = 0;
  for (const auto& n : add) {
    if (upper(n) == "ALL") {
      keep = all;
      continue;
    }
    auto c = from_name(n);
    if (!c) return fail(invalid("unknown capability '" + n + "'"));
    keep |= 1ULL << *c;
  }
  for (const auto& n : drop) {
    if (upper(n) == "ALL") continue;  // the default set is already empty
    auto c = from_name(n);
    if (!c) return fail(invalid("unknown capability '" + n + "'"));
    keep &= ~(1ULL << *c);
  }
  return keep;
}

int drop_bounding(uint64_t keep, int last) noexcept {
  for (int c = 0; c <= last; ++c) {
    if (keep & (1ULL << c)) continue;
    if (::prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL) return errno;
  }
  return 0;
}

int apply(uint64_t keep, int last) noexcept {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  for (int i = 0; i < 2; ++i) {
    uint32_t word = static_cast<uint32_t>(keep >> (32 * i));
    data[i].effective = data[i].permitted = data[i].inheritable = word;
  }
  if (::syscall(SYS_capset, &hdr, data) != 0) return errno;
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) return errno;
  for (int c = 0; c <= last; ++c)
    if ((keep & (1ULL << c)) && ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) != 0)
      return errno;
  return 0;
}

}  // namespace cloister::capabilities
