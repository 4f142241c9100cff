#include "runtime/adhoc.h"

#include <yaml-cpp/yaml.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <utility>

namespace cloister {

namespace {

// Which flag wrote which executor field: an error about the field is said
// about the flag.
struct Origins {
  std::map<std::string, std::string> by_field;  // "memory_limit" -> "-m/--memory 512x"
  void set(const std::string& field, const std::string& flag, const std::string& value) {
    by_field[field] = flag + " '" + shown(value) + "'";
  }
  // A value as an error shows it: control bytes escaped, long ones cut.
  static std::string shown(const std::string& v) {
    std::string out;
    for (unsigned char c : v.substr(0, 80)) {
      if (c < 0x20 || c == 0x7f) {
        char hex[5];
        std::snprintf(hex, sizeof hex, "\\x%02x", c);
        out += hex;
      } else {
        out += static_cast<char>(c);
      }
    }
    return v.size() > 80 ? out + "..." : out;
  }
  void add(const std::string& field, const std::string& flag) { by_field.emplace(field, flag); }
};

std::vector<std::string> split_commas(const std::vector<std::string>& in) {
  std::vector<std::string> out;
  for (const auto& s : in) {
    size_t start = 0;
    for (;;) {
      const size_t comma = s.find(',', start);
      out.push_back(s.substr(start, comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  return out;
}

// A list field with the flags' items after the executor's own.
void append(YAML::Node ex, const char* field, const std::vector<std::string>& items) {
  if (items.empty()) return;
  YAML::Node list = ex[field];
  if (!list || !list.IsSequence()) {
    YAML::Node fresh(YAML::NodeType::Sequence);
    if (list && !list.IsNull()) fresh.push_back(list);  // a bad value stays, to be refused
    list = fresh;
  }
  for (const auto& i : items) list.push_back(i);
  ex[field] = list;
}

Status lower_cpus(const std::string& v, YAML::Node ex) {
  double cpus = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), cpus);
  if (ec != std::errc() || end != v.data() + v.size() || !std::isfinite(cpus) || cpus <= 0 ||
      cpus > 1e6)
    return fail(invalid("--cpus '" + v + "': expected a number of CPUs above 0, such as 1.5"));
  // The kernel's least quota is 1000 us a period: less would round to 0,
  // which cpu_quota reads as no limit at all.
  const auto quota = static_cast<uint64_t>(std::llround(cpus * 100000));
  if (quota < 1000) return fail(invalid("--cpus '" + v + "': at least 0.01 (1% of a CPU)"));
  ex["cpu_quota"] = std::to_string(quota);
  return {};
}

// --ulimit nofile=1024[:2048] (docker's; -1 is unlimited).
Status lower_ulimit(const std::string& v, YAML::Node rlimits, std::set<std::string>& given) {
  const size_t eq = v.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == v.size())
    return fail(
        invalid("--ulimit '" + v + "': expected NAME=SOFT[:HARD], such as nofile=1024:2048"));
  auto value = [](std::string s) { return s == "-1" ? std::string("unlimited") : s; };
  const std::string name = v.substr(0, eq), rest = v.substr(eq + 1);
  // One flag per resource; a flag replaces the executor's own entry.
  if (!given.insert(name).second)
    return fail(invalid("--ulimit '" + v + "': " + name + " is given twice"));
  const size_t colon = rest.find(':');
  if (colon == std::string::npos) {
    rlimits[name] = value(rest);
  } else {
    YAML::Node both;
    both["soft"] = value(rest.substr(0, colon));
    both["hard"] = value(rest.substr(colon + 1));
    rlimits[name] = both;
  }
  return {};
}

Status lower_security_opt(const std::string& v, YAML::Node ex, Origins& o) {
  // podman: no-new-privileges, no-new-privileges=true|false (docker also ':').
  for (const char* sep : {"", "=", ":"}) {
    const std::string key = std::string("no-new-privileges") + sep;
    if (v == "no-new-privileges" && *sep == '\0') {
      ex["no_new_privileges"] = "true";
      o.set("no_new_privileges", "--security-opt", v);
      return {};
    }
    if (*sep && v.starts_with(key)) {
      const std::string b = v.substr(key.size());
      if (b != "true" && b != "false")
        return fail(invalid("--security-opt '" + v + "': no-new-privileges takes true or false"));
      ex["no_new_privileges"] = b;
      o.set("no_new_privileges", "--security-opt", v);
      return {};
    }
  }
  if (v.starts_with("seccomp=")) {
    const std::string profile = v.substr(8);
    if (profile == "unconfined")
      return fail(invalid("--security-opt '" + v +
                          "': a sandbox always has a seccomp filter; give a profile file"));
    ex["seccomp_profile"] = profile;
    o.set("seccomp_profile", "--security-opt", v);
    return {};
  }
  return fail(invalid("--security-opt '" + v +
                      "': not supported here (no-new-privileges[=BOOL], seccomp=PROFILE)"));
}

// The flags onto one executor's YAML mapping.
Status lower_into(const AdhocFlags& f, YAML::Node ex, bool fresh, Origins& o) {
  auto scalar = [&](const std::optional<std::string>& v, const char* field, const char* flag) {
    if (!v) return;
    ex[field] = *v;
    o.set(field, flag, *v);
  };
  scalar(f.memory, "memory_limit", "-m/--memory");
  if (f.memory_swap) {
    // cgroups.h holds swap at the memory limit: docker's --memory-swap
    // equal to --memory says exactly that; anything else cannot be kept.
    if (!f.memory || *f.memory_swap != *f.memory)
      return fail(invalid("--memory-swap '" + *f.memory_swap +
                          "': a sandbox gets no swap beyond its memory limit; give the same "
                          "value as -m/--memory, or leave it out"));
  }
  if (f.cpus && f.cpu_quota) return fail(invalid("give --cpus or --cpu-quota, not both"));
  if (f.cpus) {
    if (auto s = lower_cpus(*f.cpus, ex); !s) return s;
    o.set("cpu_quota", "--cpus", *f.cpus);
  }
  scalar(f.cpu_quota, "cpu_quota", "--cpu-quota");
  if (f.pids_limit) {
    ex["pids_limit"] = *f.pids_limit == "-1" ? std::string("0") : *f.pids_limit;
    o.set("pids_limit", "--pids-limit", *f.pids_limit);
  }
  if (f.network == std::optional<std::string>("bridge"))
    return fail(invalid("--network 'bridge': not supported yet (none or host)"));
  scalar(f.network, "network_mode", "--network");
  scalar(f.hostname, "hostname", "--hostname");
  scalar(f.user, "user", "-u/--user");
  append(ex, "cap_add", split_commas(f.cap_add));
  if (!f.cap_add.empty()) o.add("cap_add", "--cap-add");
  append(ex, "cap_drop", split_commas(f.cap_drop));
  if (!f.cap_drop.empty()) o.add("cap_drop", "--cap-drop");
  append(ex, "volumes", f.volumes);
  if (!f.volumes.empty()) o.add("volumes", "-v/--volume");
  if (!f.tmpfs.empty()) {
    YAML::Node t = ex["tmpfs"];
    if (!t || t.IsNull()) t = YAML::Node(YAML::NodeType::Map);
    std::set<std::string> given;  // a flag replaces the executor's own options for its target
    for (const auto& v : f.tmpfs) {
      const size_t colon = v.find(':');
      const std::string target = v.substr(0, colon);
      if (!given.insert(target).second)
        return fail(invalid("--tmpfs '" + v + "': " + target + " is given twice"));
      t[target] = colon == std::string::npos ? std::string() : v.substr(colon + 1);
    }
    ex["tmpfs"] = t;
    o.add("tmpfs", "--tmpfs");
  }
  if (!f.ulimits.empty()) {
    YAML::Node r = ex["rlimits"];
    if (!r || r.IsNull()) r = YAML::Node(YAML::NodeType::Map);
    std::set<std::string> given;
    if (r.IsMap())
      for (const auto& v : f.ulimits)
        if (auto s = lower_ulimit(v, r, given); !s) return s;
    ex["rlimits"] = r;
    o.add("rlimits", "--ulimit");
  }
  for (const auto& v : f.security_opts)
    if (auto s = lower_security_opt(v, ex, o); !s) return s;
  if (f.entrypoint) {
    YAML::Node words(YAML::NodeType::Sequence);
    if (!f.entrypoint->empty()) words.push_back(*f.entrypoint);
    ex["entrypoint"] = words;
    o.set("entrypoint", "--entrypoint", *f.entrypoint);
  }
  if (f.read_only) {
    ex["read_only_rootfs"] = "true";
    o.add("read_only_rootfs", "--read-only");
  } else if (fresh) {
    ex["read_only_rootfs"] = "false";
  }
  return {};
}

// "c.yaml:3: executors[0].memory_limit: expected ..." about a field a flag
// set becomes "-m/--memory '512x': expected ...".
Error said_of_flags(const Error& e, const Origins& o, size_t index) {
  const std::string marker = ": executors[" + std::to_string(index) + "].";
  const size_t at = e.message.find(marker);
  if (at == std::string::npos) return e;
  const size_t field_at = at + marker.size();
  size_t end = e.message.find_first_of(".[:", field_at);
  if (end == std::string::npos) return e;
  const auto it = o.by_field.find(e.message.substr(field_at, end - field_at));
  if (it == o.by_field.end()) {
    // About the executor the flags changed, but not one field a flag set
    // (cap_add against --cap-drop): the field's name, without the line of
    // a document no one wrote.
    Error out = e;
    out.message = "with the command line's flags: " + e.message.substr(at + 2);
    return out;
  }
  const size_t what = e.message.find(": ", end);
  Error out = e;
  out.message = it->second + (what == std::string::npos ? "" : e.message.substr(what));
  return out;
}

}  // namespace

CommandLineSplit split_command_line(const std::vector<std::string>& args,
                                    const std::function<bool(std::string_view)>& takes_value) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") return {i, i + 1};
    if (a.size() < 2 || a[0] != '-') return {i, i};
    if (a[1] == '-') {
      if (a.find('=') == std::string::npos && takes_value(a)) ++i;
      continue;
    }
    // -it, -m512m, -e A=B: a cluster of short flags, the first that takes
    // a value taking the rest of the word, or the next word.
    for (size_t c = 1; c < a.size(); ++c)
      if (takes_value(std::string("-") + a[c])) {
        if (c + 1 == a.size()) ++i;
        break;
      }
  }
  return {args.size(), args.size()};
}

