// Shared by the unit and integration tests: runs a function as nobody:nogroup
// in a forked child and brings back one result byte.
#pragma once

#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>

namespace cloister::testing {

// fn's result byte, or 'E' when the child could not become nobody or died.
// The raw set*id syscalls: only the calling thread exists in the child.
inline char as_nobody(const std::function<char()>& fn) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return 'E';
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    gid_t none[] = {65534};
    char r = 'E';
    // Already nobody (the unit tests run by nobody): nothing to change.
    if (::geteuid() == 65534 && ::getegid() == 65534)
      r = fn();
    else if (::syscall(SYS_setgroups, 1, none) == 0 &&
             ::syscall(SYS_setresgid, 65534, 65534, 65534) == 0 &&
             ::syscall(SYS_setresuid, 65534, 65534, 65534) == 0)
      r = fn();
    (void)!::write(p[1], &r, 1);
    ::_exit(0);
  }
  ::close(p[1]);
  char r = 'E';
  if (::read(p[0], &r, 1) != 1) r = 'E';
  ::close(p[0]);
  int st;
  ::waitpid(pid, &st, 0);
  return r;
}

}  // namespace cloister::testing
