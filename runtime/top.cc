#include "runtime/top.h"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string_view>

namespace cloister::top {

using json = nlohmann::json;

namespace {

// The kernel's answer for a file of dir, at most max bytes of it.
std::optional<std::string> read_in(int dir, const char* name, size_t max) {
  Fd f(::openat(dir, name, O_RDONLY | O_CLOEXEC));
  if (!f) return std::nullopt;
  std::string out(max, '\0');
  size_t got = 0;
  for (ssize_t n;
       got < out.size() && (n = ::read(f.get(), out.data() + got, out.size() - got)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      return std::nullopt;
    }
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  return out;
}

// One slot of the shared memory per process: the child fills data, then
// publishes its length; kUnread until it does.
struct Slot {
  std::atomic<uint32_t> len;
  char data[kArgvMax];
};
constexpr uint32_t kUnread = UINT32_MAX;

// The child: async-signal-safe steps only (it was forked from a process that
// has other threads). It keeps nothing but the dir fds it reads through, so
// no pipe or socket of cloisterd's is held open past its owner's close.
[[noreturn]] void read_all(Slot* slots, const int* dirs, size_t n, const int* sorted,
                           pid_t parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);
  // Without close_range (Linux < 5.9) it reads nothing rather than hold
  // cloisterd's sockets and pipes open while it may be stuck.
  unsigned lo = 0;
  for (size_t i = 0; i < n; ++i) {
    const auto fd = static_cast<unsigned>(sorted[i]);
    if (fd > lo && ::syscall(SYS_close_range, lo, fd - 1, 0) != 0) ::_exit(1);
    lo = fd + 1;
  }
  if (::syscall(SYS_close_range, lo, ~0U, 0) != 0) ::_exit(1);
  for (size_t i = 0; i < n; ++i) {
    uint32_t got = 0;
    int f = ::openat(dirs[i], "cmdline", O_RDONLY | O_CLOEXEC);
    if (f >= 0) {
      for (ssize_t r;
           got < kArgvMax && (r = ::read(f, slots[i].data + got, kArgvMax - got)) != 0;) {
        if (r < 0) {
          if (errno == EINTR) continue;
          break;
        }
        got += static_cast<uint32_t>(r);
      }
      ::close(f);
    }
    slots[i].len.store(got, std::memory_order_release);
  }
  ::_exit(0);
}

}  // namespace

std::optional<Process> read_process(pid_t pid, ino_t pidns) {
  Fd dir(::open(("/proc/" + std::to_string(pid)).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) return std::nullopt;
  // Walked up to the session's namespace (32 levels at most, the kernel's
  // limit); `up` says how many of the innermost NSpid fields are below it.
  size_t up = 0;
  {
    Fd ns(::openat(dir.get(), "ns/pid", O_RDONLY | O_CLOEXEC));
    struct stat st {};
    while (ns && ::fstat(ns.get(), &st) == 0 && st.st_ino != pidns && up < 32) {
      ns = Fd(::ioctl(ns.get(), NS_GET_PARENT));
      ++up;
    }
    if (!ns || st.st_ino != pidns) return std::nullopt;
  }
  auto stat = read_in(dir.get(), "stat", 4096);
  auto status = read_in(dir.get(), "status", 4096);
  if (!stat || !status) return std::nullopt;
  const size_t open = stat->find('('), close = stat->rfind(')');
  if (open == std::string::npos || close == std::string::npos || close < open) return std::nullopt;
  std::vector<std::string> f;
  for (size_t pos = close + 2; pos < stat->size();) {
    size_t end = stat->find(' ', pos);
    if (end == std::string::npos) end = stat->size();
    f.push_back(stat->substr(pos, end - pos));
    pos = end + 1;
  }
  if (f.size() < 22) return std::nullopt;
  const auto num = [](const std::string& x) { return std::strtoull(x.c_str(), nullptr, 10); };
  const uint64_t tick = static_cast<uint64_t>(::sysconf(_SC_CLK_TCK));
  Process p;
  p.comm = stat->substr(open + 1, close - open - 1);
  p.fields = {{"pid", pid},
              {"ppid", num(f[1])},
              {"state", f[0]},
              {"cpu_time_us", (num(f[11]) + num(f[12])) * 1000000 / tick},
              {"rss", num(f[21]) * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE))}};
  // "NSpid: host ... innermost": the pid inside the sandbox is `up` fields
  // before the last.
  for (size_t pos = 0; pos < status->size();) {
    size_t end = status->find('\n', pos);
    if (end == std::string::npos) end = status->size();
    std::string_view line(status->data() + pos, end - pos);
    auto last_field = [up](std::string_view l) {
      for (size_t skip = 0;; ++skip) {
        while (!l.empty() && (l.back() == ' ' || l.back() == '\t')) l.remove_suffix(1);
        size_t b = l.find_last_of(" \t");
        if (skip == up || b == std::string_view::npos)
          return std::string(b == std::string_view::npos ? l : l.substr(b + 1));
        l = l.substr(0, b);
      }
    };
    auto first_field = [](std::string_view l) {
      l.remove_prefix(std::min(l.find_first_not_of(" \t", l.find(':') + 1), l.size()));
      return std::string(l.substr(0, l.find_first_of(" \t")));
    };
    if (line.starts_with("NSpid:")) p.fields["ns_pid"] = num(last_field(line));
    if (line.starts_with("Uid:")) p.fields["uid"] = num(first_field(line));
    pos = end + 1;
  }
  p.dir = std::move(dir);
  return p;
}

