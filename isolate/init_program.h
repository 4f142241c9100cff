// The programs the library execs from sealed memfds: cloister-init
// (isolate/init.cc), every sandbox's PID 1, and cloister-top-reader
// (runtime/top_reader.cc), which reads a session's command lines for `top`.
// Each is built with the library and compiled into it.
//
// Each sandbox's clone child execs the init's fd (execveat(fd, "",
// AT_EMPTY_PATH)) before anything of the sandbox exists, so the sandbox's
// PID 1 is a program of its own, not a copy of its caller's memory, and
// /proc/1/exe leads to this memfd: sealed against writes, growth, shrinking
// and further sealing (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW |
// F_SEAL_SEAL), it cannot be changed by anyone, and no host file is behind
// it (the CVE-2019-5736 class: a container that rewrote its runtime's
// binary through /proc/self/exe).
//
// Each memfd is made once per process, on first use, and kept (one
// close-on-exec fd) for every later exec: the copy costs about a tenth of a
// millisecond.
#pragma once

#include <cstddef>
#include <mutex>
#include <span>

#include "isolate/error.h"

// Places the bytes of the program at `path` (a string literal) in .rodata,
// between sym_start and sym_end; the build passes the path and rebuilds the
// file using this when the program changes.
#define CLOISTER_EMBED_PROGRAM(sym, path)                                                      \
  asm(".pushsection .rodata\n.balign 64\n.globl " #sym "_start\n.hidden " #sym "_start\n" #sym \
      "_start:\n.incbin \"" path "\"\n.globl " #sym "_end\n.hidden " #sym "_end\n" #sym        \
      "_end:\n.popsection\n");                                                                 \
  extern "C" const unsigned char sym##_start[];                                                \
  extern "C" const unsigned char sym##_end[];

namespace cloister::init_program {

// One embedded program and its memfd, once made.
struct Sealed {
  const char* name;
  std::span<const unsigned char> (*image)();
  std::mutex mu{};
  int fd = -1;
};

// The fd of the program's sealed memfd (owned by the library, never closed).
// A failure (out of fds, say) is not kept: the next call tries again.
Result<int> fd(Sealed& program);

// cloister-init's fd.
Result<int> fd();

// cloister-init's bytes as compiled into the library.
std::span<const unsigned char> image();

}  // namespace cloister::init_program
