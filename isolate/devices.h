// Devices: which device numbers a sandbox may open or make, as the
// cgroup's device policy enforces it. A policy starts with every device
// denied; each rule then allows or denies a type, major and minor, and a
// later rule overrides an earlier one for what it matches (runc's order:
// the runtime-spec says the rules apply in the listed order).
//   cgroup v1: the devices controller ("a" into devices.deny, then each rule
//              into devices.allow or devices.deny);
//   cgroup2:   a BPF_PROG_TYPE_CGROUP_DEVICE program, built from the rules
//              here and attached to the sandbox's cgroup (BPF_F_ALLOW_MULTI:
//              an ancestor's program still applies as well).
// The kernel asks the policy at open(2) and mknod(2) of a device node,
// whatever the opener's capabilities: a node that reaches a sandbox some
// other way (a device file in an image, a bind) is refused unless a rule
// allows it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "isolate/error.h"
#include "isolate/fd.h"

namespace cloister::devices {

// The nodes of every sandbox's /dev (mknod'd, or the host's bound where no
// mknod is allowed).
struct Node {
  const char* name;
  unsigned major, minor;
};
extern const Node kStandardNodes[6];

// A node a sandbox's /dev gets beyond kStandardNodes (the OCI runtime's
// linux.devices): made by the sandbox's init before it enters its user
// namespace (none can mknod in one), owned by uid and gid as ids inside.
// Opening it still takes a rule that allows it.
struct ExtraNode {
  std::string path;  // absolute, below /dev
  mode_t mode = 0;   // S_IFCHR, S_IFBLK or S_IFIFO, and permission bits
  unsigned major = 0, minor = 0;
  uint32_t uid = 0, gid = 0;
};
// Its type and numbers; where it may go is the mount module's (isolate/mounts.h).
Status check(const ExtraNode& n);

struct Rule {
  bool allow = false;
  char type = 'a';                 // 'a' (any), 'c' (character) or 'b' (block)
  int64_t major = -1, minor = -1;  // -1 = any
  std::string access = "rwm";      // a non-empty subset of "rwm"
};

// The one validator of a rule, and of a list of them (a rule that would
// take access from part of an earlier exception, which v1 cannot do, is
// refused): INVALID naming what is wrong.
Status check(const Rule& r);
Status check(const std::vector<Rule>& rules);

// Whether a policy allows every device but its exceptions (its last rule
// of type a allows).
bool allows_by_default(const std::vector<Rule>& rules);

// The same policy with mknod allowed for no node: what a sandbox keeps once
// its init has made its nodes (a payload that is host root, given
// CAP_MKNOD, must not leave a node a host user could open in a volume).
std::vector<Rule> without_mknod(const std::vector<Rule>& rules);

// As the v1 files take it: "c 1:3 rwm", "a *:* rwm".
std::string v1_line(const Rule& r);

// Writes the policy into a v1 devices directory (a new cgroup with no
// process yet): deny all, then each rule.
Status apply_v1(const std::string& dir, const std::vector<Rule>& rules);

// The policy as a cgroup device program (eBPF, struct bpf_insn's layout),
// exposed for tests. Both backends compute what the v1 controller makes of
// the rules (its default and exceptions), so they agree on every device.
// Rules check() refuses give a program that denies every device.
struct Insn {
  uint8_t code;
  uint8_t regs;  // dst (low nibble), src (high nibble)
  int16_t off;
  int32_t imm;
};
std::vector<Insn> program(const std::vector<Rule>& rules);

// Loads the program and attaches it to the cgroup2 directory fd.
Status attach_v2(int cgroup_dir_fd, const std::vector<Rule>& rules);

// Allowed: kStandardNodes and the sandbox's devpts (ptmx, the ptys), and
// mknod (but no open) of the given nodes, which its init makes.
std::vector<Rule> container_defaults(const std::vector<ExtraNode>& nodes);

}  // namespace cloister::devices
