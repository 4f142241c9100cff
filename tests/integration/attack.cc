// cloister_attack: a hostile payload for the escape suite (escape_test.cc).
// Run as root inside a sandbox, it attempts what the attack review did and
// prints one "name result" line per attempt: "ok" when it worked, the errno's
// name when it was refused. The tests assert each refusal.
#include <dirent.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
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
#include <ctime>
#include <string>
#include <vector>

namespace {

void say(const char* name, long rc) {
  std::printf("%s %s\n", name, rc >= 0 ? "ok" : strerrorname_np(errno));
  std::fflush(stdout);
}

long open_close(const char* path, int flags) {
  int fd = ::open(path, flags | O_CLOEXEC);
  if (fd >= 0) ::close(fd);
  return fd;
}

// What the review did to its init: memory, environment, fds, the exe link,
// ptrace and its relatives.
// Opens path and reads a little (some /proc files check at read, not open).
long open_read(const char* path) {
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[64];
  long n = ::read(fd, buf, sizeof buf);
  int e = errno;
  ::close(fd);
  errno = e;
  return n;
}

int proc1() {
  say("mem_rw", open_close("/proc/1/mem", O_RDWR));
  say("mem_ro", open_read("/proc/1/mem"));
  say("environ", open_read("/proc/1/environ"));
  say("syscall", open_read("/proc/1/syscall"));
  say("stack", open_read("/proc/1/stack"));
  say("exe_path", open_close("/proc/1/exe", O_PATH));
  char buf[256];
  say("exe_link", ::readlink("/proc/1/exe", buf, sizeof buf));
  say("cwd_link", ::readlink("/proc/1/cwd", buf, sizeof buf));
  say("root_link", ::readlink("/proc/1/root", buf, sizeof buf));
  say("ns_mnt", open_close("/proc/1/ns/mnt", O_RDONLY));
  // Every fd number the init could hold, for writing (its status pipe).
  long fd_result = -1;
  int fd_errno = ENOENT;
  for (int n = 0; n < 64; ++n) {
    std::string p = "/proc/1/fd/" + std::to_string(n);
    long r = open_close(p.c_str(), O_WRONLY);
    if (r >= 0) fd_result = 0;
    if (r < 0 && errno != ENOENT) fd_errno = errno;
  }
  errno = fd_errno;
  say("fd_write", fd_result);
  say("ptrace_attach", ::ptrace(PTRACE_ATTACH, 1, nullptr, nullptr));
  say("ptrace_seize", ::ptrace(PTRACE_SEIZE, 1, nullptr, nullptr));
  char local[16];
  iovec l{local, sizeof local}, r{reinterpret_cast<void*>(0x400000), sizeof local};
  say("vm_readv", ::syscall(SYS_process_vm_readv, 1, &l, 1, &r, 1, 0));
  say("vm_writev", ::syscall(SYS_process_vm_writev, 1, &l, 1, &r, 1, 0));
  long pidfd = ::syscall(SYS_pidfd_open, 1, 0);
  long got = -1;
  int got_errno = errno;
  if (pidfd >= 0) {
    for (int n = 0; n < 64 && got < 0; ++n) {
      got = ::syscall(SYS_pidfd_getfd, pidfd, n, 0);
      if (got < 0 && errno != EBADF) got_errno = errno;
    }
    ::close(static_cast<int>(pidfd));
  }
  errno = got_errno;
  say("pidfd_getfd", got);
  return 0;
}

// Tries to forge the init's exit report, then exits with code.
void forge() {
  for (int n = 0; n < 64; ++n) {
    std::string p = "/proc/1/fd/" + std::to_string(n);
    int fd = ::open(p.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) continue;
    // wait_status 0, alone 1, max_rss 0: "exited 0, nothing left".
    int32_t msg[4] = {0, 1, 0, 0};
    if (::write(fd, msg, sizeof msg) == static_cast<ssize_t>(sizeof msg))
      std::printf("forged %d\n", n);
    ::close(fd);
  }
  std::fflush(stdout);
}

// A child that outlives its parent unless the sandbox ends it: new session,
// SIGTERM and SIGHUP ignored, argv[0] named so the host can find it.
void leave_child(const char* marker) {
  // The parent goes on once the child is in a session of its own: what it
  // does next (exit, its group killed) never finds the child still in its
  // process group.
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return;
  if (::fork() != 0) {
    ::close(p[1]);
    char c;
    while (::read(p[0], &c, 1) < 0 && errno == EINTR) {
    }
    ::close(p[0]);
    return;
  }
  ::close(p[0]);
  ::setsid();
  ::close(p[1]);
  ::signal(SIGTERM, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  ::prctl(PR_SET_PDEATHSIG, 0);
  ::execl("/proc/self/exe", marker, "sleep", nullptr);
  for (;;) ::pause();
}

// Its own executable, reopened for writing: at once, then (through a handle
// kept across an exec of another program) once it no longer runs.
int exe_write() {
  int fd = ::open("/proc/self/exe", O_PATH);  // kept across the exec below
  say("self_exe_path", fd);
  if (fd < 0) return 0;
  std::string p = "/proc/self/fd/" + std::to_string(fd);
  say("self_exe_write", open_close(p.c_str(), O_WRONLY));
  std::string n = std::to_string(fd);
  ::execl("/probe/cloister_probe", "cloister_probe", "reopen", n.c_str(), nullptr);
  say("exec_probe", -1);
  return 1;
}

sockaddr_un unix_addr(const char* path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  return a;
}

// The receiver: reopens every handle it gets for writing, at once and after
// its sender's sandbox has gone.
int recv_exe(const char* sock) {
  int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ::unlink(sock);
  sockaddr_un a = unix_addr(sock);
  // Open to any sender: sandboxes with ranges of their own have other uids.
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::chmod(sock, 0777) != 0 ||
      ::listen(s, 1) != 0) {
    say("listen", -1);
    return 1;
  }
  say("listen", 0);
  int c = ::accept4(s, nullptr, nullptr, SOCK_CLOEXEC);
  char byte;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(8 * sizeof(int))];
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = sizeof cbuf;
  if (::recvmsg(c, &m, MSG_CMSG_CLOEXEC) != 1) {
    say("received", -1);
    return 1;
  }
  std::vector<int> fds;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm))
    for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
      fds.push_back(fd);
    }
  std::printf("received %zu\n", fds.size());
  for (int round = 0; round < 2; ++round) {
    if (round == 1) ::usleep(300 * 1000);  // the sender's sandbox is gone by now
    for (int fd : fds) {
      std::string p = "/proc/self/fd/" + std::to_string(fd);
      say(round == 0 ? "passed_write" : "passed_write_later", open_close(p.c_str(), O_WRONLY));
    }
  }
  return 0;
}

