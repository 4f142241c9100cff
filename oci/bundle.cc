#include "oci/bundle.h"

#include <sys/stat.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "isolate/capabilities.h"
#include "isolate/devices.h"
#include "isolate/fd.h"
#include "isolate/mounts.h"
#include "isolate/namespaces.h"
#include "isolate/rlimits.h"
#include "isolate/seccomp.h"
#include "isolate/sysctl.h"
#include "isolate/userns.h"
#include "oci/container.h"
#include "runtime/config.h"

namespace cloister::oci {
namespace {

using json = nlohmann::json;

constexpr size_t kMaxBundleConfigBytes = 16u << 20;

// Errors carry the JSON path of the field: "process.args[0]: ...".
Error at(const std::string& path, const std::string& what) {
  return invalid("config.json: " + path + ": " + what);
}
Error wrap_at(const std::string& path, const Error& e) {
  Error out = e;
  out.message = "config.json: " + path + ": " + e.message;
  return out;
}

std::string type_name(const json& j) {
  return j.is_null()      ? "null"
         : j.is_boolean() ? "a boolean"
         : j.is_number()  ? "a number"
         : j.is_string()  ? "a string"
         : j.is_array()   ? "an array"
                          : "an object";
}

Result<std::string> str(const json& j, const std::string& path) {
  if (!j.is_string()) return fail(at(path, "expected a string, got " + type_name(j)));
  return j.get<std::string>();
}
Result<bool> boolean(const json& j, const std::string& path) {
  if (!j.is_boolean()) return fail(at(path, "expected a boolean, got " + type_name(j)));
  return j.get<bool>();
}
Result<uint64_t> u64(const json& j, const std::string& path, uint64_t max = UINT64_MAX) {
  if (!j.is_number_integer() ||
      (j.is_number_integer() && !j.is_number_unsigned() && j.get<int64_t>() < 0))
    return fail(at(path, "expected a non-negative integer, got " + j.dump()));
  uint64_t v = j.get<uint64_t>();
  if (v > max) return fail(at(path, std::to_string(v) + " is above " + std::to_string(max)));
  return v;
}
Result<int64_t> i64(const json& j, const std::string& path) {
  if (!j.is_number_integer()) return fail(at(path, "expected an integer, got " + j.dump()));
  return j.get<int64_t>();
}
Result<std::vector<std::string>> strings(const json& j, const std::string& path) {
  if (!j.is_array()) return fail(at(path, "expected an array of strings, got " + type_name(j)));
  std::vector<std::string> out;
  for (size_t i = 0; i < j.size(); ++i) {
    auto s = str(j[i], path + "[" + std::to_string(i) + "]");
    if (!s) return fail(s.error());
    out.push_back(std::move(*s));
  }
  return out;
}
const json* field(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}
Status object(const json& j, const std::string& path) {
  if (!j.is_object()) return fail(at(path, "expected an object, got " + type_name(j)));
  return {};
}

// Optional members of an object, read into `out` (left as it was when the
// member is absent or null); `parent` is the object's own path.
Status get(const json& obj, const char* key, const std::string& parent, std::string& out) {
  const json* v = field(obj, key);
  if (!v) return {};
  auto r = str(*v, parent + "." + key);
  if (!r) return fail(r.error());
  out = *r;
  return {};
}
Status get(const json& obj, const char* key, const std::string& parent, bool& out) {
  const json* v = field(obj, key);
  if (!v) return {};
  auto r = boolean(*v, parent + "." + key);
  if (!r) return fail(r.error());
  out = *r;
  return {};
}
template <class Int>
Status get(const json& obj, const char* key, const std::string& parent, Int& out,
           uint64_t max = std::numeric_limits<Int>::max()) {
  const json* v = field(obj, key);
  if (!v) return {};
  if constexpr (std::is_signed_v<Int>) {
    auto r = i64(*v, parent + "." + key);
    if (!r) return fail(r.error());
    if (*r < std::numeric_limits<Int>::min() || *r > static_cast<int64_t>(max))
      return fail(at(parent + "." + key, std::to_string(*r) + " is out of range"));
    out = static_cast<Int>(*r);
  } else {
    auto r = u64(*v, parent + "." + key, max);
    if (!r) return fail(r.error());
    out = static_cast<Int>(*r);
  }
  return {};
}
template <class T>
Status get(const json& obj, const char* key, const std::string& parent, std::optional<T>& out,
           uint64_t max = std::numeric_limits<T>::max()) {
  if (!field(obj, key)) return {};
  T v{};
  if (auto s = get(obj, key, parent, v, max); !s) return s;
  out = v;
  return {};
}

// runc cleans a path lexically (filepath.Clean) before it uses it; so do
// we, then the one path rule of the mount module applies.
std::string clean(const std::string& p) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i <= p.size()) {
    size_t j = p.find('/', i);
    if (j == std::string::npos) j = p.size();
    std::string c = p.substr(i, j - i);
    if (c == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!c.empty() && c != ".") {
      parts.push_back(c);
    }
    i = j + 1;
  }
  std::string out;
  for (const auto& c : parts) out += "/" + c;
  return out.empty() ? "/" : out;
}
Result<std::string> abs_path(const json& j, const std::string& path) {
  auto s = str(j, path);
  if (!s) return fail(s.error());
  if (s->empty() || (*s)[0] != '/') return fail(at(path, "'" + *s + "' is not an absolute path"));
  auto n = mounts::normalize_path(clean(*s));
  if (!n) return fail(wrap_at(path, n.error()));
  return *n;
}

struct Lowering {
  Bundle& b;
  const json& doc;
  std::vector<devices::Rule> device_rules;  // linux.resources.devices
  void warn(const std::string& path, const std::string& what) {
    b.warnings.push_back(path + ": " + what);
  }
  void not_applied(const std::string& path) {
    warn(path, "not applied on this host (cloister has no support for it)");
  }

