// Signals by name or number: the one rule for every front end (the
// service's `signal` op, the CLI, the OCI runtime's `kill`).
#pragma once

#include <string_view>

#include "isolate/error.h"

namespace cloister::signals {

// "15", "TERM", "SIGTERM", "term", "RTMIN+3", "SIGRTMAX-1": a number from 1
// to NSIG - 1, or a name as kill(1) takes it, with or without SIG, in any
// case. INVALID naming the text otherwise.
Result<int> parse(std::string_view text);

}  // namespace cloister::signals