// Forks children that wait until fork fails: how many the sandbox allows.
int forkbomb() {
  long n = 0;
  int err = 0;
  for (; n < 100000; ++n) {
    pid_t p = ::fork();
    if (p == 0) {
      ::pause();
      ::_exit(0);
    }
    if (p < 0) {
      err = errno;
      break;
    }
  }
  std::printf("forked %ld %s\n", n, err ? strerrorname_np(err) : "none");
  std::fflush(stdout);
  ::kill(0, SIGKILL);  // the children (and us): the init reports the kill
  return 0;
}

// Writes 1 MiB chunks into dir until a write fails.
int fill(const char* dir) {
  std::string path = std::string(dir) + "/fill";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    say("fill_open", -1);
    return 1;
  }
  std::vector<char> chunk(1 << 20, 'x');
  long mib = 0;
  int err = 0;
  for (; mib < 100000; ++mib) {
    ssize_t w = ::write(fd, chunk.data(), chunk.size());
    if (w != static_cast<ssize_t>(chunk.size())) {
      err = w < 0 ? errno : ENOSPC;
      break;
    }
  }
  std::printf("filled %ld %s\n", mib, err ? strerrorname_np(err) : "none");
  ::close(fd);
  ::unlink(path.c_str());
  return 0;
}

// Files of the inodes, one inode per file, until creating one fails.
int inodes(const char* dir) {
  long n = 0;
  int err = 0;
  for (; n < 10000000; ++n) {
    std::string p = std::string(dir) + "/i" + std::to_string(n);
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
      err = errno;
      break;
    }
    ::close(fd);
  }
  std::printf("inodes %ld %s\n", n, err ? strerrorname_np(err) : "none");
  return 0;
}