  Status version();
  Status root();
  Status process();
  Status user(const json& u);
  Status capabilities(const json& caps);
  Status mounts();
  Status linux_section();
  Status namespaces(const json& l);
  Status resources(const json& r);
  Status seccomp(const json& s);
  Status hooks();
};

Status Lowering::version() {
  const json* v = field(doc, "ociVersion");
  if (!v) return fail(at("ociVersion", "missing"));
  auto s = str(*v, "ociVersion");
  if (!s) return fail(s.error());
  if (!(s->starts_with("1.0") || s->starts_with("1.1") || s->starts_with("1.2")))
    return fail(at("ociVersion", "'" + *s + "' is not a runtime-spec version 1.0 to 1.2"));
  b.oci_version = *s;
  return {};
}

Status Lowering::root() {
  const json* r = field(doc, "root");
  if (!r) return fail(at("root", "missing (cloister needs a root filesystem)"));
  if (auto s = object(*r, "root"); !s) return s;
  const json* p = field(*r, "path");
  if (!p) return fail(at("root.path", "missing"));
  auto path = str(*p, "root.path");
  if (!path) return fail(path.error());
  if (path->empty()) return fail(at("root.path", "must not be empty"));
  std::string full = clean((*path)[0] == '/' ? *path : b.dir + "/" + *path);
  struct stat st;
  if (::stat(full.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return fail(at("root.path", "'" + full + "' is not a directory"));
  // Where overlayfs is missing (a kernel without the module), the rootfs
  // itself is the root, as for cloister's images (oci/container.h).
  b.spec.image_root = overlay_available() ? ImageRoot{{full}, {}} : ImageRoot{{}, full};
  b.spec.read_only_rootfs = false;
  return get(*r, "readonly", "root", b.spec.read_only_rootfs);
}

Status Lowering::user(const json& u) {
  if (auto s = object(u, "process.user"); !s) return s;
  // (uid_t)-1 means "no change" to the kernel's set*id calls.
  constexpr uint64_t kMaxId = 4294967294u;
  if (auto s = get(u, "uid", "process.user", b.spec.user.uid, kMaxId); !s) return s;
  if (auto s = get(u, "gid", "process.user", b.spec.user.gid, kMaxId); !s) return s;
  if (auto s = get(u, "umask", "process.user", b.umask, 0777); !s) return s;
  if (const json* v = field(u, "additionalGids")) {
    if (!v->is_array()) return fail(at("process.user.additionalGids", "expected an array"));
    for (size_t i = 0; i < v->size(); ++i) {
      auto n = u64((*v)[i], "process.user.additionalGids[" + std::to_string(i) + "]", kMaxId);
      if (!n) return fail(n.error());
      b.spec.user.groups.push_back(static_cast<gid_t>(*n));
    }
  }
  if (field(u, "username"))
    return fail(at("process.user.username", "is for Windows containers only"));
  return {};
}

Status Lowering::capabilities(const json& caps) {
  if (auto s = object(caps, "process.capabilities"); !s) return s;
  static constexpr const char* kSets[] = {"bounding", "effective", "permitted", "inheritable",
                                          "ambient"};
  uint64_t sets[5] = {};
  bool given[5] = {};
  for (int k = 0; k < 5; ++k) {
    const json* v = field(caps, kSets[k]);
    if (!v) continue;
    given[k] = true;
    const std::string path = std::string("process.capabilities.") + kSets[k];
    auto names = strings(*v, path);
    if (!names) return fail(names.error());
    for (size_t i = 0; i < names->size(); ++i) {
      auto c = capabilities::from_name((*names)[i]);
      if (!c)
        return fail(
            at(path + "[" + std::to_string(i) + "]", "unknown capability '" + (*names)[i] + "'"));
      // Capabilities this kernel does not know cannot be held: as runc does.
      if (*c > capabilities::last_cap()) continue;
      sets[k] |= uint64_t{1} << *c;
    }
  }
  // cloister gives a process one set, as bounding, permitted, effective,
  // inheritable and ambient: what it holds after its execve. That is the
  // bounding set for root (an exec by uid 0 gains all of it, as under
  // runc), the ambient set for any other user (nothing else survives an
  // exec without file capabilities).
  const uint64_t bounding = given[0] ? sets[0] : (sets[1] | sets[2]);
  uint64_t keep = b.spec.user.uid == 0 ? bounding : sets[4] & bounding;
  if (b.spec.user.uid == 0 && given[2] && (sets[2] | sets[1]) != bounding)
    warn("process.capabilities",
         "root's capabilities after its exec are the bounding set; permitted and effective "
         "sets that differ from it are not kept apart");
  uint64_t inert = 0;
  if (b.spec.userns) {
    auto names_of = [](uint64_t set) {
      std::string names;
      for (int c = 0; c < 64; ++c)
        if (set & (uint64_t{1} << c)) names += (names.empty() ? "" : ", ") + capabilities::name(c);
      return names;
    };
    // Kept as the config has them where they hold over nothing (the kernel
    // checks them in the host's user namespace, or one owning a namespace
    // of the host's), as runc shows them; CAP_SYS_ADMIN and
    // CAP_CHECKPOINT_RESTORE would act in the container's own user
    // namespace (userns.h).
    inert = keep & userns::kInertCapabilities;
    if (inert)
      warn("process.capabilities",
           names_of(inert) +
               " hold over nothing in the container's user namespace (kept in its sets, "
               "without effect: docs/security.md, \"User namespace\")");
    if (uint64_t own = keep & userns::kOwnNamespaceCapabilities)
      warn("process.capabilities",
           names_of(own) +
               " would hold over nothing in the container's user namespace but what it "
               "makes of its own (namespaces, mounts, its /proc/PID/exe): dropped "
               "(docs/security.md, \"User namespace\")");
    keep &= userns::kUsableCapabilities;
  }
  b.spec.capabilities = keep;
  b.spec.inert_capabilities = inert;
  return {};
}

Status Lowering::process() {
  const json* p = field(doc, "process");
  if (!p) return fail(at("process", "missing (create needs a process to run)"));
  if (auto s = object(*p, "process"); !s) return s;
  const json* args = field(*p, "args");
  if (!args) return fail(at("process.args", "missing"));
  auto argv = strings(*args, "process.args");
  if (!argv) return fail(argv.error());
  if (argv->empty() || (*argv)[0].empty()) return fail(at("process.args", "must not be empty"));
  if (field(*p, "commandLine")) return fail(at("process.commandLine", "is for Windows only"));
  b.command.argv = std::move(*argv);
  if (const json* env = field(*p, "env")) {
    auto e = strings(*env, "process.env");
    if (!e) return fail(e.error());
    for (size_t i = 0; i < e->size(); ++i)
      if ((*e)[i].find('=') == std::string::npos || (*e)[i][0] == '=')
        return fail(
            at("process.env[" + std::to_string(i) + "]", "'" + (*e)[i] + "' is not KEY=VALUE"));
    b.command.env = std::move(*e);
  }
  const json* cwd = field(*p, "cwd");
  if (!cwd) return fail(at("process.cwd", "missing"));
  auto wd = abs_path(*cwd, "process.cwd");
  if (!wd) return fail(wd.error());
  b.command.work_dir = *wd;
  if (auto s = get(*p, "terminal", "process", b.terminal); !s) return s;
  if (const json* cs = field(*p, "consoleSize")) {
    if (auto s = object(*cs, "process.consoleSize"); !s) return s;
    for (const char* k : {"height", "width"}) {
      const json* v = field(*cs, k);
      if (!v) return fail(at(std::string("process.consoleSize.") + k, "missing"));
      auto n = u64(*v, std::string("process.consoleSize.") + k, 65535);
      if (!n) return fail(n.error());
      (std::string_view(k) == "height" ? b.rows : b.cols) = static_cast<uint16_t>(*n);
    }
  }
  if (const json* u = field(*p, "user"))
    if (auto s = user(*u); !s) return s;
  b.spec.no_new_privileges = false;  // the spec's default
  if (auto s = get(*p, "noNewPrivileges", "process", b.spec.no_new_privileges); !s) return s;
  if (const json* caps = field(*p, "capabilities")) {
    if (auto s = capabilities(*caps); !s) return s;
  } else {
    b.spec.capabilities = 0;
  }
  if (const json* rl = field(*p, "rlimits")) {
    if (!rl->is_array()) return fail(at("process.rlimits", "expected an array"));
    for (size_t i = 0; i < rl->size(); ++i) {
      const std::string path = "process.rlimits[" + std::to_string(i) + "]";
      const json& r = (*rl)[i];
      if (auto s = object(r, path); !s) return s;
      const json* type = field(r, "type");
      if (!type) return fail(at(path + ".type", "missing"));
      auto t = str(*type, path + ".type");
      if (!t) return fail(t.error());
      auto res = rlimits::from_name(*t);
      if (!res) return fail(at(path + ".type", "unknown rlimit '" + *t + "'"));
      const json* soft = field(r, "soft");
      const json* hard = field(r, "hard");
      if (!soft || !hard) return fail(at(path, "needs both soft and hard"));
      auto sv = u64(*soft, path + ".soft");
      if (!sv) return fail(sv.error());
      auto hv = u64(*hard, path + ".hard");
      if (!hv) return fail(hv.error());
      auto lim = rlimits::make(*res, *sv, *hv);
      if (!lim) return fail(wrap_at(path, lim.error()));
      b.spec.rlimits.push_back(*lim);
    }
  }
  if (auto s = get(*p, "oomScoreAdj", "process", b.oom_score_adj); !s) return s;
  if (b.oom_score_adj && (*b.oom_score_adj < -1000 || *b.oom_score_adj > 1000))
    return fail(at("process.oomScoreAdj",
                   std::to_string(*b.oom_score_adj) + " is out of range (-1000 to 1000)"));
  for (const char* k :
       {"apparmorProfile", "selinuxLabel", "ioPriority", "scheduler", "execCPUAffinity"})
    if (field(*p, k)) not_applied(std::string("process.") + k);
  return {};
}

// Mount options of a bind: ro/rw and propagation; the rest are cloister's
// own choice for every bind (nosuid, nodev, recursive) or not applied.
Status Lowering::mounts() {
  const json* ms = field(doc, "mounts");
  if (!ms) return {};
  if (!ms->is_array()) return fail(at("mounts", "expected an array"));
  for (size_t i = 0; i < ms->size(); ++i) {
    const std::string path = "mounts[" + std::to_string(i) + "]";
    const json& m = (*ms)[i];
    if (auto s = object(m, path); !s) return s;
    const json* d = field(m, "destination");
    if (!d) return fail(at(path + ".destination", "missing"));
    auto dest = abs_path(*d, path + ".destination");
    if (!dest) return fail(dest.error());
    std::string type;
    if (const json* t = field(m, "type")) {
      auto s = str(*t, path + ".type");
      if (!s) return fail(s.error());
      type = *s;
    }
    std::vector<std::string> options;
    if (const json* o = field(m, "options")) {
      auto s = strings(*o, path + ".options");
      if (!s) return fail(s.error());
      options = std::move(*s);
    }
    std::string source;
    if (const json* s = field(m, "source")) {
      auto v = str(*s, path + ".source");
      if (!v) return fail(v.error());
      source = *v;
    }
    if (field(m, "uidMappings") || field(m, "gidMappings"))
      return fail(at(path, "idmapped mounts of the config are not supported"));
    const bool bind = type == "bind" || std::any_of(options.begin(), options.end(), [](auto& o) {
                        return o == "bind" || o == "rbind";
                      });
    // What cloister makes itself, at the places runc's default config names.
    if (bind && *dest == "/dev/shm") {
      // podman's shared shm of a pod: each container gets its own here.
      warn(path, "/dev/shm is the container's own tmpfs (not shared with other containers)");
      continue;
    }
    if (!bind) {
      if (type == "proc" && *dest == "/proc") continue;
      if (type == "tmpfs" && *dest == "/dev") continue;
      if (type == "devpts" && *dest == "/dev/pts") continue;
      if (type == "tmpfs" && *dest == "/dev/shm") continue;
      if (type == "mqueue" && *dest == "/dev/mqueue") {
        b.spec.mqueue = true;
        continue;
      }
      // Read-only whatever the options say, with Docker's masks (isolate/spec.h).
      if (type == "sysfs" && *dest == "/sys") {
        b.spec.sysfs = true;
        continue;
      }
      if (type == "sysfs" || type == "mqueue" || type == "cgroup" || type == "cgroup2") {
        warn(path, type + " at " + *dest +
                       " is not mounted (cloister mounts mqueue at /dev/mqueue and sysfs at /sys "
                       "only, and no cgroup filesystem)");
        continue;
      }
      if (type != "tmpfs")
        return fail(at(path + ".type", "'" + type + "' at " + *dest +
                                           " is not supported (bind, rbind and tmpfs are, and "
                                           "proc, devpts, mqueue, sysfs at their usual places)"));
      std::string opts;
      for (const auto& o : options) {
        // Propagation and atime flags are cloister's own choice for every mount.
        if (o == "private" || o == "rprivate" || o == "slave" || o == "rslave" ||
            o == "strictatime" || o == "relatime" || o == "noatime" || o == "tmpcopyup")
          continue;
        opts += (opts.empty() ? "" : ",") + o;
      }
      if (auto p = mounts::parse_tmpfs_options(opts); !p)
        return fail(wrap_at(path + ".options", p.error()));
      b.spec.tmpfs.push_back({*dest, opts});
      continue;
    }
    if (source.empty()) return fail(at(path + ".source", "missing for a bind mount"));
    BindMount v;
    v.source = clean(source[0] == '/' ? source : b.dir + "/" + source);
    v.target = *dest;
    v.read_only = false;
    for (const auto& o : options) {
      if (o == "ro") {
        v.read_only = true;
      } else if (o == "rw") {
        v.read_only = false;
      } else if (o == "noexec") {
        v.no_exec = true;
      } else if (o == "exec") {
        v.no_exec = false;
      } else if (o == "shared" || o == "rshared") {
        return fail(at(path + ".options", "'" + o +
                                              "' propagation is not supported: a container's "
                                              "mounts never propagate to the host"));
      } else if (o == "bind" || o == "rbind" || o == "private" || o == "rprivate" || o == "slave" ||
                 o == "rslave" || o == "nosuid" || o == "nodev" || o == "suid" || o == "dev" ||
                 o == "relatime" || o == "noatime" || o == "strictatime" || o == "z" || o == "Z") {
        // nosuid and nodev hold for every bind; the rest change nothing seen.
        if (o == "suid" || o == "dev")
          warn(path + ".options", "'" + o + "' is not applied: binds are always nosuid,nodev");
      } else if (o == "idmap" || o == "ridmap") {
        v.idmap = true;
      } else {
        warn(path + ".options", "'" + o + "' is not applied");
      }
    }
    b.spec.volumes.push_back(std::move(v));
  }
  return {};
}

Status Lowering::namespaces(const json& l) {
  const json* ns = field(l, "namespaces");
  bool seen_net = false, seen_user = false;
  std::vector<std::string> have;
  if (ns) {
    if (!ns->is_array()) return fail(at("linux.namespaces", "expected an array"));
    for (size_t i = 0; i < ns->size(); ++i) {
      const std::string path = "linux.namespaces[" + std::to_string(i) + "]";
      const json& n = (*ns)[i];
      if (auto s = object(n, path); !s) return s;
      const json* t = field(n, "type");
      if (!t) return fail(at(path + ".type", "missing"));
      auto type = str(*t, path + ".type");
      if (!type) return fail(type.error());
      static constexpr std::string_view kKnown[] = {"pid", "network", "mount",  "ipc",
                                                    "uts", "user",    "cgroup", "time"};
      if (std::find(std::begin(kKnown), std::end(kKnown), *type) == std::end(kKnown))
        return fail(at(path + ".type", "unknown namespace type '" + *type + "'"));
      if (std::find(have.begin(), have.end(), *type) != have.end())
        return fail(at(path + ".type", "namespace '" + *type + "' given twice"));
      have.push_back(*type);
      std::string nspath;
      if (const json* p = field(n, "path")) {
        auto v = abs_path(*p, path + ".path");
        if (!v) return fail(v.error());
        nspath = *v;
      }
      if (*type == "time") return fail(at(path, "time namespaces are not supported"));
      if (*type == "network") {
        seen_net = true;
        b.spec.network = NetworkMode::None;
        b.spec.netns_path = nspath;
      } else if (*type == "user") {
        seen_user = true;
        if (!nspath.empty())
          return fail(at(path + ".path", "joining a user namespace is not supported"));
      } else if (!nspath.empty() && (*type == "ipc" || *type == "uts")) {
        // A pod's, as containerd's CRI gives its containers (the host's is
        // refused at create, as leaving the namespace out is here).
        (*type == "ipc" ? b.spec.ipc_ns_path : b.spec.uts_ns_path) = nspath;
      } else if (!nspath.empty()) {
        return fail(at(path + ".path", "joining a " + *type +
                                           " namespace is not supported: cloister makes a new "
                                           "one for every container (only network, ipc and uts "
                                           "namespaces may be joined)"));
      }
    }
  }
  for (const char* k : {"pid", "mount", "ipc", "uts"})
    if (std::find(have.begin(), have.end(), k) == have.end())
      return fail(at("linux.namespaces",
                     std::string("no '") + k +
                         "' namespace: sharing the host's is not supported, a container always "
                         "gets its own"));
  if (!seen_net) b.spec.network = NetworkMode::Host;
  // The user namespace: the config's maps, else the default range.
  auto host_opt = b.annotations.find("run.cloister.userns");
  if (host_opt != b.annotations.end() && host_opt->second != "host" && host_opt->second != "auto")
    return fail(at("annotations[\"run.cloister.userns\"]",
                   "'" + host_opt->second + "' is neither host nor auto"));
  const bool host = host_opt != b.annotations.end() && host_opt->second == "host";
  if (seen_user && host)
    return fail(at("annotations[\"run.cloister.userns\"]",
                   "host contradicts the user namespace of linux.namespaces"));
  if (host) {
    b.spec.userns.reset();
    return {};
  }
  if (seen_user && (field(l, "uidMappings") || field(l, "gidMappings"))) {
    userns::Map m;
    for (const char* k : {"uidMappings", "gidMappings"}) {
      const std::string path = std::string("linux.") + k;
      const json* v = field(l, k);
      if (!v || !v->is_array() || v->size() != 1)
        return fail(at(path, "cloister takes exactly one mapping (containerID 0, hostID, size)"));
      const json& e = (*v)[0];
      if (auto s = object(e, path + "[0]"); !s) return s;
      uint64_t vals[3];
      const char* names[3] = {"containerID", "hostID", "size"};
      for (int j = 0; j < 3; ++j) {
        const json* f = field(e, names[j]);
        if (!f) return fail(at(path + "[0]." + names[j], "missing"));
        auto n = u64(*f, path + "[0]." + names[j], 4294967295u);
        if (!n) return fail(n.error());
        vals[j] = *n;
      }
      if (vals[0] != 0) return fail(at(path + "[0].containerID", "must be 0"));
      if (std::string_view(k) == "uidMappings") {
        m.uid_base = static_cast<uint32_t>(vals[1]);
        m.size = static_cast<uint32_t>(vals[2]);
      } else {
        m.gid_base = static_cast<uint32_t>(vals[1]);
        if (vals[2] != m.size) return fail(at(path + "[0].size", "must equal the uid map's size"));
      }
    }
    if (auto s = userns::check(m); !s) return fail(wrap_at("linux.uidMappings", s.error()));
    b.spec.userns = m;
  } else {
    auto m = userns::default_map();
    if (!m) return fail(m.error());
    b.spec.userns = *m;
  }
  return {};
}

Status Lowering::resources(const json& r) {
  if (auto s = object(r, "linux.resources"); !s) return s;
  cgroups::Limits& lim = b.spec.limits;
  if (const json* m = field(r, "memory")) {
    if (auto s = object(*m, "linux.resources.memory"); !s) return s;
    const std::string path = "linux.resources.memory";
    int64_t limit = 0, swap = 0;
    if (auto s = get(*m, "limit", path, limit); !s) return s;
    if (limit > 0)
      lim.memory_max = static_cast<uint64_t>(limit);
    else if (limit != -1 && limit != 0)
      return fail(at(path + ".limit", "must be positive, or -1 for none"));
    if (auto s = get(*m, "swap", path, swap); !s) return s;
    if (swap > 0 && static_cast<uint64_t>(swap) != lim.memory_max)
      warn(path + ".swap", "no swap is allowed beyond the memory limit");
    for (const char* k : {"reservation", "kernel", "kernelTCP", "swappiness"})
      if (field(*m, k)) not_applied(std::string("linux.resources.memory.") + k);
    if (const json* v = field(*m, "disableOOMKiller"); v && v->is_boolean() && v->get<bool>())
      return fail(at("linux.resources.memory.disableOOMKiller",
                     "not supported: a container over its limit is OOM-killed"));
  }
  if (const json* c = field(r, "cpu")) {
    if (auto s = object(*c, "linux.resources.cpu"); !s) return s;
    const std::string path = "linux.resources.cpu";
    int64_t quota = 0;
    uint64_t period = 0, shares = 0;
    if (auto s = get(*c, "quota", path, quota); !s) return s;
    if (quota > 0) lim.cpu_quota = static_cast<uint64_t>(quota);
    if (auto s = get(*c, "period", path, period); !s) return s;
    if (period) lim.cpu_period = period;
    if (auto s = get(*c, "shares", path, shares, 262144); !s) return s;
    // As given on v1; the cgroup module converts them for v2 as runc does.
    if (shares >= 2) lim.cpu_shares = shares;
    if (auto s = get(*c, "cpus", path, lim.cpuset_cpus); !s) return s;
    if (auto s = get(*c, "mems", path, lim.cpuset_mems); !s) return s;
    for (const char* k : {"realtimeRuntime", "realtimePeriod", "idle", "burst"})
      if (field(*c, k)) not_applied(std::string("linux.resources.cpu.") + k);
  }
  if (const json* p = field(r, "pids")) {
    if (auto s = object(*p, "linux.resources.pids"); !s) return s;
    int64_t limit = 0;
    if (auto s = get(*p, "limit", "linux.resources.pids", limit); !s) return s;
    if (limit > 0) lim.pids_max = static_cast<uint64_t>(limit);
  }
  if (const json* d = field(r, "devices")) {
    if (!d->is_array()) return fail(at("linux.resources.devices", "expected an array"));
    std::vector<devices::Rule> rules;
    for (size_t i = 0; i < d->size(); ++i) {
      const std::string path = "linux.resources.devices[" + std::to_string(i) + "]";
      const json& e = (*d)[i];
      if (auto s = object(e, path); !s) return s;
      devices::Rule rule;
      std::string type = "a";
      if (!field(e, "allow")) return fail(at(path + ".allow", "is required"));
      if (auto s = get(e, "allow", path, rule.allow); !s) return s;
      if (auto s = get(e, "type", path, type); !s) return s;
      if (auto s = get(e, "major", path, rule.major); !s) return s;
      if (auto s = get(e, "minor", path, rule.minor); !s) return s;
      if (auto s = get(e, "access", path, rule.access); !s) return s;
      if (type.size() != 1) return fail(at(path + ".type", "'" + type + "' is not a, c or b"));
      rule.type = type[0];
      if (auto s = devices::check(rule); !s) return fail(wrap_at(path, s.error()));
      rules.push_back(std::move(rule));
    }
    device_rules = std::move(rules);
  }
  for (const char* k : {"blockIO", "hugepageLimits", "network", "rdma", "unified"})
    if (field(r, k)) not_applied(std::string("linux.resources.") + k);
  return {};
}

// The runtime-spec's seccomp object is Docker's profile shape but for
// flags and the notify listener.
Status Lowering::seccomp(const json& s) {
  if (auto st = object(s, "linux.seccomp"); !st) return st;
  json profile = s;
  if (profile.contains("listenerPath") || profile.contains("listenerMetadata"))
    return fail(at("linux.seccomp.listenerPath", "seccomp notify listeners are not supported"));
  if (const json* f = field(s, "flags"); f && f->is_array() && !f->empty())
    warn("linux.seccomp.flags", "not applied (the filter is installed without flags)");
  profile.erase("flags");
  // Only the native ABI runs in any cloister sandbox (a call of another is
  // killed, isolate/seccomp.h): runc's and Docker's profiles name x86 and
  // x32 too, which adds nothing here.
  if (const json* archs = field(s, "architectures"); archs && archs->is_array()) {
    json native = json::array();
    for (const auto& a : *archs)
      if (a == "SCMP_ARCH_X86_64") native.push_back(a);
    if (native.size() != archs->size())
      warn("linux.seccomp.architectures",
           "only SCMP_ARCH_X86_64 is allowed; calls of other ABIs are killed");
    profile["architectures"] = native;
  }
  // libseccomp keeps the first unconditional rule of a syscall (runc's
  // profiles rely on it: podman's allows setns, then denies it without
  // CAP_SYS_ADMIN); isolate/seccomp.h refuses a second one, so the later
  // rule's name goes, as libseccomp would ignore it.
  if (profile.contains("syscalls") && profile["syscalls"].is_array()) {
    std::set<std::string> unconditional;
    json kept = json::array();
    bool dropped = false;
    for (json rule : profile["syscalls"]) {
      if (!rule.is_object() || !rule.contains("names") || !rule["names"].is_array()) {
        kept.push_back(rule);
        continue;
      }
      const bool has_args =
          rule.contains("args") && rule["args"].is_array() && !rule["args"].empty();
      json names = json::array();
      for (const auto& n : rule["names"]) {
        if (n.is_string() && unconditional.count(n.get<std::string>())) {
          dropped = true;
          continue;
        }
        names.push_back(n);
      }
      if (!has_args)
        for (const auto& n : names)
          if (n.is_string()) unconditional.insert(n.get<std::string>());
      if (names.empty()) continue;
      rule["names"] = names;
      kept.push_back(rule);
    }
    if (dropped)
      warn("linux.seccomp.syscalls",
           "a syscall named again after an unconditional rule keeps the first rule's action, "
           "as libseccomp does");
    profile["syscalls"] = kept;
  }
  b.seccomp_json = profile.dump();
  // Compiled now, so that an error names the config's field.
  if (auto c = seccomp::compile(b.seccomp_json); !c)
    return fail(wrap_at("linux.seccomp", c.error()));
  return {};
}

Status Lowering::linux_section() {
  const json* l = field(doc, "linux");
  static const json empty = json::object();
  if (!l) l = &empty;
  if (auto s = object(*l, "linux"); !s) return s;
  if (auto s = namespaces(*l); !s) return s;
  if (const json* r = field(*l, "resources"))
    if (auto s = resources(*r); !s) return s;
  if (const json* c = field(*l, "cgroupsPath")) {
    auto v = str(*c, "linux.cgroupsPath");
    if (!v) return fail(v.error());
    if (v->find(':') != std::string::npos)
      return fail(at("linux.cgroupsPath", "'" + *v +
                                              "' is a systemd slice:prefix:name path; cloister "
                                              "manages cgroupfs paths only"));
    // A path below each hierarchy's root, with one path rule.
    std::string rel = *v;
    while (!rel.empty() && rel.front() == '/') rel.erase(0, 1);
    auto n = mounts::normalize_path("/" + rel);
    if (rel.empty() || !n || *n != "/" + rel)
      return fail(
          at("linux.cgroupsPath", "'" + *v + "' is not a normalized path below the cgroup root"));
    b.cgroups_path = rel;
  }
  if (const json* s = field(*l, "seccomp"))
    if (auto st = seccomp(*s); !st) return st;
  if (const json* s = field(*l, "sysctl")) {
    if (auto st = object(*s, "linux.sysctl"); !st) return st;
    for (const auto& [k, v] : s->items()) {
      const std::string path = "linux.sysctl[\"" + k + "\"]";
      auto value = str(v, path);
      if (!value) return fail(value.error());
      sysctl::Setting set{k, *value};
      if (auto p = sysctl::path_of(set, b.spec.network != NetworkMode::Host); !p)
        return fail(wrap_at(path, p.error()));
      b.spec.sysctls.push_back(std::move(set));
    }
  }
  if (const json* d = field(*l, "devices")) {
    if (!d->is_array()) return fail(at("linux.devices", "expected an array"));
    for (size_t i = 0; i < d->size(); ++i) {
      const std::string path = "linux.devices[" + std::to_string(i) + "]";
      const json& e = (*d)[i];
      if (auto s = object(e, path); !s) return s;
      devices::ExtraNode n;
      const json* p = field(e, "path");
      if (!p) return fail(at(path + ".path", "is required"));
      auto dest = abs_path(*p, path + ".path");
      if (!dest) return fail(dest.error());
      n.path = *dest;
      std::string type;
      if (auto s = get(e, "type", path, type); !s) return s;
      // "u": unbuffered, which Linux's character devices all are.
      if (type == "c" || type == "u")
        n.mode = S_IFCHR;
      else if (type == "b")
        n.mode = S_IFBLK;
      else if (type == "p")
        n.mode = S_IFIFO;
      else
        return fail(at(path + ".type", "'" + type + "' is not c, u, b or p"));
      if (n.mode != S_IFIFO)
        for (const char* k : {"major", "minor"})
          if (!field(e, k)) return fail(at(path + "." + k, "is required for type " + type));
      uint32_t perm = 0666;
      if (auto s = get(e, "major", path, n.major, 4095); !s) return s;
      if (auto s = get(e, "minor", path, n.minor, 1048575); !s) return s;
      if (auto s = get(e, "fileMode", path, perm, 0777); !s) return s;
      n.mode |= perm;
      if (auto s = get(e, "uid", path, n.uid); !s) return s;
      if (auto s = get(e, "gid", path, n.gid); !s) return s;
      if (auto s = devices::check(n); !s) return fail(wrap_at(path, s.error()));
      b.spec.device_nodes.push_back(std::move(n));
    }
  }
  // The rules given, then the devices of every container's /dev, as runc
  // appends its own (a config that denies /dev/null still has it), but to
  // a policy that allows every device already (they add nothing there).
  std::vector<devices::Rule> policy = device_rules;
  if (!devices::allows_by_default(device_rules))
    for (auto& r : devices::container_defaults(b.spec.device_nodes)) policy.push_back(std::move(r));
  if (auto s = devices::check(policy); !s)
    return fail(wrap_at("linux.resources.devices", s.error()));
  b.spec.limits.devices = std::move(policy);
  if (field(*l, "personality")) return fail(at("linux.personality", "not supported"));
  if (const json* rp = field(*l, "rootfsPropagation")) {
    auto v = str(*rp, "linux.rootfsPropagation");
    if (!v) return fail(v.error());
    if (*v == "shared" || *v == "rshared")
      return fail(at("linux.rootfsPropagation", "'" + *v +
                                                    "': a container's mounts never "
                                                    "propagate to the host"));
  }
  // cloister's own /proc list covers runc's; anything else is masked or made
  // read-only where it exists (isolate/mounts.h).
  for (const char* k : {"maskedPaths", "readonlyPaths"})
    if (const json* v = field(*l, k)) {
      const std::string path = std::string("linux.") + k;
      if (!v->is_array()) return fail(at(path, "expected an array of paths"));
      for (size_t i = 0; i < v->size(); ++i) {
        auto p = abs_path((*v)[i], path + "[" + std::to_string(i) + "]");
        if (!p) return fail(p.error());
        if (mounts::proc_protects(*p)) continue;
        (std::string_view(k) == "maskedPaths" ? b.spec.masked_paths : b.spec.read_only_paths)
            .push_back(*p);
      }
    }
  for (const char* k : {"mountLabel", "apparmor", "selinux", "intelRdt", "memoryPolicy",
                        "timeOffsets", "netDevices"})
    if (field(*l, k)) not_applied(std::string("linux.") + k);
  return {};
}

Status Lowering::hooks() {
  const json* h = field(doc, "hooks");
  if (!h) return {};
  if (auto s = object(*h, "hooks"); !s) return s;
  struct Kind {
    const char* name;
    std::vector<Hook>* out;
  };
  const Kind kinds[] = {
      {"prestart", &b.hooks.prestart},   {"createRuntime", &b.hooks.create_runtime},
      {"poststart", &b.hooks.poststart}, {"poststop", &b.hooks.poststop},
      {"createContainer", nullptr},      {"startContainer", nullptr}};
  for (const auto& k : kinds) {
    const json* list = field(*h, k.name);
    if (!list) continue;
    const std::string path = std::string("hooks.") + k.name;
    if (!list->is_array()) return fail(at(path, "expected an array"));
    if (!k.out && !list->empty())
      return fail(at(path, "hooks run inside the container are not supported"));
    for (size_t i = 0; i < list->size(); ++i) {
      const std::string hp = path + "[" + std::to_string(i) + "]";
      const json& e = (*list)[i];
      if (auto s = object(e, hp); !s) return s;
      Hook hook;
      const json* p = field(e, "path");
      if (!p) return fail(at(hp + ".path", "missing"));
      auto pp = abs_path(*p, hp + ".path");
      if (!pp) return fail(pp.error());
      hook.path = *pp;
      if (const json* a = field(e, "args")) {
        auto v = strings(*a, hp + ".args");
        if (!v) return fail(v.error());
        hook.args = std::move(*v);
      }
      if (hook.args.empty()) hook.args.push_back(hook.path);
      if (const json* a = field(e, "env")) {
        auto v = strings(*a, hp + ".env");
        if (!v) return fail(v.error());
        hook.env = std::move(*v);
      }
      if (auto s = get(e, "timeout", hp, hook.timeout_s, 86400); !s) return s;
      if (field(e, "timeout") && hook.timeout_s <= 0)
        return fail(at(hp + ".timeout", "must be positive"));
      k.out->push_back(std::move(hook));
    }
  }
  return {};
}

}  // namespace

Result<Bundle> parse_bundle(std::string_view text, const std::string& bundle_dir,
                            const std::string& id) {
  if (text.size() > kMaxBundleConfigBytes) return fail(invalid("config.json: larger than 16 MiB"));
  json doc = json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded()) return fail(invalid("config.json: not valid JSON"));
  if (!doc.is_object()) return fail(invalid("config.json: expected an object"));
  Bundle b;
  b.dir = bundle_dir;
  // Bounded by default, as every executor (docs/security.md).
  b.spec.limits.pids_max = kDefaultPidsLimit;
  Lowering lw{b, doc};
  if (const json* a = field(doc, "annotations")) {
    if (!a->is_object()) return fail(at("annotations", "expected an object"));
    for (const auto& [k, v] : a->items()) {
      if (!v.is_string()) return fail(at("annotations[\"" + k + "\"]", "expected a string"));
      b.annotations[k] = v.get<std::string>();
    }
  }
  if (auto s = lw.version(); !s) return fail(s.error());
  if (auto s = lw.root(); !s) return fail(s.error());
  if (auto s = lw.linux_section(); !s) return fail(s.error());  // the user namespace first
  if (auto s = lw.process(); !s) return fail(s.error());
  if (auto s = lw.mounts(); !s) return fail(s.error());
  if (auto s = lw.hooks(); !s) return fail(s.error());
  std::string hostname;
  if (const json* h = field(doc, "hostname")) {
    auto v = str(*h, "hostname");
    if (!v) return fail(v.error());
    hostname = *v;
  }
  if (!hostname.empty()) {
    if (auto s = namespaces::check_hostname(hostname); !s)
      return fail(wrap_at("hostname", s.error()));
    b.spec.hostname = hostname;
  } else if (!b.spec.uts_ns_path.empty()) {
    b.spec.hostname.clear();  // the joined namespace's own
  } else if (!field(doc, "hostname") && namespaces::check_hostname(id.substr(0, 63))) {
    b.spec.hostname = id.substr(0, 63);
  }
  if (field(doc, "domainname")) lw.not_applied("domainname");
  if (b.spec.userns)
    if (auto s = userns::check_ids(*b.spec.userns, b.spec.user.uid, b.spec.user.gid,
                                   b.spec.user.groups.data(), b.spec.user.groups.size());
        !s)
      return fail(wrap_at("process.user", s.error()));
  return b;
}

