#include "isolate/devices.h"

#include <fcntl.h>
#include <linux/bpf.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace cloister::devices {

const Node kStandardNodes[6] = {{"null", 1, 3},   {"zero", 1, 5},    {"full", 1, 7},
                                {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};

namespace {

constexpr int64_t kMaxMajor = (1 << 12) - 1;  // dev_t: 12 bits of major
constexpr int64_t kMaxMinor = (1 << 20) - 1;  // and 20 of minor

// "rwm" as the v1 controller's bits, which are also BPF_DEVCG_ACC_*'s.
uint32_t access_bits(const std::string& a) {
  uint32_t bits = 0;
  for (char c : a)
    bits |= c == 'r' ? BPF_DEVCG_ACC_READ : c == 'w' ? BPF_DEVCG_ACC_WRITE : BPF_DEVCG_ACC_MKNOD;
  return bits;
}
std::string access_text(uint32_t bits) {
  std::string s;
  if (bits & BPF_DEVCG_ACC_READ) s += 'r';
  if (bits & BPF_DEVCG_ACC_WRITE) s += 'w';
  if (bits & BPF_DEVCG_ACC_MKNOD) s += 'm';
  return s;
}

// What the v1 controller keeps of a list of rules (security/device_cgroup.c):
// a default, and exceptions to it, each of one type and a major and minor
// (-1 = any), merged when they name the same devices.
struct Exception {
  char type;
  int64_t major, minor;
  uint32_t access;
};
struct Policy {
  bool default_allow = false;
  std::vector<Exception> exceptions;
};

// A rule that takes access away from part of an exception (a deny of
// c 1:11 after an allow of c 1:*, or of c *:* after one of c 1:3) is
// refused: the v1 controller changes only an exception naming the same
// devices and would leave the access in place (runc's emulator refuses it
// too: "cannot punch hole in existing wildcard rule").
Result<Policy> reduce(const std::vector<Rule>& rules) {
  Policy p;
  for (const auto& r : rules) {
    if (auto s = check(r); !s) return fail(s.error());
    if (r.type == 'a') {  // resets the list (check(): "a *:* rwm" only)
      p.default_allow = r.allow;
      p.exceptions.clear();
      continue;
    }
    const uint32_t bits = access_bits(r.access);
    auto same = [&](const Exception& e) {
      return e.type == r.type && e.major == r.major && e.minor == r.minor;
    };
    if (r.allow != p.default_allow) {  // an exception more
      bool merged = false;
      for (auto& e : p.exceptions)
        if (same(e)) e.access |= bits, merged = true;
      if (!merged) p.exceptions.push_back({r.type, r.major, r.minor, bits});
    } else {  // takes access away from an exception naming the same devices
      auto meet = [](int64_t a, int64_t b) { return a == b || a < 0 || b < 0; };
      for (const auto& e : p.exceptions)
        if (e.type == r.type && !same(e) && (e.access & bits) && meet(e.major, r.major) &&
            meet(e.minor, r.minor)) {
          const Rule ex{!p.default_allow, e.type, e.major, e.minor, access_text(e.access)};
          return fail(invalid("device rule '" + v1_line(r) + "' (" + (r.allow ? "allow" : "deny") +
                              ") takes access from part of the earlier '" + v1_line(ex) +
                              "', which the devices controller cannot do: list only what is " +
                              (p.default_allow ? "denied" : "allowed") + " instead"));
        }
      for (auto& e : p.exceptions)
        if (same(e)) e.access &= ~bits;
      std::erase_if(p.exceptions, [](const Exception& e) { return e.access == 0; });
    }
  }
  return p;
}

std::string number(int64_t n) {
  return n < 0 ? "*" : std::to_string(n);
}

Insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  return Insn{code, static_cast<uint8_t>(dst | (src << 4)), off, imm};
}

}  // namespace

Status check(const ExtraNode& n) {
  const mode_t type = n.mode & S_IFMT;
  if (type != S_IFCHR && type != S_IFBLK && type != S_IFIFO)
    return fail(invalid("device node " + n.path + ": type is not c, b or p"));
  if (n.mode & ~(S_IFMT | 0777))
    return fail(invalid("device node " + n.path + ": mode has bits beyond 0777"));
  if (type != S_IFIFO && (n.major > kMaxMajor || n.minor > kMaxMinor))
    return fail(invalid("device node " + n.path + ": major or minor is out of range"));
  return {};
}

