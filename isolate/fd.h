// Owned file descriptors. Every fd libcloister opens is held by an Fd (move
// only, closed on destruction) and opened with O_CLOEXEC, so that nothing
// leaks into a sandbox or into a process an embedding daemon forks.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

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

// --- fds over unix sockets (SCM_RIGHTS) ------------------------------------
// Both are async-signal-safe (raw syscalls, no allocation): the sandbox's
// init and the clone child use them as the library does.

// The most fds one message carries (the kernel's SCM_MAX_FD is 253).
constexpr size_t kMaxPassFds = 250;
// sendmsg of len bytes with nfds (<= kMaxPassFds) fds attached; MSG_NOSIGNAL,
// EINTR retried. Returns what sendmsg returns.
ssize_t send_fds(int sock, const void* buf, size_t len, const int* fds, size_t nfds) noexcept;
// recvmsg of exactly len bytes (MSG_WAITALL) and up to maxfds (<=
// kMaxPassFds) fds, received close-on-exec into fds; *nfds gets their
// number. Returns the bytes read (0 at EOF) or -1 with errno; EMSGSIZE (the
// fds received are closed) when more fds came than maxfds.
ssize_t recv_fds(int sock, void* buf, size_t len, int* fds, size_t maxfds, size_t* nfds) noexcept;

// --- openat2 ----------------------------------------------------------------
// openat2(dirfd, path, flags | O_CLOEXEC, resolve): the one way libcloister
// resolves a path that someone else may change under it. EAGAIN (a rename
// racing a RESOLVE_BENEATH/RESOLVE_IN_ROOT walk) is retried. Returns the fd
// or -1 with errno; async-signal-safe.
int openat2_raw(int dirfd, const char* path, uint64_t flags, uint64_t resolve,
                mode_t mode = 0) noexcept;
Result<Fd> openat2_fd(int dirfd, const std::string& path, uint64_t flags, uint64_t resolve,
                      mode_t mode = 0);

// --- directories -------------------------------------------------------------
struct DirEntry {
  std::string name;    // never "." or ".."
  unsigned char type;  // DT_* as readdir gives it (DT_UNKNOWN on some filesystems)
};
// The entries of the directory open at dirfd (which stays open and keeps its
// offset), or of the directory at path; a missing directory is NotFound.
Result<std::vector<DirEntry>> read_dir(int dirfd);
Result<std::vector<DirEntry>> read_dir(const std::string& path);

}  // namespace cloister
