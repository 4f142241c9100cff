// OCI runtime bundles: a bundle directory's config.json (runtime-spec
// 1.0-1.2) lowered onto the one validated spec (isolate/spec.h) that the
// YAML config and the socket requests lower onto, through the same
// validators; this front end adds only where an error came from, as a JSON
// path ("process.args: must not be empty", "mounts[3].destination: ...").
//
// Stricter than runc where runc would weaken isolation, never silently:
//   - every container gets its own user namespace (payload root is never
//     host root): the config's uidMappings/gidMappings when it has a user
//     namespace, else the default range (the annotation
//     run.cloister.userns=host opts out, as `userns: host` does);
//   - its own pid, mount, ipc, uts and cgroup namespaces always (a config
//     that leaves one out to share the host's is an error naming it);
//     only the network namespace may be the host's (left out) or one given
//     by path;
//   - the default seccomp profile when the config has none; capabilities a
//     user namespace makes unusable are dropped, with a warning;
//   - /proc, /dev (with its own devpts and shm) and /tmp are cloister's,
//     with runc's masks; the config's proc, /dev, devpts, shm and mqueue
//     mounts map onto them, sysfs and cgroup mounts are not made (warned).
// Fields the host cannot honour (apparmor, selinux labels, intelRdt, ...) give a warning naming the
// field; ones that would change what runs (personality, sysctl, devices, hooks run inside the
// container) are errors. docs/oci-runtime.md lists every field.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isolate/error.h"
#include "isolate/spec.h"

namespace cloister::oci {

struct Hook {
  std::string path;
  std::vector<std::string> args;
  std::vector<std::string> env;
  int timeout_s = 0;  // 0 = none
};

struct Hooks {
  // Run by the runtime on the host, with the state JSON on stdin.
  std::vector<Hook> prestart, create_runtime, poststart, poststop;
};

struct Bundle {
  std::string dir;  // absolute
  std::string oci_version;
  SpawnSpec spec;
  Command command;
  bool terminal = false;
  uint16_t rows = 0, cols = 0;  // process.consoleSize
  std::optional<mode_t> umask;
  // process.oomScoreAdj: the runtime sets it on itself before the clone, so
  // that the container inherits it (lowering it needs CAP_SYS_RESOURCE in
  // the host's user namespace, which no init inside the container has).
  std::optional<int> oom_score_adj;
  std::string cgroups_path;  // "" = the runtime's default
  std::map<std::string, std::string> annotations;
  Hooks hooks;
  // The config's seccomp profile in the shape isolate/seccomp.h compiles
  // ("" = none given: the built-in default applies).
  std::string seccomp_json;
  std::vector<std::string> warnings;  // "linux.apparmor: ... not applied"
};

// Parses and lowers config.json text; `bundle_dir` (absolute) resolves
// root.path and relative mount sources. `id` is the container's (the
// hostname when the config has none).
Result<Bundle> parse_bundle(std::string_view config_json, const std::string& bundle_dir,
                            const std::string& id);
// Reads bundle_dir/config.json and parses it.
Result<Bundle> load_bundle(const std::string& bundle_dir, const std::string& id);

// `exec`: a runtime-spec process object (exec --process FILE) lowered as
// create lowers config.json's, against the container's own bundle (its
// user namespace, seccomp profile, hostname); only the process differs.
Result<Bundle> parse_exec_process(const Bundle& container, std::string_view process_json);

// The hooks of config.json text alone, lowered as parse_bundle lowers them
// (start and delete run poststart and poststop hooks and need nothing else).
Result<Hooks> parse_hooks(std::string_view config_json);

// A runtime-spec linux.resources object alone (`update --resources`),
// lowered as create lowers it.
Result<cgroups::Limits> lower_resources(std::string_view resources_json);

// The runtime-spec version this runtime implements, and `features` output.
inline constexpr const char* kOciVersion = "1.2.0";
std::string features_json();
// A default config.json (`spec`): busybox-style sh in ./rootfs.
std::string default_config_json();

}  // namespace cloister::oci
