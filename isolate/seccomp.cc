// Compiles Docker-style JSON seccomp profiles with libseccomp and hands the
// finished BPF program to the kernel in the child.
//
// ABI rule: only the native architecture (x86_64) is put in the filter. The
// filter's bad-architecture action is SCMP_ACT_KILL_PROCESS, so:
//   - an i386 syscall (int $0x80, AUDIT_ARCH_I386) kills the whole process
//     with SIGSYS;
//   - an x32 syscall (AUDIT_ARCH_X86_64 with __X32_SYSCALL_BIT set in the
//     number) is also treated as a foreign ABI by the libseccomp-generated
//     program and kills the process with SIGSYS.
// A 64-bit program never issues either on purpose, so a compat syscall from
// inside a sandbox is treated as an attack rather than answered with an errno.
#include "isolate/seccomp.h"

#include <fcntl.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "isolate/fd.h"

namespace cloister::embedded {
extern const std::string_view seccomp_default_profile;
#ifndef CLOISTER_SECCOMP_COMPILER
// The default profile compiled at build time by cloister-seccomp-compile
// (tools/seccomp_compile.cc): no libseccomp work at run time for it.
extern const sock_filter seccomp_default_bpf[];
extern const size_t seccomp_default_bpf_len;
#endif
}  // namespace cloister::embedded

