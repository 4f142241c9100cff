// YAML configuration -> validated ExecutorConfig values. See docs/config.md.
//
// The parser walks yaml-cpp's node tree itself instead of using as<T>(): the
// conversions yaml-cpp offers are lenient (yes/on/y are booleans, "-1" wraps
// to a huge unsigned, duplicate keys are silently shadowed), and they throw.
// Every value is checked here, strictly, and every error carries
// "<file>:<line>: <field path>: <what is wrong>".
//
// Tables drive the shape: kSections lists the top-level sections (only
// "executors" today; a "service" section is one more row and one more member
// of Config), kExecutorFields the fields of an executor. A key that is in no
// table is an error, with a suggestion when it is close to a known one.
#include "runtime/config.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <limits>
#include <map>
#include <span>
#include <sstream>
#include <unordered_map>

#include "isolate/capabilities.h"
#include "isolate/fd.h"
#include "isolate/mounts.h"
#include "isolate/namespaces.h"
#include "oci/reference.h"

namespace cloister {
namespace {

constexpr size_t kMaxConfigBytes = 4u << 20;
constexpr uint64_t kMaxId = 4294967294u;             // (uid_t)-1 means "no change"
constexpr uint64_t kMaxPids = 4194304;               // PID_MAX_LIMIT
constexpr uint64_t kMinCpuQuota = 1000;              // the kernel's minimum, 1 ms
constexpr uint64_t kMaxCpuQuota = (1ULL << 44) - 1;  // the kernel's max_cfs_runtime, in us
constexpr size_t kMaxNameLength = 64;

// ---------------------------------------------------------------------------
// Small text helpers.

// "lots" -> "\"lots\"", with control bytes escaped and long values cut short,
// so that an error message stays on one line.
std::string quote(std::string_view s) {
  constexpr size_t kMax = 60;
  std::string out = "\"";
  size_t n = 0;
  for (unsigned char c : s) {
    if (++n > kMax) {
      out += "...";
      break;
    }
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
  return out;
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Decimal digits only, no sign, no leading zeros (010 is octal to some YAML
// readers and decimal to others), no overflow.
std::optional<uint64_t> parse_decimal(std::string_view s) {
  if (!all_digits(s) || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// Splits "512m" into 512 and the multiplier of "m" from `units` (matched
// case-insensitively). nullopt when the number or the unit is bad or the
// product overflows.
struct Unit {
  std::string_view suffix;
  uint64_t factor;
};
std::optional<uint64_t> parse_with_unit(std::string_view s, std::span<const Unit> units) {
  size_t digits = 0;
  while (digits < s.size() && s[digits] >= '0' && s[digits] <= '9') ++digits;
  auto number = parse_decimal(s.substr(0, digits));
  if (!number) return std::nullopt;
  const std::string suffix = lower(s.substr(digits));
  for (const auto& u : units) {
    if (u.suffix != suffix) continue;
    if (*number > std::numeric_limits<uint64_t>::max() / u.factor) return std::nullopt;
    return *number * u.factor;
  }
  return std::nullopt;
}

constexpr uint64_t KiB = 1024, MiB = KiB * 1024, GiB = MiB * 1024, TiB = GiB * 1024;
constexpr Unit kByteUnits[] = {
    {"", 1},      {"b", 1},   {"k", KiB},  {"kb", KiB},  {"kib", KiB}, {"m", MiB},  {"mb", MiB},
    {"mib", MiB}, {"g", GiB}, {"gb", GiB}, {"gib", GiB}, {"t", TiB},   {"tb", TiB}, {"tib", TiB},
};
constexpr Unit kDurationUnits[] = {
    {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000},
};

// Levenshtein distance, for "did you mean" on unknown keys.
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diag = up;
    }
  }
  return row[b.size()];
}

// Names the seeds and neighbouring tools use for fields we call otherwise.
constexpr std::pair<std::string_view, std::string_view> kKeyHints[] = {
    {"env", "default_env"},
    {"environment", "default_env"},
    {"work_dir", "default_work_dir"},
    {"workdir", "default_work_dir"},
    {"working_dir", "default_work_dir"},
    {"cwd", "default_work_dir"},
    {"patterns", "allowlist"},
    {"allowed_commands", "allowlist"},
    {"executables", "executables_dir"},
    {"max_output", "output_limit"},
    {"whitelist", "command_whitelist"},
    {"mem_limit", "memory_limit"},
    {"memory", "memory_limit"},
    {"network", "network_mode"},
    {"read_only", "read_only_rootfs"},
    {"timeout_ms", "timeout"},
    {"ulimits", "rlimits"},
    {"cap_drops", "cap_drop"},
    {"security_opt", "seccomp_profile"},
    {"seccomp", "seccomp_profile"},
};

std::string suggestion(std::string_view key, std::span<const std::string_view> known) {
  for (const auto& [alias, field] : kKeyHints)
    if (alias == key && std::find(known.begin(), known.end(), field) != known.end())
      return std::string(field);
  return near_miss(key, known);
}

std::string join(std::span<const std::string_view> items) {
  std::string out;
  for (auto item : items) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

// The path of a child field: executors[0].default_env.PATH, but
// executors[0].tmpfs["/tmp"] for keys that are not identifiers.
std::string child_path(std::string_view parent, std::string_view key) {
  bool identifier = !key.empty() && !(key[0] >= '0' && key[0] <= '9') &&
                    std::all_of(key.begin(), key.end(),
                                [](unsigned char c) { return std::isalnum(c) || c == '_'; });
  std::string out(parent);
  if (identifier) {
    if (!out.empty()) out += '.';
    out += key;
  } else {
    out += '[' + quote(key) + ']';
  }
  return out;
}

// The mount facility's rules (isolate/mounts.h), phrased as the config's.
std::string path_problem(std::string_view p) {
  return mounts::path_problem(p);
}

bool valid_executor_name(std::string_view n) {
  return !n.empty() && n.size() <= kMaxNameLength &&
         std::all_of(n.begin(), n.end(), [](unsigned char c) {
           return std::isalnum(c) || c == '_' || c == '.' || c == ':' || c == '-';
         });
}

std::string tmpfs_options_problem(std::string_view options) {
  auto parsed = mounts::parse_tmpfs_options(std::string(options));
  return parsed ? "" : parsed.error().message;
}

// getpwnam_r / getgrnam_r with a buffer that grows on ERANGE.
struct PasswdEntry {
  uid_t uid;
  gid_t gid;
};
std::optional<PasswdEntry> lookup_user(const std::string& name) {
  std::vector<char> buf(16384);
  for (;;) {
    struct passwd pw {};
    struct passwd* out = nullptr;
    int rc = ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &out);
    if (rc == ERANGE && buf.size() < (1u << 24)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (rc != 0 || out == nullptr) return std::nullopt;
    return PasswdEntry{pw.pw_uid, pw.pw_gid};
  }
}

std::optional<gid_t> lookup_group(const std::string& name) {
  std::vector<char> buf(16384);
  for (;;) {
    struct group gr {};
    struct group* out = nullptr;
    int rc = ::getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &out);
    if (rc == ERANGE && buf.size() < (1u << 24)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (rc != 0 || out == nullptr) return std::nullopt;
    return gr.gr_gid;
  }
}

std::vector<gid_t> group_list(const std::string& name, gid_t gid) {
  int n = 32;
  std::vector<gid_t> groups;
  for (int attempt = 0; attempt < 8; ++attempt) {
    groups.resize(static_cast<size_t>(n));
    int want = n;
    if (::getgrouplist(name.c_str(), gid, groups.data(), &want) >= 0) {
      groups.resize(static_cast<size_t>(want));
      return groups;
    }
    n = std::max(want, n * 2);
  }
  return {gid};
}

// ---------------------------------------------------------------------------
// The walker.

// A node with where it sits: its field path and its line (1-based).
struct Field {
  YAML::Node node;
  std::string path;
  int line = 1;
};

struct Entry {
  std::string key;
  int key_line = 1;
  Field value;
};

int line_of(const YAML::Node& n, int fallback) {
  int line = n.Mark().line;
  return line >= 0 ? line + 1 : fallback;
}

const Entry* find_entry(const std::vector<Entry>& entries, std::string_view key) {
  for (const auto& e : entries)
    if (e.key == key) return &e;
  return nullptr;
}

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return "nothing (null)";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Scalar:
      return quote(n.Scalar());
  }
  return "?";
}

bool is_plain(const YAML::Node& n) {
  return n.Tag() == "?";
}

template <class T, class U>
Status assign(Result<T> r, U& out) {
  if (!r) return fail(std::move(r.error()));
  out = std::move(*r);
  return {};
}

class Parser {
 public:
  explicit Parser(std::string source) : source_(std::move(source)) {}

  Error error(int line, std::string_view path, std::string_view what) const {
    return invalid(source_ + ":" + std::to_string(line) + ": " + std::string(path) + ": " +
                   std::string(what));
  }
  Error error(const Field& f, std::string_view what) const { return error(f.line, f.path, what); }

  Result<std::string> string(const Field& f) const {
    if (!f.node.IsScalar()) return fail(error(f, "expected a string, got " + describe(f.node)));
    const std::string& s = f.node.Scalar();
    if (s.find('\0') != std::string::npos) return fail(error(f, "contains a NUL byte"));
    return s;
  }

  Result<bool> boolean(const Field& f) const {
    if (f.node.IsScalar() && is_plain(f.node)) {
      if (f.node.Scalar() == "true") return true;
      if (f.node.Scalar() == "false") return false;
    }
    return fail(error(f, "expected true or false, got " + describe(f.node) + quoted_note(f)));
  }

  Result<uint64_t> integer(const Field& f, uint64_t max, std::string_view hint = "") const {
    std::string what = "expected a non-negative integer";
    if (!hint.empty()) what += " (" + std::string(hint) + ")";
    if (!f.node.IsScalar() || !is_plain(f.node))
      return fail(error(f, what + ", got " + describe(f.node) + quoted_note(f)));
    auto v = parse_decimal(f.node.Scalar());
    if (!v) {
      if (all_digits(f.node.Scalar()) && f.node.Scalar()[0] != '0')
        return fail(error(f, "integer " + f.node.Scalar() + " is too large"));
      return fail(error(f, what + ", got " + describe(f.node)));
    }
    if (*v > max)
      return fail(error(f, "must be at most " + std::to_string(max) + ", got " + f.node.Scalar()));
    return *v;
  }

  Result<uint64_t> byte_size(const Field& f) const {
    if (f.node.IsScalar()) {
      if (auto v = parse_with_unit(f.node.Scalar(), kByteUnits)) return *v;
    }
    return fail(error(f, "expected a byte size (integer or 512m/1g), got " + describe(f.node)));
  }

  Result<std::chrono::milliseconds> duration(const Field& f) const {
    if (f.node.IsScalar()) {
      auto v = parse_with_unit(f.node.Scalar(), kDurationUnits);
      if (v && *v <= static_cast<uint64_t>(std::chrono::milliseconds::max().count()))
        return std::chrono::milliseconds(static_cast<int64_t>(*v));
    }
    return fail(error(
        f, "expected a duration (integer seconds, or 500ms/30s/5m/1h), got " + describe(f.node)));
  }

  Result<std::string> path(const Field& f) const {
    auto s = string(f);
    if (!s) return s;
    if (auto problem = path_problem(*s); !problem.empty())
      return fail(error(f, "path " + quote(*s) + " " + problem));
    return s;
  }

  Result<std::vector<Field>> sequence(const Field& f) const {
    if (!f.node.IsSequence()) return fail(error(f, "expected a list, got " + describe(f.node)));
    std::vector<Field> out;
    size_t i = 0;
    for (const auto& item : f.node) {
      out.push_back(Field{item, f.path + "[" + std::to_string(i) + "]", line_of(item, f.line)});
      ++i;
    }
    return out;
  }

  // The entries of a mapping in file order. Keys must be strings and unique;
  // with `known` non-empty, each key must be one of them.
  Result<std::vector<Entry>> mapping(const Field& f,
                                     std::span<const std::string_view> known = {}) const {
    if (!f.node.IsMap()) return fail(error(f, "expected a mapping, got " + describe(f.node)));
    std::vector<Entry> out;
    std::unordered_map<std::string, int> lines;
    for (const auto& kv : f.node) {
      const YAML::Node key = kv.first;
      const YAML::Node value = kv.second;
      const int key_line = line_of(key, f.line);
      if (!key.IsScalar())
        return fail(error(key_line, f.path.empty() ? "(top level)" : f.path,
                          "keys must be strings, got " + describe(key)));
      const std::string& k = key.Scalar();
      const std::string p = child_path(f.path, k);
      if (auto [at, inserted] = lines.emplace(k, key_line); !inserted)
        return fail(
            error(key_line, p, "given twice (first at line " + std::to_string(at->second) + ")"));
      if (!known.empty() && std::find(known.begin(), known.end(), k) == known.end()) {
        std::string what = "unknown field";
        if (k == "<<")
          what += " (YAML merge keys are not supported; write the fields out)";
        else if (auto s = suggestion(k, known); !s.empty())
          what += " (did you mean " + s + "?)";
        else
          what += "; known fields: " + join(known);
        return fail(error(key_line, p, what));
      }
      // A missing value ("key:") is marked at the next token: use the key's line.
      int value_line = value.IsNull() ? key_line : line_of(value, key_line);
      out.push_back(Entry{k, key_line, Field{value, p, value_line}});
    }
    return out;
  }

  Result<std::vector<std::string>> string_list(const Field& f) const {
    auto items = sequence(f);
    if (!items) return fail(items.error());
    std::vector<std::string> out;
    for (const auto& item : *items) {
      auto s = string(item);
      if (!s) return fail(s.error());
      out.push_back(std::move(*s));
    }
    return out;
  }

  Result<std::vector<std::string>> path_list(const Field& f, bool allow_root) const {
    auto items = sequence(f);
    if (!items) return fail(items.error());
    std::vector<std::string> out;
    for (const auto& item : *items) {
      auto p = path(item);
      if (!p) return fail(p.error());
      if (!allow_root && *p == "/")
        return fail(error(item, "\"/\" is not allowed here; list the directories instead"));
      if (std::find(out.begin(), out.end(), *p) != out.end())
        return fail(error(item, "path " + quote(*p) + " is listed twice"));
      out.push_back(std::move(*p));
    }
    return out;
  }

  Result<Config> document(const YAML::Node& root) const;
  Status executors(const Field& f, Config& config) const;
  Status images(const Field& f, Config& config) const;
  Result<ExecutorConfig> executor(const Field& f) const;
  Status callers(const Field& f, Config& config) const;
  Status service(const Field& f, Config& config) const;

 private:
  static std::string quoted_note(const Field& f) {
    if (!f.node.IsScalar() || is_plain(f.node)) return "";
    if (f.node.Tag() == "!") return " (a quoted string)";
    return " (tagged " + f.node.Tag() + ")";
  }

  std::string source_;
};

// ---------------------------------------------------------------------------
// Executor fields.

// What an executor is built into while its fields are read: the config plus
// the facts the cross-field checks need.
struct Building {
  ExecutorConfig cfg;
  bool host_paths_given = false;
  bool masked_paths_given = false;
  const Field* cap_add = nullptr;
  const Field* cap_drop = nullptr;
  const Field* allowed_dirs = nullptr;
  const Field* executables_dir = nullptr;
  const Field* work_dir = nullptr;
  const Field* whitelist = nullptr;
  // sysctl entries' values, for errors found once network_mode is known.
  std::vector<Field> sysctls;
  // Mount target -> "<kind> at line N", across tmpfs and volumes.
  std::map<std::string, std::string> targets;
};

using FieldHandler = Status (*)(const Parser&, const Field&, Building&);
struct FieldRule {
  std::string_view key;
  FieldHandler handle;
};

Status parse_kind(const Parser& p, const Field& f, Building& b) {
  auto s = p.string(f);
  if (!s) return fail(s.error());
  if (*s == "host" || *s == "exec.native") {
    b.cfg.kind = ExecutorKind::Host;
    return {};
  }
  if (*s == "container" || *s == "exec.docker") {
    b.cfg.kind = ExecutorKind::Container;
    return {};
  }
  return fail(
      p.error(f, "expected host (exec.native) or container (exec.docker), got " + quote(*s)));
}

Status parse_work_dir(const Parser& p, const Field& f, Building& b) {
  b.work_dir = &f;
  return assign(p.path(f), b.cfg.default_work_dir);
}

Status parse_env(const Parser& p, const Field& f, Building& b) {
  auto entries = p.mapping(f);
  if (!entries) return fail(entries.error());
  for (const auto& e : *entries) {
    if (e.key.empty()) return fail(p.error(e.key_line, f.path, "variable names must not be empty"));
    if (e.key.find('=') != std::string::npos || e.key.find('\0') != std::string::npos)
      return fail(p.error(e.key_line, e.value.path,
                          "variable name " + quote(e.key) + " must not contain '=' or NUL"));
    auto v = p.string(e.value);
    if (!v) return fail(v.error());
    b.cfg.default_env.emplace_back(e.key, std::move(*v));
  }
  return {};
}

Status parse_whitelist(const Parser& p, const Field& f, Building& b) {
  b.whitelist = &f;
  auto items = p.sequence(f);
  if (!items) return fail(items.error());
  if (items->empty())
    return fail(p.error(f,
                        "an empty whitelist would allow nothing; remove the field to allow every "
                        "command"));
  for (const auto& item : *items) {
    auto s = p.string(item);
    if (!s) return fail(s.error());
    if (s->empty()) return fail(p.error(item, "a whitelisted command must not be empty"));
    b.cfg.command_whitelist.push_back(std::move(*s));
  }
  return {};
}

Status parse_network(const Parser& p, const Field& f, Building& b) {
  auto s = p.string(f);
  if (!s) return fail(s.error());
  if (*s == "none") {
    b.cfg.network_mode = NetworkMode::None;
  } else if (*s == "host") {
    b.cfg.network_mode = NetworkMode::Host;
  } else if (*s == "bridge") {
    return fail(p.error(f, "network_mode \"bridge\" is not supported yet (use none or host)"));
  } else {
    return fail(p.error(f, "expected none or host, got " + quote(*s)));
  }
  return {};
}

Status parse_memory(const Parser& p, const Field& f, Building& b) {
  return assign(p.byte_size(f), b.cfg.memory_limit);
}

Status parse_cpu_quota(const Parser& p, const Field& f, Building& b) {
  auto v = p.integer(f, kMaxCpuQuota, "microseconds per 100000, 0 = unlimited");
  if (!v) return fail(v.error());
  if (*v != 0 && *v < kMinCpuQuota)
    return fail(p.error(
        f, "must be 0 (unlimited) or at least 1000 (1% of one CPU), got " + std::to_string(*v)));
  b.cfg.cpu_quota = *v;
  return {};
}

Status parse_pids(const Parser& p, const Field& f, Building& b) {
  b.cfg.pids_limit_set = true;
  return assign(p.integer(f, kMaxPids, "0 = unlimited"), b.cfg.pids_limit);
}

Status parse_read_only(const Parser& p, const Field& f, Building& b) {
  return assign(p.boolean(f), b.cfg.read_only_rootfs);
}

Status parse_no_new_privs(const Parser& p, const Field& f, Building& b) {
  return assign(p.boolean(f), b.cfg.no_new_privileges);
}

// userns: auto (a user namespace per executor, the default) | sandbox (a
// range per sandbox) | host.
Status parse_userns(const Parser& p, const Field& f, Building& b) {
  auto s = p.string(f);
  if (!s) return fail(s.error());
  b.cfg.userns_host = *s == "host";
  b.cfg.userns_sandbox = *s == "sandbox";
  if (*s != "auto" && *s != "host" && *s != "sandbox")
    return fail(p.error(f, "expected auto, sandbox or host, got " + quote(*s)));
  return {};
}

Status parse_userns_size(const Parser& p, const Field& f, Building& b) {
  auto v = p.integer(f, 0xfffffffeu, "ids of each sandbox's range, with userns: sandbox");
  if (!v) return fail(v.error());
  if (*v == 0) return fail(p.error(f, "a range of 0 ids"));
  b.cfg.userns_size = static_cast<uint32_t>(*v);
  return {};
}

Status parse_userns_range(const Parser& p, const Field& f, Building& b) {
  auto s = p.string(f);
  if (!s) return fail(s.error());
  auto m = userns::parse(*s);
  if (!m) return fail(p.error(f, m.error().message));
  b.cfg.userns_range = *m;
  return {};
}

// Capability names are stored canonical: "CAP_NET_RAW", or "ALL".
Result<std::vector<std::string>> capability_list(const Parser& p, const Field& f) {
  auto items = p.sequence(f);
  if (!items) return fail(items.error());
  std::vector<std::string> out;
  for (const auto& item : *items) {
    auto s = p.string(item);
    if (!s) return fail(s.error());
    std::string name;
    if (lower(*s) == "all") {
      name = "ALL";
    } else if (auto cap = capabilities::from_name(*s)) {
      name = capabilities::name(*cap);
    } else {
      return fail(p.error(item, "unknown capability " + quote(*s) +
                                    " (expected a name such as NET_BIND_SERVICE, or ALL)"));
    }
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(std::move(name));
  }
  return out;
}

Status parse_cap_add(const Parser& p, const Field& f, Building& b) {
  b.cap_add = &f;
  return assign(capability_list(p, f), b.cfg.cap_add);
}

Status parse_cap_drop(const Parser& p, const Field& f, Building& b) {
  b.cap_drop = &f;
  return assign(capability_list(p, f), b.cfg.cap_drop);
}

Status claim_target(const Parser& p, const Field& f, Building& b, const std::string& target,
                    std::string_view kind) {
  auto [it, inserted] =
      b.targets.emplace(target, std::string(kind) + " at line " + std::to_string(f.line));
  if (!inserted)
    return fail(
        p.error(f, "mount target " + quote(target) + " is already used (" + it->second + ")"));
  return {};
}

Status parse_tmpfs(const Parser& p, const Field& f, Building& b) {
  auto entries = p.mapping(f);
  if (!entries) return fail(entries.error());
  for (const auto& e : *entries) {
    Field target{YAML::Node(e.key), e.value.path, e.key_line};
    if (auto problem = path_problem(e.key); !problem.empty())
      return fail(p.error(target, "path " + quote(e.key) + " " + problem));
    if (e.key == "/")
      return fail(p.error(target, "a tmpfs cannot replace \"/\" (the root is already fresh)"));
    auto options = p.string(e.value);
    if (!options) return fail(options.error());
    if (auto problem = tmpfs_options_problem(*options); !problem.empty())
      return fail(p.error(e.value, problem));
    if (auto s = claim_target(p, target, b, e.key, "tmpfs"); !s) return s;
    b.cfg.tmpfs.push_back(TmpfsMount{e.key, std::move(*options)});
  }
  return {};
}

Status parse_volumes(const Parser& p, const Field& f, Building& b) {
  auto items = p.sequence(f);
  if (!items) return fail(items.error());
  for (const auto& item : *items) {
    auto s = p.string(item);
    if (!s) return fail(s.error());
    std::vector<std::string> parts;
    size_t start = 0;
    for (;;) {
      size_t colon = s->find(':', start);
      parts.push_back(s->substr(start, colon - start));
      if (colon == std::string::npos) break;
      start = colon + 1;
    }
    if (parts.size() < 2 || parts.size() > 3)
      return fail(p.error(item, "expected host:container[:ro|rw][,idmap], got " + quote(*s)));
    BindMount m;
    m.source = parts[0];
    m.target = parts[1];
    m.read_only = false;  // Docker and Wippy: a volume is writable unless it says ro
    if (auto problem = path_problem(m.source); !problem.empty())
      return fail(p.error(item, "host path " + quote(m.source) + " " + problem));
    if (auto problem = path_problem(m.target); !problem.empty())
      return fail(p.error(item, "container path " + quote(m.target) + " " + problem));
    if (m.target == "/") return fail(p.error(item, "container path must not be \"/\""));
    if (parts.size() == 3) {
      // Comma-separated, as podman's: ro|rw, idmap.
      size_t at = 0;
      for (;;) {
        size_t comma = parts[2].find(',', at);
        std::string opt = parts[2].substr(at, comma - at);
        if (opt == "ro") {
          m.read_only = true;
        } else if (opt == "idmap") {
          m.idmap = true;
        } else if (opt != "rw") {
          return fail(
              p.error(item, "unknown volume option " + quote(opt) + " (expected ro, rw or idmap)"));
        }
        if (comma == std::string::npos) break;
        at = comma + 1;
      }
    }
    struct stat st {};
    if (::stat(m.source.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR)
        return fail(p.error(item, "host path " + quote(m.source) + " does not exist"));
      return fail(p.error(item, "host path " + quote(m.source) + ": " + std::strerror(errno)));
    }
    if (auto c = claim_target(p, item, b, m.target, "volume"); !c) return c;
    b.cfg.volumes.push_back(std::move(m));
  }
  return {};
}

// "uid[:gid]", "name[:group]": names are looked up in the host's user and
// group databases (getpwnam_r / getgrnam_r).
Status parse_user(const Parser& p, const Field& f, Building& b) {
  auto s = p.string(f);
  if (!s) return fail(s.error());
  const std::string expected = "expected uid[:gid] or a user name[:group], got " + quote(*s);
  size_t colon = s->find(':');
  const std::string user = s->substr(0, colon);
  const std::optional<std::string> group =
      colon == std::string::npos ? std::nullopt : std::optional(s->substr(colon + 1));
  if (user.empty() || (group && (group->empty() || group->find(':') != std::string::npos)))
    return fail(p.error(f, expected));
  // A container's users are the image's: resolved against its /etc/passwd
  // when the executor is created (oci/container.h).
  if (b.cfg.kind == ExecutorKind::Container) {
    b.cfg.user = *s;
    return {};
  }

  Identity id;
  std::optional<gid_t> gid;
  if (group) {
    if (all_digits(*group)) {
      auto g = parse_decimal(*group);
      if (!g || *g > kMaxId)
        return fail(p.error(f, "gid " + quote(*group) + " must be a decimal number from 0 to " +
                                   std::to_string(kMaxId)));
      gid = static_cast<gid_t>(*g);
    } else if (auto g = lookup_group(*group)) {
      gid = *g;
    } else {
      return fail(p.error(f, "group " + quote(*group) + " not found on this host"));
    }
  }
  if (all_digits(user)) {
    auto u = parse_decimal(user);
    if (!u || *u > kMaxId)
      return fail(p.error(f, "uid " + quote(user) + " must be a decimal number from 0 to " +
                                 std::to_string(kMaxId)));
    id.uid = static_cast<uid_t>(*u);
    id.gid = gid ? *gid : static_cast<gid_t>(*u);
  } else {
    auto pw = lookup_user(user);
    if (!pw) return fail(p.error(f, "user " + quote(user) + " not found on this host"));
    id.uid = pw->uid;
    id.gid = gid ? *gid : pw->gid;
    id.groups = group_list(user, id.gid);
  }
  b.cfg.user = *s;
  b.cfg.identity = std::move(id);
  return {};
}

Status parse_hostname(const Parser& p, const Field& f, Building& b) {
  auto s = p.string(f);
  if (!s) return fail(s.error());
  // The one rule, the UTS facility's; the config adds where and what.
  if (!namespaces::check_hostname(*s))
    return fail(p.error(f,
                        "expected a host name (letters, digits, '-' and '.', at most 64 "
                        "characters), got " +
                            quote(*s)));
  b.cfg.hostname = std::move(*s);
  return {};
}

// sysctl: { net.ipv4.ip_forward: "1" }; the facility's rule (isolate/sysctl.h)
// is applied once the executor's network_mode is known.
Status parse_sysctl(const Parser& p, const Field& f, Building& b) {
  auto entries = p.mapping(f);
  if (!entries) return fail(entries.error());
  for (const auto& e : *entries) {
    if (!e.value.node.IsScalar())
      return fail(p.error(e.value, "expected a value, got " + describe(e.value.node)));
    b.cfg.sysctls.push_back({e.key, e.value.node.Scalar()});
    b.sysctls.push_back(e.value);
  }
  return {};
}

Status parse_host_paths(const Parser& p, const Field& f, Building& b) {
  b.host_paths_given = true;
  return assign(p.path_list(f, false), b.cfg.host_paths);
}

Status parse_masked_paths(const Parser& p, const Field& f, Building& b) {
  b.masked_paths_given = true;
  return assign(p.path_list(f, false), b.cfg.masked_paths);
}

Result<rlim_t> rlimit_value(const Parser& p, const Field& f) {
  if (f.node.IsScalar() && f.node.Scalar() == "unlimited") return RLIM_INFINITY;
  if (f.node.IsScalar() && is_plain(f.node)) {
    auto v = parse_decimal(f.node.Scalar());
    if (v && *v < RLIM_INFINITY) return static_cast<rlim_t>(*v);
  }
  return fail(
      p.error(f, "expected a non-negative integer or \"unlimited\", got " + describe(f.node)));
}

std::string rlimit_text(rlim_t v) {
  return v == RLIM_INFINITY ? "unlimited" : std::to_string(v);
}

Status parse_rlimits(const Parser& p, const Field& f, Building& b) {
  auto entries = p.mapping(f);
  if (!entries) return fail(entries.error());
  std::map<int, std::string> seen;
  for (const auto& e : *entries) {
    auto resource = rlimits::from_name(e.key);
    if (!resource)
      return fail(p.error(e.key_line, e.value.path,
                          "unknown resource limit " + quote(e.key) +
                              " (expected as, core, cpu, data, fsize, locks, memlock, msgqueue, "
                              "nice, nofile, nproc, rss, rtprio, rttime, sigpending or stack)"));
    if (auto [at, inserted] = seen.emplace(*resource, e.key); !inserted)
      return fail(p.error(e.key_line, e.value.path,
                          "the same limit as " + quote(at->second) + " (given twice)"));
    rlim_t soft = 0, hard = 0;
    if (e.value.node.IsMap()) {
      static constexpr std::string_view kKeys[] = {"soft", "hard"};
      auto parts = p.mapping(e.value, kKeys);
      if (!parts) return fail(parts.error());
      for (auto key : kKeys)
        if (!find_entry(*parts, key))
          return fail(p.error(e.value.line, child_path(e.value.path, key), "required"));
      auto s = rlimit_value(p, find_entry(*parts, "soft")->value);
      if (!s) return fail(s.error());
      auto h = rlimit_value(p, find_entry(*parts, "hard")->value);
      if (!h) return fail(h.error());
      soft = *s;
      hard = *h;
    } else {
      auto v = rlimit_value(p, e.value);
      if (!v) return fail(v.error());
      soft = hard = *v;
    }
    if (soft > hard)
      return fail(p.error(e.value, "soft limit " + rlimit_text(soft) + " is above hard limit " +
                                       rlimit_text(hard)));
    auto limit = rlimits::make(*resource, soft, hard);
    if (!limit) return fail(p.error(e.value, limit.error().what()));
    b.cfg.rlimits.push_back(*limit);
  }
  return {};
}

Status parse_seccomp(const Parser& p, const Field& f, Building& b) {
  auto s = p.string(f);
  if (!s) return fail(s.error());
  if (s->empty() || *s == "default") {
    b.cfg.seccomp_profile.clear();
    return {};
  }
  if (*s == "unconfined") {
    b.cfg.seccomp_profile = *s;
    return {};
  }
  if (auto problem = path_problem(*s); !problem.empty())
    return fail(p.error(f,
                        "expected \"default\", \"unconfined\" or an absolute path to a profile; "
                        "path " +
                            quote(*s) + " " + problem));
  struct stat st {};
  if (::stat(s->c_str(), &st) != 0)
    return fail(p.error(f, "profile " + quote(*s) + ": " + std::strerror(errno)));
  if (!S_ISREG(st.st_mode))
    return fail(p.error(f, "profile " + quote(*s) + " is not a regular file"));
  b.cfg.seccomp_profile = std::move(*s);
  return {};
}

// --- Policy fields (docs/policy.md) ---------------------------------------

constexpr uint64_t kMaxProcesses = 1000000;

Status parse_shell(const Parser& p, const Field& f, Building& b) {
  return assign(p.boolean(f), b.cfg.policy.shell);
}

Status parse_allowlist(const Parser& p, const Field& f, Building& b) {
  auto items = p.sequence(f);
  if (!items) return fail(items.error());
  if (items->empty())
    return fail(p.error(f,
                        "an empty allowlist would allow nothing; remove the field to allow every "
                        "command"));
  for (const auto& item : *items) {
    auto s = p.string(item);
    if (!s) return fail(s.error());
    auto pattern = policy::Pattern::parse(*s);
    if (!pattern) return fail(p.error(item, pattern.error().message));
    b.cfg.policy.allowlist.push_back(std::move(*pattern));
  }
  return {};
}

Status parse_allowed_dirs(const Parser& p, const Field& f, Building& b) {
  auto dirs = p.path_list(f, false);
  if (!dirs) return fail(dirs.error());
  if (dirs->empty())
    return fail(p.error(f, "an empty allowed_dirs would allow no work dir; remove the field"));
  b.cfg.policy.allowed_dirs = std::move(*dirs);
  b.allowed_dirs = &f;
  return {};
}

Status parse_executables_dir(const Parser& p, const Field& f, Building& b) {
  auto dir = p.path(f);
  if (!dir) return fail(dir.error());
  struct stat st {};
  if (::stat(dir->c_str(), &st) != 0)
    return fail(p.error(f, "host directory " + quote(*dir) + ": " + std::strerror(errno)));
  if (!S_ISDIR(st.st_mode))
    return fail(p.error(f, "host path " + quote(*dir) + " is not a directory"));
  b.cfg.policy.executables_dir = std::move(*dir);
  b.executables_dir = &f;
  return {};
}

Status parse_max_processes(const Parser& p, const Field& f, Building& b) {
  return assign(p.integer(f, kMaxProcesses, "0 = unlimited"), b.cfg.policy.max_processes);
}

// output_limit: 1m (each stream), or {stdout: 1m, stderr: 64k}.
Status parse_output_limit(const Parser& p, const Field& f, Building& b) {
  if (!f.node.IsMap()) {
    auto v = p.byte_size(f);
    if (!v) return fail(v.error());
    b.cfg.policy.stdout_limit = b.cfg.policy.stderr_limit = *v;
    return {};
  }
  static constexpr std::string_view kKeys[] = {"stdout", "stderr"};
  auto entries = p.mapping(f, kKeys);
  if (!entries) return fail(entries.error());
  for (const auto& e : *entries) {
    auto v = p.byte_size(e.value);
    if (!v) return fail(v.error());
    (e.key == "stdout" ? b.cfg.policy.stdout_limit : b.cfg.policy.stderr_limit) = *v;
  }
  return {};
}

Status parse_timeout(const Parser& p, const Field& f, Building& b) {
  return assign(p.duration(f), b.cfg.default_timeout);
}

// Fields of Wippy's exec.docker that only mean something for a container.
Status container_only(const Parser& p, const Field& f, Building& b) {
  if (b.cfg.kind != ExecutorKind::Container)
    return fail(p.error(f, "only valid for container executors (kind: container)"));
  return {};
}

Status parse_image(const Parser& p, const Field& f, Building& b) {
  if (auto s = container_only(p, f, b); !s) return s;
  auto s = p.string(f);
  if (!s) return fail(s.error());
  auto ref = oci::parse_reference(*s);
  if (!ref) return fail(p.error(f, ref.error().what()));
  b.cfg.image = ref->str();
  return {};
}

Status parse_entrypoint(const Parser& p, const Field& f, Building& b) {
  if (auto s = container_only(p, f, b); !s) return s;
  auto words = p.string_list(f);
  if (!words) return fail(words.error());
  if (std::find(words->begin(), words->end(), "") != words->end())
    return fail(p.error(f, "an entrypoint word must not be empty"));
  b.cfg.entrypoint = std::move(*words);
  return {};
}

Status parse_auto_remove(const Parser& p, const Field& f, Building& b) {
  if (auto s = container_only(p, f, b); !s) return s;
  return assign(p.boolean(f), b.cfg.auto_remove);
}

// Wippy's docker host URL: there is no daemon to talk to.
Status parse_docker_host(const Parser& p, const Field& f, Building& b) {
  if (auto s = container_only(p, f, b); !s) return s;
  return fail(p.error(f, "cloister runs containers itself: there is no Docker host to name"));
}

// "name" and "kind" are read first, by Parser::executor; the rest in file order.
constexpr FieldRule kExecutorFields[] = {
    {"name", nullptr},
    {"kind", parse_kind},
    {"default_work_dir", parse_work_dir},
    {"default_env", parse_env},
    {"command_whitelist", parse_whitelist},
    {"network_mode", parse_network},
    {"memory_limit", parse_memory},
    {"cpu_quota", parse_cpu_quota},
    {"pids_limit", parse_pids},
    {"read_only_rootfs", parse_read_only},
    {"no_new_privileges", parse_no_new_privs},
    {"userns", parse_userns},
    {"userns_range", parse_userns_range},
    {"userns_size", parse_userns_size},
    {"cap_drop", parse_cap_drop},
    {"cap_add", parse_cap_add},
    {"tmpfs", parse_tmpfs},
    {"volumes", parse_volumes},
    {"user", parse_user},
    {"hostname", parse_hostname},
    {"sysctl", parse_sysctl},
    {"host_paths", parse_host_paths},
    {"masked_paths", parse_masked_paths},
    {"rlimits", parse_rlimits},
    {"seccomp_profile", parse_seccomp},
    {"timeout", parse_timeout},
    {"default_timeout", parse_timeout},
    {"shell", parse_shell},
    {"allowlist", parse_allowlist},
    {"allowed_dirs", parse_allowed_dirs},
    {"executables_dir", parse_executables_dir},
    {"max_processes", parse_max_processes},
    {"output_limit", parse_output_limit},
    {"image", parse_image},
    {"entrypoint", parse_entrypoint},
    {"host", parse_docker_host},
    {"auto_remove", parse_auto_remove},
};

constexpr auto kExecutorKeys = [] {
  std::array<std::string_view, std::size(kExecutorFields)> keys{};
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = kExecutorFields[i].key;
  return keys;
}();

Result<ExecutorConfig> Parser::executor(const Field& f) const {
  auto entries = mapping(f, kExecutorKeys);
  if (!entries) return fail(entries.error());
  Building b;

  // The kind first: refusing a container executor is more useful than
  // complaining about one of its fields.
  if (const Entry* kind = find_entry(*entries, "kind"))
    if (auto s = parse_kind(*this, kind->value, b); !s) return fail(s.error());

  const Entry* name = find_entry(*entries, "name");
  if (!name) return fail(error(f.line, child_path(f.path, "name"), "required"));
  auto n = string(name->value);
  if (!n) return fail(n.error());
  if (!valid_executor_name(*n))
    return fail(error(name->value,
                      "expected 1 to 64 characters from A-Z a-z 0-9 _ . : -, got " + quote(*n)));
  b.cfg.name = std::move(*n);

  if (find_entry(*entries, "timeout") && find_entry(*entries, "default_timeout"))
    return fail(error(find_entry(*entries, "default_timeout")->value,
                      "give either timeout or default_timeout, not both"));

  for (const auto& e : *entries) {
    if (e.key == "name" || e.key == "kind") continue;
    auto rule = std::find_if(std::begin(kExecutorFields), std::end(kExecutorFields),
                             [&](const FieldRule& r) { return r.key == e.key; });
    if (auto s = rule->handle(*this, e.value, b); !s) return fail(s.error());
  }

  // Cross-field checks.
  if (b.cap_add && b.cap_drop) {
    for (const auto& cap : b.cfg.cap_add)
      if (std::find(b.cfg.cap_drop.begin(), b.cfg.cap_drop.end(), cap) != b.cfg.cap_drop.end())
        return fail(error(*b.cap_add, cap + " is in both cap_add and cap_drop"));
  }
  auto caps = capabilities::resolve(b.cfg.cap_add, b.cfg.cap_drop);
  if (!caps) return fail(error(f, caps.error().what()));
  b.cfg.capabilities = *caps;

  // Policy cross-field checks.
  const auto& pol = b.cfg.policy;
  if (pol.shell && b.executables_dir)
    return fail(error(*b.executables_dir,
                      "an executables_dir executor runs argv[0] from that directory; it cannot "
                      "also have shell: true"));
  if (b.allowed_dirs) {
    if (auto in = policy::check_work_dir(pol.allowed_dirs, b.cfg.default_work_dir); !in)
      return fail(
          error(b.work_dir ? *b.work_dir : *b.allowed_dirs,
                "default_work_dir " + quote(b.cfg.default_work_dir) + " is outside allowed_dirs"));
  }
  if (b.whitelist && !pol.shell) {
    // An entry sh would read as more than words can never match an argv.
    auto items = sequence(*b.whitelist);
    for (size_t i = 0; items && i < items->size(); ++i)
      if (auto w = policy::split_command(b.cfg.command_whitelist[i]); !w)
        return fail(error((*items)[i], w.error().message + " (an entry that can never match)"));
  }

  for (size_t i = 0; i < b.cfg.sysctls.size(); ++i)
    if (auto path = sysctl::path_of(b.cfg.sysctls[i], b.cfg.network_mode != NetworkMode::Host);
        !path)
      return fail(error(b.sysctls[i], path.error().message));

  if (b.cfg.kind == ExecutorKind::Container) {
    if (b.cfg.image.empty())
      return fail(error(f.line, child_path(f.path, "image"), "required for a container executor"));
    if (b.host_paths_given || b.masked_paths_given)
      return fail(error(f,
                        "host_paths and masked_paths are for host executors: a container's "
                        "root is its image"));
    return std::move(b.cfg);
  }
  if (!b.host_paths_given) b.cfg.host_paths = kDefaultHostPaths;
  if (!b.masked_paths_given) b.cfg.masked_paths = kDefaultMaskedPaths;
  return std::move(b.cfg);
}

Status Parser::executors(const Field& f, Config& config) const {
  auto items = sequence(f);
  if (!items) return fail(items.error());
  if (items->empty()) return fail(error(f, "must list at least one executor"));
  std::unordered_map<std::string, int> names;
  for (const auto& item : *items) {
    auto e = executor(item);
    if (!e) return fail(e.error());
    // The name's line, for the duplicate's error.
    const int name_line = line_of(item.node["name"], item.line);
    if (auto [at, inserted] = names.emplace(e->name, name_line); !inserted)
      return fail(error(name_line, child_path(item.path, "name"),
                        "duplicate executor name " + quote(e->name) + " (first at line " +
                            std::to_string(at->second) + ")"));
    config.executors.push_back(std::move(*e));
  }
  return {};
}

// The images section (oci/): `images: { state_dir: /var/lib/cloister }`.
Status Parser::images(const Field& f, Config& config) const {
  constexpr std::array<std::string_view, 4> kKeys = {"state_dir", "insecure_registries",
                                                     "auth_file", "mirrors"};
  auto entries = mapping(f, kKeys);
  if (!entries) return fail(entries.error());
  if (const Entry* e = find_entry(*entries, "state_dir"))
    if (auto s = assign(path(e->value), config.images.state_dir); !s) return s;
  if (const Entry* e = find_entry(*entries, "auth_file"))
    if (auto s = assign(path(e->value), config.images.auth_file); !s) return s;
  if (const Entry* e = find_entry(*entries, "insecure_registries")) {
    auto items = sequence(e->value);
    if (!items) return fail(items.error());
    for (const auto& item : *items) {
      auto host = string(item);
      if (!host) return fail(host.error());
      if (host->empty() || host->find_first_of("/ \t") != std::string::npos)
        return fail(error(item, "expected host[:port], got " + quote(*host)));
      config.images.insecure_registries.push_back(std::move(*host));
    }
  }
  if (const Entry* e = find_entry(*entries, "mirrors")) {
    auto regs = mapping(e->value);
    if (!regs) return fail(regs.error());
    for (const auto& r : *regs) {
      auto items = sequence(r.value);
      if (!items) return fail(items.error());
      std::vector<std::string> hosts;
      for (const auto& item : *items) {
        auto host = string(item);
        if (!host) return fail(host.error());
        if (host->empty() || host->find_first_of("/ \t") != std::string::npos)
          return fail(error(item, "expected host[:port], got " + quote(*host)));
        hosts.push_back(std::move(*host));
      }
      config.images.mirrors.emplace_back(r.key, std::move(hosts));
    }
  }
  return {};
}

// ---------------------------------------------------------------------------
// The service section (cloisterd). Its own table; fields in file order.

using ServiceHandler = Status (*)(const Parser&, const Field&, ServiceConfig&);
struct ServiceRule {
  std::string_view key;
  ServiceHandler handle;
};

Status service_socket(const Parser& p, const Field& f, ServiceConfig& c) {
  auto s = p.path(f);
  if (!s) return fail(s.error());
  // sun_path holds 108 bytes with the NUL.
  if (s->size() > 107) return fail(p.error(f, "socket path is longer than 107 bytes"));
  c.socket = std::move(*s);
  return {};
}
Status service_group(const Parser& p, const Field& f, ServiceConfig& c) {
  auto s = p.string(f);
  if (!s) return fail(s.error());
  if (auto gid = parse_decimal(*s); gid && *gid <= kMaxId) {
    c.socket_gid = static_cast<uint32_t>(*gid);
  } else if (auto g = lookup_group(*s)) {
    c.socket_gid = *g;
  } else {
    return fail(p.error(f, "no group named " + quote(*s)));
  }
  c.socket_group = std::move(*s);
  return {};
}
Status service_mode(const Parser& p, const Field& f, ServiceConfig& c) {
  if (f.node.IsScalar()) {
    const std::string& s = f.node.Scalar();
    if (!s.empty() && s.size() <= 4 && s[0] == '0' &&
        std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '7'; })) {
      c.socket_mode = static_cast<uint32_t>(std::stoul(s, nullptr, 8));
      if ((c.socket_mode & 0600) != 0600)
        return fail(p.error(f, "the owner (root) needs read and write: at least 0600"));
      return {};
    }
  }
  return fail(p.error(f, "expected an octal mode like 0660, got " + describe(f.node)));
}
Status service_buffer(const Parser& p, const Field& f, ServiceConfig& c) {
  auto v = p.byte_size(f);
  if (!v) return fail(v.error());
  if (*v < 4 * KiB || *v > GiB) return fail(p.error(f, "must be between 4k and 1g"));
  c.buffer_size = *v;
  return {};
}
Status service_log_dir(const Parser& p, const Field& f, ServiceConfig& c) {
  return assign(p.path(f), c.log_dir);
}
Status service_retention(const Parser& p, const Field& f, ServiceConfig& c) {
  return assign(p.duration(f), c.retention);
}
Status service_max_run(const Parser& p, const Field& f, ServiceConfig& c) {
  return assign(p.duration(f), c.max_run_after_disconnect);
}
Status service_max_sessions(const Parser& p, const Field& f, ServiceConfig& c) {
  auto v = p.integer(f, 1'000'000);
  if (!v) return fail(v.error());
  if (*v == 0) return fail(p.error(f, "must be at least 1"));
  c.max_sessions = *v;
  return {};
}
Status service_per_executor(const Parser& p, const Field& f, ServiceConfig& c) {
  return assign(p.integer(f, 1'000'000, "0 = no limit"), c.max_sessions_per_executor);
}
Status service_per_caller(const Parser& p, const Field& f, ServiceConfig& c) {
  return assign(p.integer(f, 1'000'000, "0 = no limit"), c.max_sessions_per_caller);
}
Status service_max_clients(const Parser& p, const Field& f, ServiceConfig& c) {
  auto v = p.integer(f, 1'000'000);
  if (!v) return fail(v.error());
  if (*v == 0) return fail(p.error(f, "must be at least 1"));
  c.max_clients = *v;
  return {};
}
Status service_max_frame(const Parser& p, const Field& f, ServiceConfig& c) {
  auto v = p.byte_size(f);
  if (!v) return fail(v.error());
  if (*v < 64 * KiB || *v > 64 * MiB) return fail(p.error(f, "must be between 64k and 64m"));
  c.max_frame = *v;
  return {};
}
Status service_hello_timeout(const Parser& p, const Field& f, ServiceConfig& c) {
  return assign(p.duration(f), c.hello_timeout);
}
Status service_idle_timeout(const Parser& p, const Field& f, ServiceConfig& c) {
  return assign(p.duration(f), c.idle_timeout);
}
Status service_shutdown(const Parser& p, const Field& f, ServiceConfig& c) {
  auto s = p.string(f);
  if (!s) return fail(s.error());
  if (*s == "kill") {
    c.shutdown = ShutdownMode::Kill;
  } else if (*s == "wait") {
    c.shutdown = ShutdownMode::Wait;
  } else {
    return fail(p.error(f, "expected kill or wait, got " + quote(*s)));
  }
  return {};
}
Status service_grace(const Parser& p, const Field& f, ServiceConfig& c) {
  return assign(p.duration(f), c.shutdown_grace);
}

constexpr ServiceRule kServiceFields[] = {
    {"socket", service_socket},
    {"socket_group", service_group},
    {"socket_mode", service_mode},
    {"buffer_size", service_buffer},
    {"log_dir", service_log_dir},
    {"retention", service_retention},
    {"max_run_after_disconnect", service_max_run},
    {"max_sessions", service_max_sessions},
    {"max_sessions_per_executor", service_per_executor},
    {"max_sessions_per_caller", service_per_caller},
    {"max_clients", service_max_clients},
    {"max_frame", service_max_frame},
    {"hello_timeout", service_hello_timeout},
    {"idle_timeout", service_idle_timeout},
    {"shutdown", service_shutdown},
    {"shutdown_grace", service_grace},
};

constexpr auto kServiceKeys = [] {
  std::array<std::string_view, std::size(kServiceFields)> keys{};
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = kServiceFields[i].key;
  return keys;
}();

Status Parser::service(const Field& f, Config& config) const {
  auto entries = mapping(f, kServiceKeys);
  if (!entries) return fail(entries.error());
  for (const auto& e : *entries) {
    auto rule = std::find_if(std::begin(kServiceFields), std::end(kServiceFields),
                             [&](const ServiceRule& r) { return r.key == e.key; });
    if (auto s = rule->handle(*this, e.value, config.service); !s) return fail(s.error());
  }
  return {};
}

// ---------------------------------------------------------------------------
// Top-level sections.

struct Section {
  std::string_view key;
  bool required;
  Status (Parser::*parse)(const Field&, Config&) const;
};

constexpr Section kSections[] = {
    {"executors", true, &Parser::executors},
    {"callers", false, &Parser::callers},
    {"images", false, &Parser::images},
    {"service", false, &Parser::service},
};

constexpr auto kSectionKeys = [] {
  std::array<std::string_view, std::size(kSections)> keys{};
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = kSections[i].key;
  return keys;
}();

Result<Config> Parser::document(const YAML::Node& root) const {
  Config config;
  config.path = source_;
  std::vector<Entry> entries;
  if (!root.IsNull()) {  // an empty file is a mapping without sections
    Field top{root, "", line_of(root, 1)};
    if (!root.IsMap())
      return fail(error(top.line, "(top level)",
                        "expected a mapping of sections (executors:), got " + describe(root)));
    auto e = mapping(top, kSectionKeys);
    if (!e) return fail(e.error());
    entries = std::move(*e);
  }
  for (const auto& section : kSections) {
    const Entry* e = find_entry(entries, section.key);
    if (!e) {
      if (section.required)
        return fail(error(line_of(root, 1), section.key, "required section is missing"));
      continue;
    }
    if (auto s = (this->*section.parse)(e->value, config); !s) return fail(s.error());
  }
  for (auto& e : config.executors) {
    e.policy.callers = config.callers;
    if (e.kind == ExecutorKind::Container) {
      e.state_dir = config.images.state_dir;
      e.insecure_registries = config.images.insecure_registries;
      e.auth_file = config.images.auth_file;
      e.mirrors = config.images.mirrors;
    }
  }
  return config;
}

// Counts documents without building nodes.
class DocumentStarts : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> marks;
  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// One document per file. This walks the events of at most two documents
// before anything is built, because yaml-cpp 0.7 never gets past a stray ','
// before the first node: it yields empty documents forever without consuming
// it (YAML::LoadAll then allocates until the process dies, YAML::Load returns
// an empty document). Two documents starting at the same offset are that.
Status check_documents(const Parser& parser, const std::string& text) {
  std::istringstream in(text);
  YAML::Parser events(in);
  DocumentStarts starts;
  while (starts.marks.size() < 2 && events.HandleNextDocument(starts)) {
  }
  if (starts.marks.size() < 2) return {};
  const YAML::Mark& second = starts.marks[1];
  if (second.pos == starts.marks[0].pos) {
    std::string what = "unexpected ";
    if (second.pos >= 0 && static_cast<size_t>(second.pos) < text.size())
      what += quote(text.substr(static_cast<size_t>(second.pos), 1));
    else
      what += "token";
    what += " (column " + std::to_string(second.column + 1) + ")";
    return fail(parser.error(second.line + 1, "yaml", what));
  }
  return fail(parser.error(second.line + 1, "(top level)", "only one YAML document is allowed"));
}

// callers: a list of rules, each naming users and/or groups and granting
// permissions (policy/caller.h).
Status Parser::callers(const Field& f, Config& config) const {
  auto items = sequence(f);
  if (!items) return fail(items.error());
  static constexpr std::string_view kKeys[] = {"users",          "groups",         "exec.get",
                                               "exec.run",       "session.attach", "session.signal",
                                               "session.remove", "session.exec",   "session.cp",
                                               "image.events",   "max_processes"};
  auto rules = std::make_shared<policy::CallerRules>();
  for (const auto& item : *items) {
    auto entries = mapping(item, kKeys);
    if (!entries) return fail(entries.error());
    policy::CallerRules::Rule r;
    r.origin = source_ + ":" + std::to_string(item.line);
    for (const auto& e : *entries) {
      if (e.key == "users" || e.key == "groups") {
        auto list = sequence(e.value);
        if (!list) return fail(list.error());
        for (const auto& id : *list) {
          auto s = string(id);
          if (!s) return fail(s.error());
          const bool user = e.key == "users";
          if (all_digits(*s)) {
            auto v = parse_decimal(*s);
            if (!v || *v > kMaxId) return fail(error(id, "id " + quote(*s) + " is out of range"));
            (user ? r.uids : r.gids).push_back(static_cast<uint32_t>(*v));
          } else if (user) {
            auto pw = lookup_user(*s);
            if (!pw) return fail(error(id, "user " + quote(*s) + " not found on this host"));
            r.uids.push_back(pw->uid);
          } else {
            auto g = lookup_group(*s);
            if (!g) return fail(error(id, "group " + quote(*s) + " not found on this host"));
            r.gids.push_back(*g);
          }
        }
      } else if (e.key == "exec.get") {
        auto names = string_list(e.value);
        if (!names) return fail(names.error());
        for (const auto& n : *names)
          if (n != "*" && !config.find(n))
            return fail(error(e.value, "no executor named " + quote(n) + " (or \"*\" for all)"));
        r.executors = std::move(*names);
      } else if (e.key == "exec.run") {
        auto list = sequence(e.value);
        if (!list) return fail(list.error());
        for (const auto& item2 : *list) {
          auto s = string(item2);
          if (!s) return fail(s.error());
          auto pattern = policy::Pattern::parse(*s);
          if (!pattern) return fail(error(item2, pattern.error().message));
          r.run.push_back(std::move(*pattern));
        }
      } else if (e.key == "max_processes") {
        auto v = integer(e.value, kMaxProcesses, "0 = unlimited");
        if (!v) return fail(v.error());
        r.max_processes = *v;
      } else {
        auto v = boolean(e.value);
        if (!v) return fail(v.error());
        (e.key == "session.attach"   ? r.session_attach
         : e.key == "session.signal" ? r.session_signal
         : e.key == "session.exec"   ? r.session_exec
         : e.key == "session.cp"     ? r.session_cp
         : e.key == "image.events"   ? r.image_events
                                     : r.session_remove) = *v;
      }
    }
    if (r.uids.empty() && r.gids.empty())
      return fail(error(item, "a rule needs users or groups (who it applies to)"));
    rules->rules.push_back(std::move(r));
  }
  config.callers = std::move(rules);
  return {};
}

}  // namespace

