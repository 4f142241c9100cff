// cloister_probe: runs inside a sandbox during the integration tests and
// reports what it can see and do, one "key value" line per fact.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void result(const char* name, long rc) {
  std::printf("%s %s\n", name, rc == 0 || rc > 0 ? "ok" : strerrorname_np(errno));
}

int syscalls() {
  result("mount", ::mount("none", "/tmp", "tmpfs", 0, nullptr));
  result("umount2", ::umount2("/proc", MNT_DETACH));
  result("unshare", ::unshare(CLONE_NEWNS));
  result("unshare_user", ::unshare(CLONE_NEWUSER));
  // Our own namespace: the init's (/proc/1/ns) cannot even be opened.
  int ns = ::open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
  result("setns", ns < 0 ? -1 : ::setns(ns, 0));
  result("ptrace", ::ptrace(PTRACE_ATTACH, 1, nullptr, nullptr));
  result("keyctl", ::syscall(SYS_keyctl, 0 /*KEYCTL_GET_KEYRING_ID*/, -3, 0));
  union bpf_attr attr {};
  result("bpf", ::syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
  result("chroot", ::chroot("/tmp"));
  result("pivot_root", ::syscall(SYS_pivot_root, "/tmp", "/tmp"));
  result("sethostname", ::sethostname("evil", 4));
  result("mknod", ::mknod("/tmp/sda", S_IFBLK | 0600, makedev(8, 0)));
  result("reboot", ::syscall(SYS_reboot, 0xfee1dead, 672274793, 0x1234567, nullptr));
  result("setuid0", ::syscall(SYS_setuid, 0));
  return 0;
}

int fds() {
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return 1;
  int own = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    if (std::atoi(e->d_name) == own) continue;
    char target[256] = {};
    std::string p = std::string("/proc/self/fd/") + e->d_name;
    ::readlink(p.c_str(), target, sizeof target - 1);
    std::printf("fd %s %s\n", e->d_name, target);
  }
  ::closedir(d);
  return 0;
}

int hog(long mb) {
  std::vector<char*> blocks;
  for (long i = 0; i < mb; ++i) {
    char* b = static_cast<char*>(std::malloc(1 << 20));
    if (!b) return 3;
    std::memset(b, 1, 1 << 20);
    blocks.push_back(b);
  }
  std::printf("allocated %ld\n", mb);
  return 0;
}

int forks(int n) {
  int made = 0, err = 0;
  for (int i = 0; i < n; ++i) {
    pid_t p = ::fork();
    if (p < 0) {
      err = errno;
      break;
    }
    if (p == 0) {
      ::pause();
      _exit(0);
    }
    ++made;
  }
  std::printf("forked %d %s\n", made, err ? strerrorname_np(err) : "none");
  std::fflush(stdout);
  return 0;
}

// Leaves grandchildren that detach into their own sessions, then waits.
int sleepers(int n) {
  for (int i = 0; i < n; ++i) {
    if (::fork() == 0) {
      ::setsid();
      if (::fork() == 0) {
        ::execl("/bin/sleep", "sleep", "8123.25", nullptr);  // a value the tests look for
        _exit(1);
      }
      _exit(0);
    }
  }
  std::printf("started %d\n", n);
  std::fflush(stdout);
  ::pause();
  return 0;
}

int loopback() {
  int srv = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (srv < 0 || ::bind(srv, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(srv, 1) != 0 || ::getsockname(srv, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::printf("loopback %s\n", strerrorname_np(errno));
    return 0;
  }
  int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int rc = ::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  std::printf("loopback %s\n", rc == 0 ? "ok" : strerrorname_np(errno));
  return 0;
}

}  // namespace

// For the escape suite: reopens an inherited handle of another program's
// executable for writing, once that program no longer runs.
int reopen(int fd) {
  std::string p = "/proc/self/fd/" + std::to_string(fd);
  for (int flags : {O_WRONLY, O_RDWR, O_WRONLY | O_APPEND}) {
    int w = ::open(p.c_str(), flags | O_CLOEXEC);
    std::printf("reopened_exe_write %s\n", w >= 0 ? "ok" : strerrorname_np(errno));
    if (w >= 0) ::close(w);
  }
  return 0;
}

// For the escape suite: sends its own executable (and its init's, which it
// cannot get) to a receiver on a unix socket in a shared volume.
int send_exe(const char* sock) {
  int fds[2];
  int n = 0;
  int self = ::open("/proc/self/exe", O_PATH | O_CLOEXEC);
  if (self >= 0) fds[n++] = self;
  int init = ::open("/proc/1/exe", O_PATH | O_CLOEXEC);
  std::printf("init_exe_path %s\n", init >= 0 ? "ok" : strerrorname_np(errno));
  if (init >= 0) fds[n++] = init;
  int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, sock, sizeof a.sun_path - 1);
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::printf("connect %s\n", strerrorname_np(errno));
    return 1;
  }
  char byte = 'x';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof fds)] = {};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = CMSG_SPACE(n * sizeof(int));
  cmsghdr* cm = CMSG_FIRSTHDR(&m);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(n * sizeof(int));
  std::memcpy(CMSG_DATA(cm), fds, n * sizeof(int));
  std::printf("sent %s\n", ::sendmsg(s, &m, 0) == 1 ? "ok" : strerrorname_np(errno));
  return 0;
}

int main(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "reopen" && argc > 2) return reopen(std::atoi(argv[2]));
  if (cmd == "send-exe" && argc > 2) return send_exe(argv[2]);
  if (cmd == "syscalls") return syscalls();
  if (cmd == "fds") return fds();
  if (cmd == "loopback") return loopback();
  if (cmd == "hog" && argc > 2) return hog(std::atol(argv[2]));
  if (cmd == "forks" && argc > 2) return forks(std::atoi(argv[2]));
  if (cmd == "sleepers" && argc > 2) return sleepers(std::atoi(argv[2]));
  std::fprintf(stderr, "usage: cloister_probe syscalls|fds|hog MB|forks N|sleepers N\n");
  return 2;
}
