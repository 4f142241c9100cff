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
#include <type_traits>

#include "isolate/clone_vm.h"
#include "isolate/init_program.h"
#include "runtime/top_reader.h"

#ifndef CLOISTER_TOP_READER_BINARY
#error "CLOISTER_TOP_READER_BINARY must name the built cloister-top-reader"
#endif
CLOISTER_EMBED_PROGRAM(cloister_top_reader_image, CLOISTER_TOP_READER_BINARY)

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

// The clone child, sharing cloisterd's memory until its exec (CLONE_VM,
// CLONE_VFORK): raw system calls only. The reader keeps only the fds its
// argv names, so no pipe or socket of cloisterd's is held open past its
// owner's close, and nothing of cloisterd's memory while it may be stuck.
struct ReaderExec {
  int program, mem;
  const int* dirs;
  size_t n;
  char* const* argv;
  pid_t parent;
};

[[noreturn]] void exec_reader(void* arg) noexcept {
  const ReaderExec& x = *static_cast<const ReaderExec*>(arg);
  constexpr auto l = [](auto v) { return child_arg(v); };
  // Dies with cloisterd (kept across the exec), also if cloisterd died
  // before this line.
  long r = child_syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  if (r == 0 && child_syscall(SYS_getppid) != x.parent) r = -ESRCH;
  if (r == 0) r = child_syscall(SYS_close_range, 0, l(~0U), CLOSE_RANGE_CLOEXEC);
  if (r == 0) r = child_syscall(SYS_fcntl, x.mem, F_SETFD, 0);
  for (size_t i = 0; r == 0 && i < x.n; ++i) r = child_syscall(SYS_fcntl, x.dirs[i], F_SETFD, 0);
  static char* const no_env[] = {nullptr};
  if (r == 0) child_syscall(SYS_execveat, x.program, l(""), l(x.argv), l(no_env), AT_EMPTY_PATH);
  for (;;) child_syscall(SYS_exit_group, 127);
}

}  // namespace

Result<int> reader_program() {
  static init_program::Sealed program{"cloister-top-reader", [] {
                                        return std::span<const unsigned char>(
                                            cloister_top_reader_image_start,
                                            cloister_top_reader_image_end);
                                      }};
  return init_program::fd(program);
}

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
  auto program = reader_program();
  if (!program) return fail(program.error());
  ArgvReader r;
  r.count_ = procs.size();
  r.shared_size_ = std::max<size_t>(1, procs.size()) * sizeof(Slot);
  Fd mem(::memfd_create("cloister-top", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!mem) return fail(sys_error("memfd_create the command-line buffer"));
  // Of a fixed size: nothing can shrink it under our mapping (SIGBUS).
  if (::ftruncate(mem.get(), static_cast<off_t>(r.shared_size_)) != 0 ||
      ::fcntl(mem.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return fail(sys_error("size the command-line buffer"));
  void* shared = ::mmap(nullptr, r.shared_size_, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0);
  if (shared == MAP_FAILED) return fail(sys_error("mmap the command-line buffer"));
  r.shared_ = shared;
  auto* slots = static_cast<Slot*>(shared);
  for (size_t i = 0; i < procs.size(); ++i) slots[i].len.store(kUnread, std::memory_order_relaxed);
  // Everything the child needs, made before it exists.
  std::vector<int> dirs;
  std::vector<std::string> words{"cloister-top-reader", std::to_string(mem.get())};
  for (const auto& p : procs) {
    dirs.push_back(p.dir.get());
    words.push_back(std::to_string(p.dir.get()));
  }
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  ReaderExec x{*program, mem.get(), dirs.data(), dirs.size(), argv.data(), ::getpid()};
  // clone3 with CLONE_PIDFD: the pidfd comes with the child, so no number
  // is ever looked up that an embedding program's reaping could free.
  int pidfd = -1;
  clone_args args{};
  args.flags = CLONE_PIDFD;
  args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  args.exit_signal = SIGCHLD;
  // No handler of the caller's may run in the child.
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  long child;
  int clone_errno = 0;
#ifdef CLOISTER_CLONE3_VM
  // No page tables copied: this thread sleeps until the exec (CLONE_VFORK).
  alignas(64) char stack[16 * 1024];
  args.flags |= CLONE_VM | CLONE_VFORK;
  args.stack = reinterpret_cast<uint64_t>(stack);
  args.stack_size = sizeof stack;
  child = cloister_clone3_vm(&args, sizeof args, exec_reader, &x);
  if (child < 0) clone_errno = static_cast<int>(-child);
#else
  child = ::syscall(SYS_clone3, &args, sizeof args);
  if (child == 0) exec_reader(&x);
  clone_errno = errno;
#endif
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (child < 0) return fail(sys_error("clone3 the command-line reader", clone_errno));
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