Status check(const Rule& r) {
  if (r.type != 'a' && r.type != 'c' && r.type != 'b')
    return fail(invalid(std::string("device type '") + r.type + "' is not a, c or b"));
  if (r.major < -1 || r.major > kMaxMajor)
    return fail(invalid("device major " + std::to_string(r.major) + " is out of range"));
  if (r.minor < -1 || r.minor > kMaxMinor)
    return fail(invalid("device minor " + std::to_string(r.minor) + " is out of range"));
  if (r.access.empty() || r.access.size() > 3 ||
      r.access.find_first_not_of("rwm") != std::string::npos)
    return fail(invalid("device access '" + r.access + "' is not a subset of rwm"));
  for (char c : std::string("rwm"))
    if (std::count(r.access.begin(), r.access.end(), c) > 1)
      return fail(invalid("device access '" + r.access + "' names '" + c + "' twice"));
  // The v1 controller takes "a" as every device with every access, whatever
  // else the rule says: anything narrower would mean one thing there and
  // another on cgroup2.
  if (r.type == 'a' && (r.major != -1 || r.minor != -1 || access_bits(r.access) != 7))
    return fail(
        invalid("a rule of type a (every device) takes no major, minor or access "
                "narrower than rwm"));
  return {};
}

bool allows_by_default(const std::vector<Rule>& rules) {
  bool allow = false;
  for (const auto& r : rules)
    if (r.type == 'a') allow = r.allow;
  return allow;
}

std::vector<Rule> without_mknod(const std::vector<Rule>& rules) {
  auto reduced = reduce(rules);
  if (!reduced) return {{false, 'a', -1, -1, "rwm"}};
  const Policy& p = *reduced;
  std::vector<Rule> out = {{p.default_allow, 'a', -1, -1, "rwm"}};
  for (const auto& e : p.exceptions) {
    const uint32_t bits = p.default_allow ? e.access : e.access & ~BPF_DEVCG_ACC_MKNOD;
    if (bits) out.push_back({!p.default_allow, e.type, e.major, e.minor, access_text(bits)});
  }
  if (p.default_allow)
    for (char t : {'c', 'b'}) out.push_back({false, t, -1, -1, "m"});
  return out;
}

std::string v1_line(const Rule& r) {
  if (r.type == 'a') return "a";
  return std::string(1, r.type) + " " + number(r.major) + ":" + number(r.minor) + " " + r.access;
}

Status check(const std::vector<Rule>& rules) {
  auto p = reduce(rules);
  if (!p) return fail(p.error());
  return {};
}

Status apply_v1(const std::string& dir, const std::vector<Rule>& rules) {
  auto reduced = reduce(rules);
  if (!reduced) return fail(reduced.error());
  const Policy& p = *reduced;
  auto write = [&](const char* file, const std::string& line) -> Status {
    const std::string path = dir + "/" + file;
    Fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) return fail(sys_error("open " + path));
    if (::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size()))
      return fail(sys_error("write '" + line + "' to " + path));
    return {};
  };
  if (auto s = write(p.default_allow ? "devices.allow" : "devices.deny", "a"); !s) return s;
  for (const auto& e : p.exceptions) {
    Rule r{!p.default_allow, e.type, e.major, e.minor, access_text(e.access)};
    if (auto s = write(p.default_allow ? "devices.deny" : "devices.allow", v1_line(r)); !s)
      return s;
  }
  return {};
}

