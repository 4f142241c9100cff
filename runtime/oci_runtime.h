// The OCI runtime: runc's verbs over the library, for containerd's shim,
// conmon (podman) and the runtime-tools suite; tools/cloister-oci.cc is
// only their command line. docs/oci-runtime.md is the manual.
//
// A container's state lives in ROOT/ID/ (state.json, the start FIFO, the
// lowered seccomp profile), written by `create` and read by every later
// verb: no process of the runtime outlives a verb. After create, the
// container's init (cloister-init, isolate/init.cc) exists in all its
// namespaces, set up and waiting on the start FIFO; it is no child of any
// runtime process (whoever reaps orphans - the shim or conmon as
// subreapers - reaps it) and exits with the payload's status. `start`
// writes one byte to the FIFO. A pid is trusted only while its start time
// matches the one recorded (no pid reuse is taken for the container).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "isolate/cgroups.h"
#include "isolate/error.h"

namespace cloister::ociruntime {

struct Globals {
  std::string root = "/run/cloister-oci";
  // Warnings of the lowering go here (the log), one line each.
  std::function<void(const std::string&)> warn;
};

struct CreateOptions {
  std::string id;
  std::string bundle = ".";
  std::string pid_file;
  std::string console_socket;
  int preserve_fds = 0;
};

enum class Status { Created, Running, Paused, Stopped };
std::string_view status_name(Status s);

struct State {
  std::string oci_version;
  std::string id;
  std::string bundle;
  pid_t pid = 0;
  uint64_t start_time = 0;  // of pid, from /proc/PID/stat
  bool started = false;
  std::string cgroup;   // below the runtime's cgroup base
  std::string created;  // RFC 3339
  std::map<std::string, std::string> annotations;
  Status status = Status::Stopped;  // computed when read
  std::string state_json() const;   // runtime-spec state (`state`)
};

// The container IDs runc accepts: [A-Za-z0-9_+.-], 1..1024 bytes, and
// not "." or "..".
cloister::Status check_id(const std::string& id);

cloister::Status create(const Globals& g, const CreateOptions& o);
cloister::Status start(const Globals& g, const std::string& id);
Result<State> state(const Globals& g, const std::string& id);
cloister::Status kill(const Globals& g, const std::string& id, int sig, bool all);
cloister::Status remove(const Globals& g, const std::string& id, bool force);
Result<std::vector<pid_t>> pids(const Globals& g, const std::string& id);
cloister::Status pause(const Globals& g, const std::string& id, bool on);
Result<std::vector<State>> list(const Globals& g);
// Statistics as runc's `events --stats` prints them (one JSON object).
Result<std::string> stats_json(const Globals& g, const std::string& id);
cloister::Status update(const Globals& g, const std::string& id, const cgroups::Limits& limits);
struct ExecOptions {
  std::string process_json;  // a runtime-spec process object
  std::string console_socket;
  std::string pid_file;
  bool detach = false;
};
// A further process in a running container (its namespaces, cgroup, user
// namespace and seccomp profile; the process's own ids, capabilities and
// rlimits). Detached: returns 0 once it runs, and whoever reaps orphans
// reaps it; otherwise waits and returns its exit code.
Result<int> exec(const Globals& g, const std::string& id, const ExecOptions& o);
// The container's config.json process object, for exec's argv form.
Result<std::string> process_template(const Globals& g, const std::string& id);

// create, start, wait for the exit, delete: the payload's exit code.
Result<int> run(const Globals& g, const CreateOptions& o, bool detach);

}  // namespace cloister::ociruntime