Result<Bundle> parse_exec_process(const Bundle& container, std::string_view text) {
  json p = json::parse(text.begin(), text.end(), nullptr, false);
  if (p.is_discarded()) return fail(invalid("process: not valid JSON"));
  json doc = json::object();
  doc["process"] = std::move(p);
  Bundle b = container;
  b.command = Command{};
  b.spec.user = Identity{};
  b.spec.rlimits.clear();
  b.terminal = false;
  b.rows = b.cols = 0;
  b.umask.reset();
  b.spec.sysctls.clear();  // the container's, set at its create
  b.warnings.clear();
  Lowering lw{b, doc};
  if (auto s = lw.process(); !s) return fail(s.error());
  if (b.spec.userns)
    if (auto s = userns::check_ids(*b.spec.userns, b.spec.user.uid, b.spec.user.gid,
                                   b.spec.user.groups.data(), b.spec.user.groups.size());
        !s)
      return fail(wrap_at("process.user", s.error()));
  return b;
}

Result<Hooks> parse_hooks(std::string_view text) {
  json doc = json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return fail(invalid("config.json: not valid JSON"));
  Bundle b;
  Lowering lw{b, doc};
  if (auto s = lw.hooks(); !s) return fail(s.error());
  return b.hooks;
}

Result<cgroups::Limits> lower_resources(std::string_view text) {
  json doc = json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded()) return fail(invalid("resources: not valid JSON"));
  Bundle b;
  Lowering lw{b, doc};
  if (auto s = lw.resources(doc); !s) return fail(s.error());
  return b.spec.limits;
}

