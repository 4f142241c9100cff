// Configuration: YAML with the seeds' field names (Wippy's exec.native /
// exec.docker executors), lowered into validated ExecutorConfig values.
// Unknown fields and bad values are errors that name the file, the line and
// the field, e.g.
//   example.yaml:14: executors[1].memory_limit: expected a byte size, got "lots"
// The reference is docs/config.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "isolate/error.h"
#include "isolate/spec.h"
#include "policy/exec_policy.h"

namespace cloister {

enum class ExecutorKind { Host, Container };

// Every sandbox is bounded unless its executor lifts a bound explicitly
// (docs/security.md, "Bounded by default"): processes as podman's default,
// /dev/shm as Docker's; /tmp and a writable root are tmpfs of
// isolate/mounts.h's default size.
constexpr uint64_t kDefaultPidsLimit = 2048;

struct ExecutorConfig {
  std::string name;
  ExecutorKind kind = ExecutorKind::Host;
  std::string default_work_dir = "/";
  std::vector<std::pair<std::string, std::string>> default_env;  // in file order
  std::vector<std::string> command_whitelist;  // exact match on the command string
  NetworkMode network_mode = NetworkMode::None;
  uint64_t memory_limit = 0;                // bytes, 0 = unlimited
  uint64_t cpu_quota = 0;                   // microseconds per 100000, 0 = unlimited
  uint64_t pids_limit = kDefaultPidsLimit;  // 0 = unlimited (said explicitly)
  // pids_limit came from the config, not the default: an ordinary user's
  // sandbox then needs a delegated cgroup for it (the default becomes
  // RLIMIT_NPROC there).
  bool pids_limit_set = false;
  bool read_only_rootfs = true;
  bool no_new_privileges = true;
  // The payload's user namespace (docs/security.md, "User namespace"):
  // userns: host opts out; userns_range sets the host ids (default:
  // userns::default_map()).
  bool userns_host = false;
  std::optional<userns::Map> userns_range;
  // userns: sandbox: a range per sandbox, of userns_size ids (0: the
  // default, 65536), leased from userns_range as a pool (default:
  // userns::default_pool()).
  bool userns_sandbox = false;
  uint32_t userns_size = 0;
  std::vector<std::string> cap_add;   // validated names
  std::vector<std::string> cap_drop;  // validated names or ALL
  uint64_t capabilities = 0;          // resolved from cap_add/cap_drop
  std::vector<TmpfsMount> tmpfs;
  std::vector<BindMount> volumes;
  std::optional<std::string> user;  // as written: "uid[:gid]" or a name
  Identity identity;                // resolved from user (default 0:0)
  std::string hostname = "cloister";
  std::vector<std::string> host_paths;    // default: kDefaultHostPaths
  std::vector<std::string> masked_paths;  // default: kDefaultMaskedPaths
  std::vector<rlimits::Limit> rlimits;
  std::vector<sysctl::Setting> sysctls;          // isolate/sysctl.h
  std::string seccomp_profile;                   // "" = built-in default
  std::chrono::milliseconds default_timeout{0};  // 0 = none
  // shell, allowlist, allowed_dirs, executables_dir, max_processes,
  // output_limit and the config's callers rules (docs/policy.md).
  policy::ExecutorPolicy policy;
  // Container executors (kind: container / exec.docker), see docs/oci.md.
  std::string image;  // a reference, normalised (docker.io/library/alpine:latest)
  // In place of the image's Entrypoint (and then without its Cmd, as
  // docker's --entrypoint); [] runs the command as given.
  std::optional<std::vector<std::string>> entrypoint;
  bool auto_remove = true;  // accepted for seed compatibility: nothing outlives a process
  std::string state_dir;    // the image store; from the images section, "" = default
  // From the images section: an image missing from the store is pulled when
  // the executor is created (loopback registries are always insecure).
  std::vector<std::string> insecure_registries;
  std::string auth_file;  // "" = the default credential search
  std::vector<std::pair<std::string, std::vector<std::string>>> mirrors;  // registry -> hosts
};

inline const std::vector<std::string> kDefaultHostPaths = {
    "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc", "/opt"};
inline const std::vector<std::string> kDefaultMaskedPaths = {
    "/etc/shadow",  "/etc/gshadow",   "/etc/shadow-", "/etc/gshadow-",
    "/etc/sudoers", "/etc/sudoers.d", "/etc/ssh",     "/etc/ssl/private"};

// The `images:` section: where the image store lives (oci/store.h).
struct ImagesConfig {
  std::string state_dir;                         // "" = /var/lib/cloister
  std::vector<std::string> insecure_registries;  // host[:port] reachable over plain HTTP
  std::string auth_file;                         // "" = the default credential search
  // registry -> mirror hosts, tried in order before it: { docker.io: [mirror.lan:5000] }
  std::vector<std::pair<std::string, std::vector<std::string>>> mirrors;
};
// --- service: (cloisterd) ---------------------------------------------------
enum class ShutdownMode { Kill, Wait };

// The `service:` section: cloisterd's socket, buffers, retention and limits.
// Every field has a default, so the section may be absent.
struct ServiceConfig {
  std::string socket = "/run/cloister/cloister.sock";
  std::string socket_group;                   // "" = the socket keeps root's group
  uint32_t socket_gid = 0;                    // resolved from socket_group
  uint32_t socket_mode = 0660;                // octal in YAML ("0660")
  uint64_t buffer_size = 1 << 20;             // per output stream of a session
  std::string log_dir = "/var/log/cloister";  // log files of sessions live here
  std::chrono::milliseconds retention{std::chrono::minutes(10)};  // finished sessions
  std::chrono::milliseconds max_run_after_disconnect{0};          // 0 = no limit
  uint64_t max_sessions = 1024;                                   // running at once, all callers
  uint64_t max_sessions_per_executor = 0;                         // 0 = no limit of its own
  uint64_t max_sessions_per_caller = 0;  // per uid; 0 = no limit of its own
  uint64_t max_clients = 1024;           // connections at once
  uint64_t max_frame = 1 << 20;          // bytes of a frame's body
  std::chrono::milliseconds hello_timeout{std::chrono::seconds(10)};
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(60)};  // no frame at all
  ShutdownMode shutdown = ShutdownMode::Kill;  // SIGTERM: kill sessions, or wait
  std::chrono::milliseconds shutdown_grace{std::chrono::seconds(10)};
};
// --- end service ----------------------------------------------------------

struct Config {
  std::string path;
  std::vector<ExecutorConfig> executors;
  // The `callers:` section; null when absent (then only root may run). Every
  // executor's policy.callers points here.
  std::shared_ptr<const policy::CallerRules> callers;
  ImagesConfig images;
  ServiceConfig service;

  const ExecutorConfig* find(std::string_view name) const;
};

// Parses YAML text; `source` names it in errors (a file path).
Result<Config> parse_config(std::string_view yaml, const std::string& source);
Result<Config> load_config(const std::string& path);
// The one of `known` within two edits of `word` (case aside), for "did you
// mean" in every front end's errors; "" when none is that close.
std::string near_miss(std::string_view word, std::span<const std::string_view> known);
// The text load_config parses: a regular file of at most 4 MiB.
Result<std::string> read_config_text(const std::string& path);

}  // namespace cloister