const ExecutorConfig* Config::find(std::string_view name) const {
  for (const auto& e : executors)
    if (e.name == name) return &e;
  return nullptr;
}

Result<Config> parse_config(std::string_view yaml, const std::string& source) {
  Parser parser(source);
  try {
    const std::string text(yaml);
    if (auto s = check_documents(parser, text); !s) return fail(s.error());
    return parser.document(YAML::Load(text));
  } catch (const YAML::Exception& e) {
    // yaml-cpp may notice a missing ']' at the end of input, one line past
    // the last one: point at the last line instead.
    const int lines = static_cast<int>(std::count(yaml.begin(), yaml.end(), '\n')) +
                      (!yaml.empty() && yaml.back() != '\n' ? 1 : 0);
    int line = e.mark.is_null() ? 1 : std::clamp(e.mark.line + 1, 1, std::max(lines, 1));
    std::string what = e.msg;
    if (!e.mark.is_null()) what += " (column " + std::to_string(e.mark.column + 1) + ")";
    return fail(parser.error(line, "yaml", what));
  } catch (const std::exception& e) {
    return fail(internal(source + ": " + e.what()));
  }
}

Result<std::string> read_config_text(const std::string& path) {
  auto fd = open_fd(path, O_RDONLY);
  if (!fd) return fail(fd.error().wrap("load config"));
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return fail(sys_error("load config: stat " + path));
  if (!S_ISREG(st.st_mode)) return fail(invalid("load config: " + path + ": not a regular file"));
  if (static_cast<uint64_t>(st.st_size) > kMaxConfigBytes)
    return fail(invalid("load config: " + path + ": larger than " +
                        std::to_string(kMaxConfigBytes >> 20) + " MiB"));
  auto text = read_fd(fd->get());
  if (!text) return fail(text.error().wrap("load config: " + path));
  return text;
}

Result<Config> load_config(const std::string& path) {
  auto text = read_config_text(path);
  if (!text) return fail(text.error());
  return parse_config(*text, path);
}

std::string near_miss(std::string_view word, std::span<const std::string_view> known) {
  std::string best;
  size_t best_distance = 3;  // suggest only close matches
  for (auto k : known) {
    size_t d = edit_distance(lower(word), k);
    if (d < best_distance) {
      best_distance = d;
      best = std::string(k);
    }
  }
  return best;
}

}  // namespace cloister
