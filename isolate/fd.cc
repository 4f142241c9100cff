#include "isolate/fd.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

namespace cloister {

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Result<Pipe> make_pipe(int extra_flags) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC | extra_flags) != 0) return fail(sys_error("pipe2"));
  return Pipe{Fd(p[0]), Fd(p[1])};
}

Result<Fd> open_fd(const std::string& path, int flags, int mode) {
  return open_at(AT_FDCWD, path, flags, mode);
}

Result<Fd> open_at(int dirfd, const std::string& path, int flags, int mode) {
  int fd = ::openat(dirfd, path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return fail(sys_error("open " + path));
  return Fd(fd);
}

Result<std::string> read_fd(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(sys_error("read"));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

Result<std::string> read_file(const std::string& path) {
  auto fd = open_fd(path, O_RDONLY);
  if (!fd) return fail(fd.error());
  return with_context(read_fd(fd->get()), path);
}

Status write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(sys_error("write"));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

ssize_t write_nosigpipe(int fd, const void* data, size_t len) {
  sigset_t pipe_set, old;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  ::pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  ssize_t n;
  do n = ::write(fd, data, len);
  while (n < 0 && errno == EINTR);
  int saved = errno;
  if (n < 0 && saved == EPIPE && !sigismember(&old, SIGPIPE)) {
    // Consume the SIGPIPE this write raised, so it is not delivered later.
    sigset_t pending;
    sigpending(&pending);
    if (sigismember(&pending, SIGPIPE)) {
      struct timespec zero {
        0, 0
      };
      ::sigtimedwait(&pipe_set, nullptr, &zero);
    }
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  errno = saved;
  return n;
}

Status write_file(const std::string& path, std::string_view data) {
  auto fd = open_fd(path, O_WRONLY);
  if (!fd) return fail(fd.error());
  // cgroupfs and procfs take one write per value: a short write is an error.
  ssize_t n;
  do n = ::write(fd->get(), data.data(), data.size());
  while (n < 0 && errno == EINTR);
  if (n < 0) return fail(sys_error("write " + path));
  if (static_cast<size_t>(n) != data.size()) return fail(internal("short write to " + path));
  return {};
}

}  // namespace cloister