// What a payload learns of the host by name.
int names() {
  FILE* f = std::fopen("/proc/self/cgroup", "re");
  char line[512];
  while (f && std::fgets(line, sizeof line, f)) std::printf("cgroup %s", line);
  if (f) std::fclose(f);
  for (const char* p : {"/proc/kpageflags", "/proc/kpagecount", "/proc/kpagecgroup",
                        "/proc/slabinfo", "/proc/vmallocinfo", "/proc/pagetypeinfo", "/proc/kcore",
                        "/proc/keys", "/proc/timer_list", "/proc/sched_debug"}) {
    int fd = ::open(p, O_RDONLY | O_CLOEXEC);
    long got = -1;
    if (fd >= 0) {
      char buf[4096];
      got = ::read(fd, buf, sizeof buf);
      ::close(fd);
    }
    if (fd < 0 || got < 0)
      std::printf("read %s %s\n", p, strerrorname_np(errno));
    else
      std::printf("read %s %ld\n", p, got);
  }
  for (int type : {SOCK_RAW, SOCK_DGRAM}) {
    long s = ::socket(AF_NETLINK, type | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
    say(type == SOCK_RAW ? "uevent_raw" : "uevent_dgram", s);
    if (s >= 0) ::close(static_cast<int>(s));
  }
  return 0;
}

// What a root payload is on the host (issue 12): its uid map, a root-only
// file it may not read, the owners it sees, and a setuid file it makes in
// a writable volume (the test looks at its owner on the host).
// userns SECRET WRITABLE_DIR [PATH...]
int userns(int argc, char** argv) {
  char map[128] = {};
  int fd = ::open("/proc/self/uid_map", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    (void)!::read(fd, map, sizeof map - 1);
    ::close(fd);
  }
  unsigned inside = 0, outside = 0, count = 0;
  std::sscanf(map, "%u %u %u", &inside, &outside, &count);
  std::printf("uid_map %u:%u:%u\n", inside, outside, count);
  say("secret_read", open_close(argv[2], O_RDONLY));
  const std::string mine = std::string(argv[3]) + "/mine";
  int m = ::open(mine.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
  say("create", m);
  if (m >= 0) {
    say("setuid_chmod", ::fchmod(m, 04755));
    ::close(m);
  }
  for (int i = 4; i < argc; ++i) {
    struct stat st {};
    if (::lstat(argv[i], &st) == 0)
      std::printf("owner %s %u:%u\n", argv[i], st.st_uid, st.st_gid);
    else
      std::printf("owner %s %s\n", argv[i], strerrorname_np(errno));
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace

// Capabilities held in name only (the OCI runtime keeps a config's inert
// ones, userns::kInertCapabilities): the effective set, then one use of
// each, which the kernel must refuse. DIR: a writable directory.
// inert DIR
int inert(const char* dir) {
  FILE* f = std::fopen("/proc/self/status", "r");
  char line[256];
  while (f && std::fgets(line, sizeof line, f))
    if (std::strncmp(line, "CapEff:", 7) == 0) std::printf("cap_eff %s", line + 8);
  if (f) std::fclose(f);
  long s = ::socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);  // CAP_NET_RAW
  say("raw_socket", s);
  if (s >= 0) ::close(static_cast<int>(s));
  const std::string node = std::string(dir) + "/mem";  // CAP_MKNOD: /dev/mem
  say("mknod", ::mknod(node.c_str(), S_IFCHR | 0600, makedev(1, 1)));
  s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);  // CAP_NET_BIND_SERVICE
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(80);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  say("bind_80",
      s < 0 ? s : ::bind(static_cast<int>(s), reinterpret_cast<sockaddr*>(&a), sizeof a));
  if (s >= 0) ::close(static_cast<int>(s));
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  say("settime", ::clock_settime(CLOCK_REALTIME, &now));  // CAP_SYS_TIME
  say("sethostname", ::sethostname("x", 1));              // CAP_SYS_ADMIN (dropped)
  say("mount", ::syscall(SYS_mount, "none", dir, "tmpfs", 0, nullptr));
  say("unshare_mnt", ::unshare(CLONE_NEWNS));
  return 0;
}

// Holds its own mmap lock for as long as path's FUSE server likes. path is
// a direct-I/O file whose server never answers a READ. A thread faults on
// a mapping of it: the page stays locked for the read, and the thread waits
// without the lock. Then a second mmap of the file, which takes the mmap
// lock for writing, waits for that page (FUSE invalidates the cache of a
// direct-I/O file at mmap) while holding it. Whoever reads this process's
// /proc/PID/cmdline waits for the lock. (A page of a FUSE file mapped over
// the command line itself, CVE-2018-1120, is not read: the kernel reads
// only anonymous memory there.)
void* fault_on(void* page) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>(*static_cast<volatile char*>(page)));
}
int mmap_lock(const char* path) {
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    say("mmap_lock_open", -1);
    return 4;
  }
  void* first = ::mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
  if (first == MAP_FAILED) {
    say("mmap_lock_map", -1);
    return 4;
  }
  pthread_t t;
  if (::pthread_create(&t, nullptr, fault_on, first) != 0) return 5;
  ::usleep(200 * 1000);
  say("mmap_lock", 0);
  void* second = ::mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
  say("mmap_lock_second", second == MAP_FAILED ? -1 : 0);
  for (;;) ::pause();
}

