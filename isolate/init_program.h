// The init program: cloister-init (isolate/init.cc), built with the library
// and compiled into it, handed to the kernel as a sealed memfd.
//
// Each sandbox's clone child execs this fd (execveat(fd, "", AT_EMPTY_PATH))
// before anything of the sandbox exists, so the sandbox's PID 1 is a
// program of its own, not a copy of its caller's memory, and /proc/1/exe
// leads to this memfd: sealed against writes, growth, shrinking and further
// sealing (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), it
// cannot be changed by anyone, and no host file is behind it (the
// CVE-2019-5736 class: a container that rewrote its runtime's binary through
// /proc/self/exe).
//
// Made once per process, on first use, and kept (one close-on-exec fd) for
// every later sandbox: the copy costs about a tenth of a millisecond.
#pragma once

#include <cstddef>
#include <span>

#include "isolate/error.h"

namespace cloister::init_program {

// The fd of the sealed memfd (owned by the library, never closed).
Result<int> fd();

// The program's bytes as compiled into the library.
std::span<const unsigned char> image();

}  // namespace cloister::init_program