Result<Bundle> load_bundle(const std::string& bundle_dir, const std::string& id) {
  auto text = read_file(bundle_dir + "/config.json");
  if (!text) return fail(text.error().wrap("bundle " + bundle_dir));
  return parse_bundle(*text, bundle_dir, id);
}

std::string features_json() {
  json f;
  f["ociVersionMin"] = "1.0.0";
  f["ociVersionMax"] = kOciVersion;
  f["hooks"] = {"prestart", "createRuntime", "poststart", "poststop"};
  f["mountOptions"] = {"bind",  "rbind",  "ro",     "rw",       "private", "rprivate",
                       "slave", "rslave", "nosuid", "nodev",    "noexec",  "size",
                       "mode",  "uid",    "gid",    "nr_inodes"};
  json linux_;
  linux_["namespaces"] = {"pid", "network", "mount", "ipc", "uts", "user", "cgroup"};
  json caps = json::array();
  for (int c = 0; c <= capabilities::last_cap(); ++c) caps.push_back(capabilities::name(c));
  linux_["capabilities"] = caps;
  linux_["cgroup"] = {{"v1", true}, {"v2", true}, {"systemd", false}, {"systemdUser", false}};
  linux_["seccomp"] = {
      {"enabled", true},
      {"actions",
       {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRAP", "SCMP_ACT_TRACE"}},
      {"operators",
       {"SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_GT", "SCMP_CMP_GE",
        "SCMP_CMP_MASKED_EQ"}},
      {"archs", {"SCMP_ARCH_X86_64"}}};
  linux_["apparmor"] = {{"enabled", false}};
  linux_["selinux"] = {{"enabled", false}};
  f["linux"] = linux_;
  f["annotations"] = {{"run.cloister.userns", "auto|host"}};
  return f.dump(2) + "\n";
}

std::string default_config_json() {
  json c;
  c["ociVersion"] = kOciVersion;
  c["process"] = {
      {"terminal", true},
      {"user", {{"uid", 0}, {"gid", 0}}},
      {"args", {"sh"}},
      {"env", {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"}},
      {"cwd", "/"},
      {"capabilities",
       {{"bounding",
         {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID"}},
        {"effective",
         {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID"}},
        {"permitted",
         {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID"}}}},
      {"rlimits", {{{"type", "RLIMIT_NOFILE"}, {"hard", 1024}, {"soft", 1024}}}},
      {"noNewPrivileges", true}};
  c["root"] = {{"path", "rootfs"}, {"readonly", true}};
  c["hostname"] = "cloister";
  c["mounts"] = {{{"destination", "/proc"}, {"type", "proc"}, {"source", "proc"}},
                 {{"destination", "/dev"},
                  {"type", "tmpfs"},
                  {"source", "tmpfs"},
                  {"options", {"nosuid", "strictatime", "mode=755", "size=65536k"}}},
                 {{"destination", "/dev/pts"},
                  {"type", "devpts"},
                  {"source", "devpts"},
                  {"options", {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}}}};
  c["linux"] = {{"namespaces",
                 {{{"type", "pid"}},
                  {{"type", "network"}},
                  {{"type", "ipc"}},
                  {{"type", "uts"}},
                  {{"type", "mount"}},
                  {{"type", "cgroup"}}}},
                {"maskedPaths", {"/proc/kcore", "/proc/keys", "/proc/timer_list"}},
                {"readonlyPaths", {"/proc/sys", "/proc/sysrq-trigger"}}};
  return c.dump(2) + "\n";
}

}  // namespace cloister::oci