int main(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "mmap-lock" && argc > 2) return mmap_lock(argv[2]);
  if (cmd == "proc1") return proc1();
  if (cmd == "forge") {  // forge [code]
    forge();
    return argc > 2 ? std::atoi(argv[2]) : 7;
  }
  if (cmd == "forge-and-hang") {  // forge, leave a child, never exit
    forge();
    leave_child("cloister-attack-leftover");
    ::signal(SIGTERM, SIG_IGN);
    for (;;) ::pause();
  }
  if (cmd == "exit-leaving-child") {  // exit 0 at once, a child stays
    leave_child("cloister-attack-leftover");
    forge();
    return 0;
  }
  if (cmd == "hold") {  // sleeps, with a child: for the caller-killed tests
    leave_child("cloister-attack-leftover");
    std::printf("holding\n");
    std::fflush(stdout);
    for (;;) ::pause();
  }
  if (cmd == "sleep") {
    for (;;) ::pause();
  }
  if (cmd == "exe") return exe_write();
  if (cmd == "recv-exe" && argc > 2) return recv_exe(argv[2]);
  if (cmd == "forkbomb") return forkbomb();
  if (cmd == "fill" && argc > 2) return fill(argv[2]);
  if (cmd == "inodes" && argc > 2) return inodes(argv[2]);
  if (cmd == "names") return names();
  if (cmd == "inert" && argc > 2) return inert(argv[2]);
  if (cmd == "userns" && argc > 3) return userns(argc, argv);
  std::fprintf(stderr, "usage: cloister_attack proc1|forge [code]|forge-and-hang|...\n");
  return 2;
}
