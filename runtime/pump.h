// Pump: connects a started Process to plain fds, as a terminal program does:
// the payload's stdout and stderr are copied to out_fd and err_fd as they
// come, in_fd (when >= 0) is copied to its stdin until EOF, and the signals
// in `forward` that reach the caller are sent on to the payload. Returns the
// exit status once the payload has exited and both output streams are drained.
//
// The signals in `forward` are blocked in the calling thread while it runs
// (and taken through a signalfd), so call it from the thread that would
// otherwise receive them - the main thread of a CLI.
#pragma once

#include <vector>

#include "isolate/error.h"
#include "runtime/process.h"

namespace cloister {

Result<ExitStatus> pump(Process& process, int in_fd, int out_fd, int err_fd,
                        const std::vector<int>& forward);

// The exit code a shell would give for a failure to start: 127 when the
// command was not found, 126 when it could not be executed, 125 when
// cloister itself failed.
int exit_code_for(const Error& error);

}  // namespace cloister
