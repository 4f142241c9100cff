#include "isolate/fd.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

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

ssize_t send_fds(int sock, const void* buf, size_t len, const int* fds, size_t nfds) noexcept {
  if (nfds > kMaxPassFds) {
    errno = EINVAL;
    return -1;
  }
  alignas(cmsghdr) char cbuf[CMSG_SPACE(kMaxPassFds * sizeof(int))];
  iovec iov{const_cast<void*>(buf), len};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  if (nfds) {
    m.msg_control = cbuf;
    m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    cmsghdr* cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    std::memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
  }
  ssize_t n;
  do n = ::sendmsg(sock, &m, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n;
}

ssize_t recv_fds(int sock, void* buf, size_t len, int* fds, size_t maxfds, size_t* nfds) noexcept {
  *nfds = 0;
  if (maxfds > kMaxPassFds) maxfds = kMaxPassFds;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(kMaxPassFds * sizeof(int))];
  iovec iov{buf, len};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = CMSG_SPACE(maxfds * sizeof(int));
  ssize_t got;
  do got = ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  while (got < 0 && errno == EINTR);
  if (got < 0) return got;
  size_t n = 0;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
      if (n < maxfds)
        fds[n++] = fd;
      else
        ::close(fd);
    }
  }
  *nfds = n;
  if (m.msg_flags & MSG_CTRUNC) {
    for (size_t i = 0; i < n; ++i) ::close(fds[i]);
    *nfds = 0;
    errno = EMSGSIZE;
    return -1;
  }
  return got;
}

int openat2_raw(int dirfd, const char* path, uint64_t flags, uint64_t resolve,
                mode_t mode) noexcept {
  open_how how{};
  how.flags = flags | O_CLOEXEC;
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
  how.resolve = resolve;
  long fd;
  do fd = ::syscall(SYS_openat2, dirfd, path, &how, sizeof how);
  while (fd < 0 && (errno == EAGAIN || errno == EINTR));
  return static_cast<int>(fd);
}

Result<Fd> openat2_fd(int dirfd, const std::string& path, uint64_t flags, uint64_t resolve,
                      mode_t mode) {
  int fd = openat2_raw(dirfd, path.c_str(), flags, resolve, mode);
  if (fd < 0) return fail(sys_error("open " + path));
  return Fd(fd);
}

Result<std::vector<DirEntry>> read_dir(int dirfd) {
  // A dup of our own: closedir() closes the fd it was given, and the
  // caller's keeps its offset.
  int dup = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dup < 0) return fail(sys_error("open directory"));
  DIR* d = ::fdopendir(dup);
  if (!d) {
    int e = errno;
    ::close(dup);
    return fail(sys_error("fdopendir", e));
  }
  std::vector<DirEntry> out;
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
      out.push_back({e->d_name, e->d_type});
    errno = 0;
  }
  int err = errno;
  ::closedir(d);
  if (err) return fail(sys_error("readdir", err));
  return out;
}

Result<std::vector<DirEntry>> read_dir(const std::string& path) {
  auto fd = open_fd(path, O_RDONLY | O_DIRECTORY);
  if (!fd) return fail(fd.error());
  return with_context(read_dir(fd->get()), path);
}

}  // namespace cloister
