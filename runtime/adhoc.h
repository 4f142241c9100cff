// A sandbox described by command-line flags with podman's names and
// meanings (`-m 512m -v /src:/dst:ro --network none alpine sh`), lowered
// onto the one validated spec: each flag becomes the executor field it
// means, and the result goes through the YAML config's own validators
// (runtime/config.h), so that a flag and a config key can never disagree.
// An error names the flag and its value, not the field it became.
//
// The flags describe a new executor (of an image, or of the host's view) or
// override a configured one's fields: the flags given replace them, lists
// (volumes, tmpfs, capabilities, ulimits) are added to its own.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isolate/error.h"
#include "runtime/config.h"

namespace cloister {

struct AdhocFlags {
  std::string image;                       // a reference: a container executor
  bool host = false;                       // the host's view: a host executor
  std::optional<std::string> memory;       // -m, --memory
  std::optional<std::string> memory_swap;  // --memory-swap: only as -m (swap is held at the limit)
  std::optional<std::string> cpus;         // --cpus 1.5
  std::optional<std::string> cpu_quota;    // --cpu-quota (per 100000 us)
  std::optional<std::string> pids_limit;   // --pids-limit (-1: none)
  std::optional<std::string> network;      // --network none|host
  std::optional<std::string> hostname;     // --hostname
  std::optional<std::string> user;         // -u, --user
  std::vector<std::string> cap_add, cap_drop;  // --cap-add, --cap-drop (repeatable, or a,b)
  std::vector<std::string> volumes;            // -v, --volume SRC:DST[:OPTS]
  std::vector<std::string> tmpfs;              // --tmpfs DST[:OPTS]
  std::vector<std::string> ulimits;            // --ulimit NAME=SOFT[:HARD]
  std::vector<std::string> security_opts;      // --security-opt no-new-privileges[=BOOL]
  bool read_only = false;                      // --read-only
  std::optional<std::string> entrypoint;       // --entrypoint PROGRAM ("" for none)

  // Whether any flag above describes or overrides the sandbox.
  bool any() const;
};

// The executor the flags describe. With `base_name`, that executor of the
// config at `config_path`, its fields overridden; else a new one named "adhoc", of
// flags.image or flags.host, in that config (its images section, its
// callers) or, with no `config_path`, alone. Unlike a configured executor,
// a new one has a writable root unless --read-only (podman's default; its
// writes stay in the sandbox). Errors in the config itself come as
// load_config gives them.
// Where a command line's options end and its command begins, as docker
// reads `run [OPTIONS] IMAGE [COMMAND] [ARG...]`: at the first word that is
// not an option or an option's value, or after `--`. `takes_value` says
// whether an option ("-m", "--memory") is followed by its value; unknown
// options are taken as flags (the parser then names them). Options are
// args[0, options_end); the command and its image are args[command_begin..].
struct CommandLineSplit {
  size_t options_end = 0;
  size_t command_begin = 0;
};
CommandLineSplit split_command_line(const std::vector<std::string>& args,
                                    const std::function<bool(std::string_view)>& takes_value);

Result<ExecutorConfig> lower_adhoc(const AdhocFlags& flags, const std::string& config_path = "",
                                   const std::string& base_name = "");

}  // namespace cloister