namespace cloister::seccomp {
namespace {

using json = nlohmann::json;

// Largest profile file load() reads; Docker's default profile is ~20 KiB.
constexpr off_t kMaxProfileBytes = 4 << 20;
// Largest errno the kernel passes through SECCOMP_RET_ERRNO (MAX_ERRNO).
constexpr std::int64_t kMaxErrno = 4095;

struct CtxDeleter {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};
using Ctx = std::unique_ptr<void, CtxDeleter>;

Error bad(const std::string& where, const std::string& what) {
  return invalid(where + ": " + what);
}

std::string type_name(const json& v) {
  return v.type_name();
}

// Checks that an object has only the keys in `allowed`.
Status check_keys(const json& obj, const std::string& where,
                  std::initializer_list<std::string_view> allowed) {
  for (const auto& [key, _] : obj.items()) {
    bool ok = false;
    for (auto a : allowed) ok = ok || key == a;
    if (!ok) {
      std::string at = where.empty() ? key : where + "." + key;
      return fail(bad(at, "unknown key"));
    }
  }
  return {};
}

Result<std::uint64_t> get_u64(const json& v, const std::string& where) {
  if (!v.is_number_unsigned())
    return fail(bad(
        where, "expected a non-negative integer, got " +
                   (v.is_number_integer() ? std::to_string(v.get<std::int64_t>()) : type_name(v))));
  return v.get<std::uint64_t>();
}

Result<int> get_errno(const json& v, const std::string& where) {
  auto n = get_u64(v, where);
  if (!n) return fail(n.error());
  if (*n > static_cast<std::uint64_t>(kMaxErrno))
    return fail(bad(
        where, "errno " + std::to_string(*n) + " out of range 0.." + std::to_string(kMaxErrno)));
  return static_cast<int>(*n);
}

Result<std::string> get_string(const json& v, const std::string& where) {
  if (!v.is_string()) return fail(bad(where, "expected a string, got " + type_name(v)));
  return v.get<std::string>();
}

// A parsed action before the errno is folded in.
enum class Act { Allow, Errno, KillThread, KillProcess, Trap, Log };

Result<Act> parse_action_name(const json& v, const std::string& where) {
  auto s = get_string(v, where);
  if (!s) return fail(s.error());
  static const std::pair<std::string_view, Act> kActions[] = {
      {"SCMP_ACT_ALLOW", Act::Allow},
      {"SCMP_ACT_ERRNO", Act::Errno},
      {"SCMP_ACT_KILL", Act::KillThread},
      {"SCMP_ACT_KILL_THREAD", Act::KillThread},
      {"SCMP_ACT_KILL_PROCESS", Act::KillProcess},
      {"SCMP_ACT_TRAP", Act::Trap},
      {"SCMP_ACT_LOG", Act::Log},
  };
  for (const auto& [name, act] : kActions)
    if (*s == name) return act;
  return fail(bad(where, "unknown action '" + *s + "'"));
}

std::uint32_t to_scmp(Act act, int err) {
  switch (act) {
    case Act::Allow:
      return SCMP_ACT_ALLOW;
    case Act::Errno:
      return SCMP_ACT_ERRNO(static_cast<std::uint32_t>(err));
    case Act::KillThread:
      return SCMP_ACT_KILL_THREAD;
    case Act::KillProcess:
      return SCMP_ACT_KILL_PROCESS;
    case Act::Trap:
      return SCMP_ACT_TRAP;
    case Act::Log:
      return SCMP_ACT_LOG;
  }
  return SCMP_ACT_KILL_PROCESS;
}

Result<scmp_compare> parse_op(const json& v, const std::string& where) {
  auto s = get_string(v, where);
  if (!s) return fail(s.error());
  static const std::pair<std::string_view, scmp_compare> kOps[] = {
      {"SCMP_CMP_NE", SCMP_CMP_NE},
      {"SCMP_CMP_LT", SCMP_CMP_LT},
      {"SCMP_CMP_LE", SCMP_CMP_LE},
      {"SCMP_CMP_EQ", SCMP_CMP_EQ},
      {"SCMP_CMP_GE", SCMP_CMP_GE},
      {"SCMP_CMP_GT", SCMP_CMP_GT},
      {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ},
  };
  for (const auto& [name, op] : kOps)
    if (*s == name) return op;
  return fail(bad(where, "unknown comparison '" + *s + "'"));
}

Result<scmp_arg_cmp> parse_arg(const json& a, const std::string& where) {
  if (!a.is_object()) return fail(bad(where, "expected an object, got " + type_name(a)));
  if (auto st = check_keys(a, where, {"index", "value", "valueTwo", "op"}); !st)
    return fail(st.error());
  for (const char* required : {"index", "value", "op"})
    if (!a.contains(required)) return fail(bad(where + "." + required, "missing"));
  auto index = get_u64(a["index"], where + ".index");
  if (!index) return fail(index.error());
  if (*index > 5)
    return fail(
        bad(where + ".index", "argument index " + std::to_string(*index) + " out of range 0..5"));
  auto value = get_u64(a["value"], where + ".value");
  if (!value) return fail(value.error());
  std::uint64_t value_two = 0;
  if (a.contains("valueTwo")) {
    auto v2 = get_u64(a["valueTwo"], where + ".valueTwo");
    if (!v2) return fail(v2.error());
    value_two = *v2;
  }
  auto op = parse_op(a["op"], where + ".op");
  if (!op) return fail(op.error());
  scmp_arg_cmp cmp{};
  cmp.arg = static_cast<unsigned int>(*index);
  cmp.op = *op;
  cmp.datum_a = *value;
  cmp.datum_b = value_two;
  return cmp;
}

// Architecture names a profile may mention. Only the native one (or the
// SCMP_ARCH_NATIVE alias) is accepted; the others are named in the error.
std::string_view arch_name(std::uint32_t token) {
  switch (token) {
    case SCMP_ARCH_X86:
      return "SCMP_ARCH_X86";
    case SCMP_ARCH_X86_64:
      return "SCMP_ARCH_X86_64";
    case SCMP_ARCH_X32:
      return "SCMP_ARCH_X32";
    case SCMP_ARCH_ARM:
      return "SCMP_ARCH_ARM";
    case SCMP_ARCH_AARCH64:
      return "SCMP_ARCH_AARCH64";
    case SCMP_ARCH_RISCV64:
      return "SCMP_ARCH_RISCV64";
    case SCMP_ARCH_S390X:
      return "SCMP_ARCH_S390X";
    case SCMP_ARCH_PPC64LE:
      return "SCMP_ARCH_PPC64LE";
    default:
      return "";
  }
}

Status check_arch(const json& v, const std::string& where) {
  auto s = get_string(v, where);
  if (!s) return fail(s.error());
  std::string_view native = arch_name(seccomp_arch_native());
  if (*s == "SCMP_ARCH_NATIVE" || (!native.empty() && *s == native)) return {};
  static constexpr std::string_view kKnown[] = {
      "SCMP_ARCH_X86",     "SCMP_ARCH_X86_64",   "SCMP_ARCH_X32",         "SCMP_ARCH_ARM",
      "SCMP_ARCH_AARCH64", "SCMP_ARCH_MIPS",     "SCMP_ARCH_MIPS64",      "SCMP_ARCH_MIPS64N32",
      "SCMP_ARCH_MIPSEL",  "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC",
      "SCMP_ARCH_PPC64",   "SCMP_ARCH_PPC64LE",  "SCMP_ARCH_S390",        "SCMP_ARCH_S390X",
      "SCMP_ARCH_PARISC",  "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64",
  };
  for (auto k : kKnown)
    if (*s == k)
      return fail(bad(where, "architecture '" + *s + "' is not the native architecture (" +
                                 std::string(native) + "): only the native ABI is allowed"));
  return fail(bad(where, "unknown architecture '" + *s + "'"));
}

// One syscalls[] entry, validated.
struct Rule {
  std::string where;
  std::vector<std::string> names;
  std::uint32_t action;
  std::vector<scmp_arg_cmp> args;
};

Result<Rule> parse_rule(const json& r, std::size_t i, int default_errno) {
  std::string where = "syscalls[" + std::to_string(i) + "]";
  if (!r.is_object()) return fail(bad(where, "expected an object, got " + type_name(r)));
  if (auto st = check_keys(r, where, {"names", "action", "errnoRet", "args", "comment"}); !st)
    return fail(st.error());
  if (!r.contains("names")) return fail(bad(where + ".names", "missing"));
  if (!r.contains("action")) return fail(bad(where + ".action", "missing"));

  Rule rule;
  rule.where = where;
  const json& names = r["names"];
  if (!names.is_array())
    return fail(bad(where + ".names", "expected an array of strings, got " + type_name(names)));
  if (names.empty()) return fail(bad(where + ".names", "empty"));
  for (std::size_t j = 0; j < names.size(); ++j) {
    std::string at = where + ".names[" + std::to_string(j) + "]";
    auto n = get_string(names[j], at);
    if (!n) return fail(n.error());
    if (n->empty()) return fail(bad(at, "empty syscall name"));
    rule.names.push_back(std::move(*n));
  }

  auto act = parse_action_name(r["action"], where + ".action");
  if (!act) return fail(act.error());
  int err = default_errno;
  if (r.contains("errnoRet")) {
    if (*act != Act::Errno) return fail(bad(where + ".errnoRet", "only valid with SCMP_ACT_ERRNO"));
    auto e = get_errno(r["errnoRet"], where + ".errnoRet");
    if (!e) return fail(e.error());
    err = *e;
  }
  rule.action = to_scmp(*act, err);

  if (r.contains("args") && !r["args"].is_null()) {
    const json& args = r["args"];
    if (!args.is_array())
      return fail(bad(where + ".args", "expected an array, got " + type_name(args)));
    if (args.size() > 6) return fail(bad(where + ".args", "more than 6 comparisons"));
    for (std::size_t j = 0; j < args.size(); ++j) {
      auto cmp = parse_arg(args[j], where + ".args[" + std::to_string(j) + "]");
      if (!cmp) return fail(cmp.error());
      rule.args.push_back(*cmp);
    }
  }
  if (r.contains("comment")) {
    if (auto c = get_string(r["comment"], where + ".comment"); !c) return fail(c.error());
  }
  return rule;
}

Status set_attr(scmp_filter_ctx ctx, scmp_filter_attr attr, std::uint32_t value,
                std::string_view what) {
  int rc = seccomp_attr_set(ctx, attr, value);
  if (rc < 0) return fail(internal("libseccomp: set " + std::string(what), -rc));
  return {};
}

// Exports the compiled program. libseccomp 2.5 only writes BPF to an fd, so
// the program goes through a close-on-exec memfd and is read back.
Result<std::vector<sock_filter>> export_bpf(scmp_filter_ctx ctx) {
  int raw = ::memfd_create("cloister-seccomp-bpf", MFD_CLOEXEC);
  if (raw < 0) return fail(sys_error("memfd_create"));
  Fd fd(raw);
  int rc = seccomp_export_bpf(ctx, fd.get());
  if (rc < 0) return fail(internal("libseccomp: export BPF", -rc));
  if (::lseek(fd.get(), 0, SEEK_SET) != 0) return fail(sys_error("lseek memfd"));
  auto bytes = read_fd(fd.get());
  if (!bytes) return fail(bytes.error().wrap("read exported BPF"));
  if (bytes->empty() || bytes->size() % sizeof(sock_filter) != 0)
    return fail(internal("exported BPF has odd size " + std::to_string(bytes->size())));
  std::size_t n = bytes->size() / sizeof(sock_filter);
  if (n > BPF_MAXINSNS)
    return fail(make_error(ErrorKind::Limit, "compiled filter has " + std::to_string(n) +
                                                 " instructions, the kernel accepts at most " +
                                                 std::to_string(BPF_MAXINSNS)));
  std::vector<sock_filter> insns(n);
  std::memcpy(insns.data(), bytes->data(), bytes->size());
  return insns;
}

Result<Filter> compile_json(const json& doc) {
  if (!doc.is_object()) return fail(invalid("expected a JSON object, got " + type_name(doc)));
  if (auto st = check_keys(
          doc, "", {"defaultAction", "defaultErrnoRet", "architectures", "syscalls", "comment"});
      !st)
    return fail(st.error());

  int default_errno = EPERM;
  if (doc.contains("defaultErrnoRet")) {
    auto e = get_errno(doc["defaultErrnoRet"], "defaultErrnoRet");
    if (!e) return fail(e.error());
    default_errno = *e;
  }
  if (!doc.contains("defaultAction")) return fail(bad("defaultAction", "missing"));
  auto default_act = parse_action_name(doc["defaultAction"], "defaultAction");
  if (!default_act) return fail(default_act.error());
  // Like Docker, defaultErrnoRet is also the errno of rules that use
  // SCMP_ACT_ERRNO without errnoRet, so it is valid with any default action.
  std::uint32_t default_action = to_scmp(*default_act, default_errno);

  if (doc.contains("architectures") && !doc["architectures"].is_null()) {
    const json& arches = doc["architectures"];
    if (!arches.is_array())
      return fail(bad("architectures", "expected an array of strings, got " + type_name(arches)));
    for (std::size_t i = 0; i < arches.size(); ++i)
      if (auto st = check_arch(arches[i], "architectures[" + std::to_string(i) + "]"); !st)
        return fail(st.error());
  }
  if (doc.contains("comment")) {
    if (auto c = get_string(doc["comment"], "comment"); !c) return fail(c.error());
  }

  std::vector<Rule> rules;
  if (doc.contains("syscalls") && !doc["syscalls"].is_null()) {
    const json& syscalls = doc["syscalls"];
    if (!syscalls.is_array())
      return fail(bad("syscalls", "expected an array, got " + type_name(syscalls)));
    for (std::size_t i = 0; i < syscalls.size(); ++i) {
      auto rule = parse_rule(syscalls[i], i, default_errno);
      if (!rule) return fail(rule.error());
      rules.push_back(std::move(*rule));
    }
  }

  // The profile is valid; build the filter. Nothing here needs privilege:
  // the program is only loaded later, by apply() in the child.
  Ctx ctx(seccomp_init(default_action));
  if (!ctx) return fail(bad("defaultAction", "libseccomp rejected the default action"));
  // The pipeline sets no_new_privs itself, explicitly, before apply().
  if (auto st = set_attr(ctx.get(), SCMP_FLTATR_CTL_NNP, 0, "CTL_NNP"); !st)
    return fail(st.error());
  if (auto st = set_attr(ctx.get(), SCMP_FLTATR_CTL_TSYNC, 0, "CTL_TSYNC"); !st)
    return fail(st.error());
  // Foreign ABIs (i386, x32) kill the process: see the comment at the top.
  if (auto st = set_attr(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS, "ACT_BADARCH");
      !st)
    return fail(st.error());
  // A binary tree keeps a ~300-syscall allowlist at a few comparisons a call.
  if (auto st = set_attr(ctx.get(), SCMP_FLTATR_CTL_OPTIMIZE, 2, "CTL_OPTIMIZE"); !st)
    return fail(st.error());

  // Unconditional action per syscall, to refuse profiles that give one
  // syscall two different unconditional actions (libseccomp would silently
  // keep one of them).
  struct Seen {
    std::uint32_t action;
    std::string where;
  };
  std::map<int, Seen> unconditional;
  for (const Rule& rule : rules) {
    // Docker/runc semantics: comparisons on distinct arguments are ANDed in
    // one rule; if an argument index repeats (which libseccomp cannot express
    // in one rule), each comparison becomes a rule of its own (ORed).
    bool repeated = false;
    unsigned seen_index[6] = {};
    for (const auto& cmp : rule.args) repeated = repeated || ++seen_index[cmp.arg] > 1;

    for (const std::string& name : rule.names) {
      int nr = seccomp_syscall_resolve_name(name.c_str());
      // Unknown to this libseccomp (newer than it, or misspelt): skipped, so
      // that one profile can serve several libseccomp versions.
      if (nr == __NR_SCMP_ERROR) continue;
      if (rule.args.empty()) {
        auto [it, inserted] = unconditional.try_emplace(nr, Seen{rule.action, rule.where});
        if (!inserted && it->second.action != rule.action)
          return fail(bad(rule.where + ".names",
                          "'" + name + "' already has a different action in " + it->second.where));
      }
      // A rule whose action is the default action changes nothing (and
      // libseccomp refuses it).
      if (rule.action == default_action) continue;
      auto add = [&](const scmp_arg_cmp* cmps, std::size_t n) -> Status {
        int rc = seccomp_rule_add_array(ctx.get(), rule.action, nr, static_cast<unsigned int>(n),
                                        n == 0 ? nullptr : cmps);
        // -EDOM: a syscall of another architecture (e.g. chown32).
        if (rc < 0 && rc != -EDOM)
          return fail(
              make_error(ErrorKind::Invalid, rule.where + ": add rule for '" + name + "'", -rc));
        return {};
      };
      if (!repeated) {
        if (auto st = add(rule.args.data(), rule.args.size()); !st) return fail(st.error());
      } else {
        for (const auto& cmp : rule.args)
          if (auto st = add(&cmp, 1); !st) return fail(st.error());
      }
    }
  }
  auto insns = export_bpf(ctx.get());
  if (!insns) return fail(insns.error());
  return Filter(std::move(*insns));
}

// Reads a profile file: a regular file of bounded size (the path may come
// from an executor definition, so a FIFO or /dev/zero must not hang load()).
Result<std::string> read_profile_file(const std::string& path) {
  auto fd = open_fd(path, O_RDONLY | O_NOCTTY | O_NONBLOCK);
  if (!fd) return fail(fd.error());
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return fail(sys_error("fstat " + path));
  if (!S_ISREG(st.st_mode)) return fail(invalid(path + ": not a regular file"));
  if (st.st_size > kMaxProfileBytes)
    return fail(make_error(ErrorKind::Limit,
                           path + ": larger than " + std::to_string(kMaxProfileBytes) + " bytes"));
  return with_context(read_fd(fd->get()), path);
}

// Parses and compiles; errors carry no prefix (callers name the profile).
Result<Filter> compile_text(std::string_view profile_json) {
  try {
    json doc = json::parse(profile_json.begin(), profile_json.end());
    return compile_json(doc);
  } catch (const json::parse_error& e) {
    return fail(invalid(std::string("parse JSON: ") + e.what()));
  } catch (const json::exception& e) {
    return fail(invalid(e.what()));
  } catch (const std::bad_alloc&) {
    return fail(make_error(ErrorKind::Limit, "out of memory", ENOMEM));
  } catch (const std::exception& e) {
    return fail(internal(e.what()));
  }
}

Result<Filter> load_uncaught(const std::string& profile) {
  const std::string name = profile.empty() ? "default" : profile;
  if (name == "unconfined") return Filter{};

  static std::mutex mu;
  static std::map<std::string, Filter, std::less<>> cache;
  {
    std::lock_guard lock(mu);
    if (auto it = cache.find(name); it != cache.end()) return it->second;
  }

  // Compile outside the lock: reading a file may be slow, and compiling the
  // same name twice in a race is harmless (the first result is kept).
  Result<Filter> filter;
  if (name == "default") {
#ifndef CLOISTER_SECCOMP_COMPILER
    return Filter(std::vector<sock_filter>(
        embedded::seccomp_default_bpf,
        embedded::seccomp_default_bpf + embedded::seccomp_default_bpf_len));
#else
    filter = with_context(compile_text(embedded::seccomp_default_profile),
                          "seccomp profile default (built-in)");
#endif
  } else {
    auto text = read_profile_file(name);
    if (!text) return fail(text.error().wrap("seccomp profile"));
    filter = with_context(compile_text(*text), "seccomp profile " + name);
  }
  if (!filter) return filter;

  std::lock_guard lock(mu);
  auto [it, inserted] = cache.try_emplace(name, std::move(*filter));
  return it->second;
}

}  // namespace

Result<Filter> compile(std::string_view profile_json) {
  return with_context(compile_text(profile_json), "seccomp profile");
}

Result<Filter> load(const std::string& profile) {
  try {
    return load_uncaught(profile);
  } catch (const std::bad_alloc&) {
    return fail(
        make_error(ErrorKind::Limit, "seccomp profile " + profile + ": out of memory", ENOMEM));
  } catch (const std::exception& e) {
    return fail(internal("seccomp profile " + profile + ": " + e.what()));
  }
}

}  // namespace cloister::seccomp
