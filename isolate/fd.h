// Owned file descriptors. Every fd libcloister opens is held by an Fd (move
// only, closed on destruction) and opened with O_CLOEXEC, so that nothing
// leaks into a sandbox or into a process an embedding daemon forks.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "isolate/error.h"

namespace cloister {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

struct Pipe {
  Fd read;
  Fd write;
};

// pipe2(O_CLOEXEC | extra_flags).
Result<Pipe> make_pipe(int extra_flags = 0);
// open(path, flags | O_CLOEXEC, mode).
Result<Fd> open_fd(const std::string& path, int flags, int mode = 0);
Result<Fd> open_at(int dirfd, const std::string& path, int flags, int mode = 0);

// Whole-file helpers for small control files (/proc, cgroupfs).
Result<std::string> read_file(const std::string& path);
Result<std::string> read_fd(int fd);
Status write_file(const std::string& path, std::string_view data);
Status write_all(int fd, std::string_view data);
// write(2) that gives EPIPE instead of raising SIGPIPE when the reader is
// gone: a library must not kill its host for that, nor change its signal
// dispositions. SIGPIPE is blocked in the calling thread for the call.
ssize_t write_nosigpipe(int fd, const void* data, size_t len);

}  // namespace cloister