std::vector<Insn> program(const std::vector<Rule>& rules) {
  auto reduced = reduce(rules);
  const Policy p = reduced ? *reduced : Policy{};  // deny all
  // r1: struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor;}
  // (access_type: the BPF_DEVCG_ACC_* bits << 16 | BPF_DEVCG_DEV_*).
  std::vector<Insn> out = {
      insn(BPF_LDX | BPF_MEM | BPF_W, 2, 1, 0, 0),
      insn(BPF_ALU | BPF_MOV | BPF_X, 3, 2, 0, 0),  // r3: the type
      insn(BPF_ALU | BPF_AND | BPF_K, 3, 0, 0, 0xffff),
      insn(BPF_ALU | BPF_MOV | BPF_X, 4, 2, 0, 0),  // r4: the access
      insn(BPF_ALU | BPF_RSH | BPF_K, 4, 0, 0, 16),
      insn(BPF_LDX | BPF_MEM | BPF_W, 5, 1, 4, 0),  // r5: major
      insn(BPF_LDX | BPF_MEM | BPF_W, 6, 1, 8, 0),  // r6: minor
  };
  auto ret = [&](int32_t v) {
    out.push_back(insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, v));
    out.push_back(insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0));
  };
  // Each exception: the checks jump to the next one when a part does not
  // match (offsets filled in once its length is known).
  for (const auto& e : p.exceptions) {
    std::vector<size_t> to_next;
    auto skip_unless = [&](uint8_t op, uint8_t reg, int32_t imm) {
      to_next.push_back(out.size());
      out.push_back(insn(BPF_JMP | op | BPF_K, reg, 0, 0, imm));
    };
    skip_unless(BPF_JNE, 3, e.type == 'b' ? BPF_DEVCG_DEV_BLOCK : BPF_DEVCG_DEV_CHAR);
    if (p.default_allow) {
      // Denied: any of the access asked for is in the exception.
      out.push_back(insn(BPF_ALU | BPF_MOV | BPF_X, 7, 4, 0, 0));
      out.push_back(insn(BPF_ALU | BPF_AND | BPF_K, 7, 0, 0, static_cast<int32_t>(e.access)));
      skip_unless(BPF_JEQ, 7, 0);
    } else if (e.access != 7) {
      // Allowed: all of the access asked for is in the exception.
      out.push_back(insn(BPF_ALU | BPF_MOV | BPF_X, 7, 4, 0, 0));
      out.push_back(insn(BPF_ALU | BPF_AND | BPF_K, 7, 0, 0, static_cast<int32_t>(~e.access & 7)));
      skip_unless(BPF_JNE, 7, 0);
    }
    if (e.major >= 0) skip_unless(BPF_JNE, 5, static_cast<int32_t>(e.major));
    if (e.minor >= 0) skip_unless(BPF_JNE, 6, static_cast<int32_t>(e.minor));
    ret(p.default_allow ? 0 : 1);
    for (size_t j : to_next) out[j].off = static_cast<int16_t>(out.size() - j - 1);
  }
  ret(p.default_allow ? 1 : 0);
  return out;
}

Status attach_v2(int cgroup_dir_fd, const std::vector<Rule>& rules) {
  if (auto s = check(rules); !s) return s;
  const std::vector<Insn> insns = program(rules);
  static_assert(sizeof(Insn) == sizeof(bpf_insn));
  static const char kLicense[] = "GPL";
  // The kernel opens program fds close-on-exec.
  auto load = [&](char* log, uint32_t size) {
    union bpf_attr a;
    std::memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    a.insns = reinterpret_cast<uint64_t>(insns.data());
    a.insn_cnt = static_cast<uint32_t>(insns.size());
    a.license = reinterpret_cast<uint64_t>(kLicense);
    a.log_buf = reinterpret_cast<uint64_t>(log);
    a.log_size = size;
    a.log_level = log ? 1 : 0;
    return Fd(static_cast<int>(::syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a)));
  };
  Fd prog = load(nullptr, 0);
  if (!prog) {
    // Again for the verifier's reasons, as libbpf does: its log of a whole
    // program can outgrow any buffer given up front (ENOSPC).
    const int e = errno;
    std::string m = "load the device program (bpf BPF_PROG_LOAD)";
    std::vector<char> log(1 << 16);
    if (!load(log.data(), static_cast<uint32_t>(log.size())) && log[0]) {
      const std::string text(log.data(), strnlen(log.data(), log.size()));
      m += ": " + text.substr(text.size() > 400 ? text.size() - 400 : 0);
    }
    return fail(sys_error(m, e));
  }
  union bpf_attr at;
  std::memset(&at, 0, sizeof at);
  at.target_fd = static_cast<uint32_t>(cgroup_dir_fd);
  at.attach_bpf_fd = static_cast<uint32_t>(prog.get());
  at.attach_type = BPF_CGROUP_DEVICE;
  at.attach_flags = BPF_F_ALLOW_MULTI;
  if (::syscall(SYS_bpf, BPF_PROG_ATTACH, &at, sizeof at) != 0)
    return fail(sys_error("attach the device program (bpf BPF_PROG_ATTACH)"));
  return {};
}

std::vector<Rule> container_defaults(const std::vector<ExtraNode>& nodes) {
  std::vector<Rule> r;
  for (const auto& n : kStandardNodes) r.push_back({true, 'c', n.major, n.minor, "rwm"});
  r.push_back({true, 'c', 5, 2, "rwm"});     // /dev/ptmx (pts/ptmx)
  r.push_back({true, 'c', 136, -1, "rwm"});  // the ptys of its devpts
  // mknod of the nodes the init makes from inside the cgroup, and of no
  // other (runc allows mknod of every node: a payload that is host root
  // could then leave one a host user may open in a volume).
  for (const auto& n : nodes)
    if ((n.mode & S_IFMT) != S_IFIFO)
      r.push_back({true, (n.mode & S_IFMT) == S_IFBLK ? 'b' : 'c', n.major, n.minor, "m"});
  return r;
}

}  // namespace cloister::devices