Result<ArgvReader> ArgvReader::start(const std::vector<Process>& procs) {
  ArgvReader r;
  r.count_ = procs.size();
  r.shared_size_ = std::max<size_t>(1, procs.size()) * sizeof(Slot);
  void* mem =
      ::mmap(nullptr, r.shared_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return fail(sys_error("mmap the command-line buffer"));
  r.shared_ = mem;
  auto* slots = static_cast<Slot*>(mem);
  for (size_t i = 0; i < procs.size(); ++i) slots[i].len.store(kUnread, std::memory_order_relaxed);
  std::vector<int> dirs, sorted;
  for (const auto& p : procs) dirs.push_back(p.dir.get());
  sorted = dirs;
  std::sort(sorted.begin(), sorted.end());
  const pid_t parent = ::getpid();
  // clone3 with CLONE_PIDFD: the pidfd comes with the child, so no number
  // is ever looked up that an embedding program's reaping could free. Like
  // fork, but without glibc's atfork handlers: the child runs raw system
  // calls only.
  int pidfd = -1;
  clone_args args{};
  args.flags = CLONE_PIDFD;
  args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  args.exit_signal = SIGCHLD;
  const long child = ::syscall(SYS_clone3, &args, sizeof args);
  if (child < 0) return fail(sys_error("clone3 the command-line reader"));
  if (child == 0) read_all(slots, dirs.data(), dirs.size(), sorted.data(), parent);
  r.pidfd_ = Fd(pidfd);
  return r;
}

ArgvReader::ArgvReader(ArgvReader&& o) noexcept {
  *this = std::move(o);
}

ArgvReader& ArgvReader::operator=(ArgvReader&& o) noexcept {
  if (this != &o) {
    release();
    pidfd_ = std::move(o.pidfd_);
    reaped_ = std::exchange(o.reaped_, false);
    shared_ = std::exchange(o.shared_, nullptr);
    shared_size_ = std::exchange(o.shared_size_, 0);
    count_ = std::exchange(o.count_, 0);
  }
  return *this;
}

ArgvReader::~ArgvReader() {
  release();
}

void ArgvReader::release() {
  if (pidfd_ && !reaped_) {
    kill();
    pollfd p{pidfd_.get(), POLLIN, 0};
    while (::poll(&p, 1, 1000) < 0 && errno == EINTR) {
    }
    (void)reap();
  }
  pidfd_.reset();
  if (shared_) ::munmap(shared_, shared_size_);
  shared_ = nullptr;
}

void ArgvReader::kill() {
  if (pidfd_ && !reaped_) ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
}

// By pidfd, never by a number that someone else's reaping could have freed.
bool ArgvReader::reap() {
  if (!pidfd_ || reaped_) return true;
  siginfo_t info{};
  int rc;
  while ((rc = ::waitid(P_PIDFD, static_cast<id_t>(pidfd_.get()), &info, WEXITED | WNOHANG)) < 0 &&
         errno == EINTR) {
  }
  // ECHILD: reaped by an embedding program that waits for every child.
  if ((rc == 0 && info.si_pid != 0) || (rc < 0 && errno == ECHILD)) {
    reaped_ = true;
    return true;
  }
  return false;
}

std::vector<std::vector<std::string>> ArgvReader::argvs(bool& complete) const {
  complete = true;
  std::vector<std::vector<std::string>> out(count_);
  const auto* slots = static_cast<const Slot*>(shared_);
  for (size_t i = 0; i < count_; ++i) {
    const uint32_t len = slots[i].len.load(std::memory_order_acquire);
    if (len == kUnread) {
      complete = false;
      continue;
    }
    std::string_view cmd(slots[i].data, std::min<size_t>(len, kArgvMax));
    for (size_t pos = 0; pos < cmd.size();) {
      size_t e = cmd.find('\0', pos);
      if (e == std::string_view::npos) e = cmd.size();
      out[i].emplace_back(cmd.substr(pos, e - pos));
      pos = e + 1;
    }
  }
  return out;
}

json to_json(std::vector<Process>& procs, const std::vector<std::vector<std::string>>& argvs) {
  json out = json::array();
  for (size_t i = 0; i < procs.size(); ++i) {
    json j = std::move(procs[i].fields);
    if (i < argvs.size() && !argvs[i].empty())
      j["argv"] = argvs[i];
    else
      j["argv"] = json::array({"[" + procs[i].comm + "]"});
    out.push_back(std::move(j));
  }
  return out;
}

}  // namespace cloister::top