bool AdhocFlags::any() const {
  return !image.empty() || host || memory || memory_swap || cpus || cpu_quota || pids_limit ||
         network || hostname || user || !cap_add.empty() || !cap_drop.empty() || !volumes.empty() ||
         !tmpfs.empty() || !ulimits.empty() || !security_opts.empty() || read_only || entrypoint;
}

Result<ExecutorConfig> lower_adhoc(const AdhocFlags& f, const std::string& config_path,
                                   const std::string& base_name) {
  const bool fresh = base_name.empty();
  if (fresh && f.image.empty() == !f.host)
    return fail(invalid(f.host ? "give an image or --host, not both"
                               : "give an image, --host (the host's view) or -x EXECUTOR"));
  if (!fresh && (f.host || !f.image.empty()))
    return fail(invalid("-x " + base_name + " is the sandbox: an image or --host is a new one"));
  try {
    YAML::Node doc(YAML::NodeType::Map);
    if (!config_path.empty()) {
      auto text = read_config_text(config_path);
      if (!text) return fail(text.error());
      // The config's own errors as its loader says them, lines and all.
      if (auto c = parse_config(*text, config_path); !c) return fail(c.error());
      doc = YAML::Load(*text);
    }
    YAML::Node executors = doc["executors"];
    if (!executors || !executors.IsSequence()) executors = YAML::Node(YAML::NodeType::Sequence);
    size_t index = executors.size();
    std::string name = base_name;
    Origins origins;
    if (fresh) {
      name = "adhoc";
      for (size_t i = 0; i < executors.size(); ++i)
        if (executors[i]["name"].as<std::string>("") == name)
          return fail(
              invalid(config_path + " has an executor named 'adhoc' already: name it with -x"));
      YAML::Node ex(YAML::NodeType::Map);
      ex["name"] = name;
      ex["kind"] = f.host ? "host" : "container";
      if (!f.host) {
        ex["image"] = f.image;
        origins.set("image", "image", f.image);
      }
      executors.push_back(ex);
    } else {
      for (index = 0; index < executors.size(); ++index)
        if (executors[index]["name"].as<std::string>("") == name) break;
      if (index == executors.size())
        return fail(
            make_error(ErrorKind::NotFound, "no executor named '" + name + "' in " + config_path));
    }
    if (auto s = lower_into(f, executors[index], fresh, origins); !s) return fail(s.error());
    doc["executors"] = executors;
    YAML::Emitter out;
    out << doc;
    const std::string source =
        config_path.empty() ? "the command line" : config_path + " with the command line's flags";
    auto config = parse_config(out.c_str(), source);
    if (!config) return fail(said_of_flags(config.error(), origins, index));
    const ExecutorConfig* ec = config->find(name);
    if (!ec) return fail(internal("lowered executor '" + name + "' went missing"));
    return *ec;
  } catch (const YAML::Exception& e) {
    return fail(invalid((config_path.empty() ? std::string("flags") : config_path) + ": " + e.msg));
  }
}

}  // namespace cloister
