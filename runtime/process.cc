#include "runtime/process.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <thread>

namespace cloister {

// The watchdog's handle on a process: a dup of its pidfd, so that killing at
// the deadline never races with the Process closing its own fd.
struct Process::Watch {
  Fd pidfd;
  cgroups::Cgroup::Killer cgroup;
  std::chrono::steady_clock::time_point deadline;
  std::atomic<bool> timed_out{false};
  bool timeout = true;  // the process's timeout (else an escalation of a kill)
  // A joined process that ends by its cgroup: at the deadline its cgroup is
  // killed and its init left to reap the tree; the init is sent SIGKILL
  // this much later should it still be there (a process of the tree stuck
  // in the kernel, which its init would wait for).
  std::chrono::milliseconds then_init{0};
};

namespace {
// How long a joined init gets to reap the tree its cgroup's kill ended.
constexpr std::chrono::milliseconds kInitGrace{5000};

// One thread for every deadline of the process.
class Watchdog {
 public:
  static Watchdog& get() {
    static Watchdog* w = new Watchdog;  // never destroyed: may outlive statics
    return *w;
  }
  void add(std::shared_ptr<Process::Watch> w) {
    {
      std::lock_guard lk(mu_);
      deadlines_.emplace(w->deadline, std::move(w));
    }
    cv_.notify_one();
  }
  // After cancel() returns the watchdog neither holds nor uses w.
  void cancel(const std::shared_ptr<Process::Watch>& w) {
    std::lock_guard lk(mu_);
    auto [lo, hi] = deadlines_.equal_range(w->deadline);
    for (auto it = lo; it != hi; ++it)
      if (it->second == w) {
        deadlines_.erase(it);
        break;
      }
  }

 private:
  Watchdog() {
    std::thread([this] { loop(); }).detach();
  }
  void loop() {
    std::unique_lock lk(mu_);
    for (;;) {
      if (deadlines_.empty()) {
        cv_.wait(lk);
        continue;
      }
      auto first = deadlines_.begin()->first;
      if (first > std::chrono::steady_clock::now()) {
        cv_.wait_until(lk, first);
        continue;
      }
      auto w = std::move(deadlines_.begin()->second);
      deadlines_.erase(deadlines_.begin());
      if (w->timeout) w->timed_out = true;
      if (w->then_init.count() > 0) {
        w->cgroup.fire();
        w->deadline = std::chrono::steady_clock::now() + w->then_init;
        w->then_init = {};
        deadlines_.emplace(w->deadline, std::move(w));
        continue;
      }
      // SIGKILL to the init of the sandbox's pid namespace ends every
      // process in it. Under the lock, so that cancel() never races it.
      if (w->pidfd) ::syscall(SYS_pidfd_send_signal, w->pidfd.get(), SIGKILL, nullptr, 0);
      // And to the cgroup, which also lifts its CPU quota: a sandbox under
      // a small one would otherwise take its time to die.
      w->cgroup.fire();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<std::chrono::steady_clock::time_point, std::shared_ptr<Process::Watch>> deadlines_;
};

constexpr size_t kReadChunk = 64 * 1024;

// Reads and drops what payloads write past their output cap, until EOF. Its
// thread runs only while there is something to drain, and holds no fd of
// its own.
class Drainer {
 public:
  static Drainer& get() {
    static Drainer* d = new Drainer;  // never destroyed, like the Watchdog
    return *d;
  }
  void add(Fd fd) {
    std::lock_guard lk(mu_);
    fds_.push_back(std::move(fd));
    if (!running_) {
      running_ = true;
      std::thread([this] { loop(); }).detach();
    }
  }

 private:
  void loop() {
    std::vector<char> buf(kReadChunk);
    for (;;) {
      std::vector<pollfd> pfds;
      {
        std::lock_guard lk(mu_);
        if (fds_.empty()) {
          running_ = false;
          return;
        }
        for (const auto& f : fds_) pfds.push_back({f.get(), POLLIN, 0});
      }
      // A short timeout picks up fds added meanwhile.
      if (::poll(pfds.data(), pfds.size(), 50) <= 0) continue;
      std::lock_guard lk(mu_);
      for (const auto& p : pfds) {
        if (!p.revents) continue;
        ssize_t n = ::read(p.fd, buf.data(), buf.size());
        if (n > 0 || (n < 0 && errno == EINTR)) continue;
        std::erase_if(fds_, [&](const Fd& f) { return f.get() == p.fd; });
      }
    }
  }
  std::mutex mu_;
  std::vector<Fd> fds_;
  bool running_ = false;
};

}  // namespace

Status check_passed_stdio(int fd, std::string_view stream) {
  struct stat st {};
  struct statfs fs {};
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fstat(fd, &st) != 0 || ::fstatfs(fd, &fs) != 0)
    return fail(sys_error(std::string(stream)));
  // An O_PATH fd opens nothing: of a socket file or a named FIFO (which
  // needs no right on the file itself), it would let a payload connect to
  // or open it with its own rights. An anonymous pipe or a socket is the
  // object itself (pipefs, sockfs), never a name in a file system.
  const bool opath = fl & O_PATH;
  if (!opath && ((S_ISFIFO(st.st_mode) && fs.f_type == PIPEFS_MAGIC) ||
                 (S_ISSOCK(st.st_mode) && fs.f_type == SOCKFS_MAGIC)))
    return {};
  if (!opath && S_ISCHR(st.st_mode) && (::isatty(fd) || st.st_rdev == makedev(1, 3))) return {};
  const char* kind = opath                  ? "an O_PATH fd"
                     : S_ISFIFO(st.st_mode) ? "a named FIFO"
                     : S_ISSOCK(st.st_mode) ? "a socket file"
                     : S_ISREG(st.st_mode)  ? "a regular file"
                     : S_ISDIR(st.st_mode)  ? "a directory"
                     : S_ISBLK(st.st_mode)  ? "a block device"
                     : S_ISCHR(st.st_mode)  ? "a device"
                                            : "an unknown kind of file";
  return fail(invalid(std::string(stream) + " is " + kind +
                      ": only pipes, sockets, terminals and /dev/null are handed to a sandbox "
                      "(a payload reopens anything else through /proc/self/fd with its own "
                      "rights); relay it through a pipe"));
}

int ExitStatus::code() const {
  if (timed_out) return 124;
  if (exit_code >= 0) return exit_code;
  return 128 + signal;
}

Process::Process(ProcessSetup setup) : setup_(std::move(setup)) {
  out_cap_.limit = setup_.stdout_limit;
  err_cap_.limit = setup_.stderr_limit;
}

ExitStatus Process::with_flags(ExitStatus st) const {
  st.stdout_truncated = out_cap_.truncated;
  st.stderr_truncated = err_cap_.truncated;
  return st;
}

Process::~Process() {
  if (started_ && !status_ && !abandoned_) (void)close(true);
  // After an exit read from the init (finish()), its teardown goes on without us.
  if (spawned_) Spawned::retire(std::move(*spawned_));
}

namespace {
// The master of a pty an init sent over sock: a pty multiplexer's fd (5:2)
// and nothing else the sandbox could have put there.
Result<Fd> receive_pty_master(int sock) {
  char name[16];
  int fd = -1;
  size_t nfds = 0;
  ssize_t n;
  do n = ::recv(sock, name, sizeof name, MSG_DONTWAIT | MSG_PEEK);
  while (n < 0 && errno == EINTR);
  if (n <= 0) return fail(internal("the sandbox's init sent no terminal"));
  n = recv_fds(sock, name, static_cast<size_t>(n), &fd, 1, &nfds);
  Fd master(nfds == 1 ? fd : -1);
  struct stat st {};
  if (n <= 0 || !master) return fail(internal("the sandbox's init sent no terminal"));
  if (::fstat(master.get(), &st) != 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) != 5 ||
      minor(st.st_rdev) != 2)
    return fail(internal("the sandbox's terminal is not a pty"));
  return master;
}
}  // namespace

Status Process::start() {
  std::lock_guard lk(state_mu_);
  if (started_) return fail(invalid("process already started"));
  if (closed_) return fail(invalid("process was closed"));
  Pipe in_pipe, out_pipe, err_pipe;
  Fd master, console, console_child;
  Stdio stdio;
  if (setup_.passed_stdio) {
    stdio = {setup_.passed_stdio->in.get(), setup_.passed_stdio->out.get(),
             setup_.passed_stdio->err.get()};
    const char* names[] = {"stdin", "stdout", "stderr"};
    const int fds[] = {stdio.in, stdio.out, stdio.err};
    for (int i = 0; i < 3; ++i)
      if (fds[i] >= 0)
        if (auto c = check_passed_stdio(fds[i], names[i]); !c) return fail(c.error());
  } else if (setup_.pty) {
    // The pty is the sandbox's (its devpts), opened by its init, which
    // sends the master here.
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      return fail(sys_error("socketpair for the terminal"));
    console = Fd(sv[0]);
    console_child = Fd(sv[1]);
    stdio.console = sv[1];
    stdio.rows = setup_.pty->rows;
    stdio.cols = setup_.pty->cols;
  } else {
    if (setup_.stdin_open) {
      auto p = make_pipe();
      if (!p) return fail(p.error());
      in_pipe = std::move(*p);
    }
    auto o = make_pipe();
    auto e = make_pipe();
    if (!o || !e) return fail(o ? e.error() : o.error());
    out_pipe = std::move(*o);
    err_pipe = std::move(*e);
    stdio = {in_pipe.read.get(), out_pipe.write.get(), err_pipe.write.get()};
  }

  started_at_ = std::chrono::steady_clock::now();
  joined_ = setup_.join.has_value();
  auto s = joined_ ? spawn_joined(*setup_.sandbox, setup_.command, stdio, std::move(*setup_.join))
                   : spawn(*setup_.sandbox, setup_.command, stdio, setup_.cgroups);
  // Used up: a joined process that failed to start cannot be started again.
  setup_.join.reset();
  if (!s) {
    if (setup_.on_start_failure) setup_.on_start_failure(s.error());
    // A process that never ran gives its limit slots back; it cannot be
    // started again without them.
    if (!setup_.slots.empty() || joined_) {
      setup_.slots.clear();
      closed_ = true;
    }
    return fail(s.error());
  }
  spawned_.emplace(std::move(*s));
  started_ = true;
  if (console) {
    // Sent before the payload's exec, which the spawn waited for.
    console_child.reset();
    auto m = receive_pty_master(console.get());
    if (!m) {
      (void)close(true);
      return fail(m.error());
    }
    master = std::move(*m);
  }
  if (joined_) {
    joined_exit_ = Fd(::fcntl(spawned_->pidfd(), F_DUPFD_CLOEXEC, 3));
    if (!joined_exit_) {
      (void)close(true);
      return fail(sys_error("dup pidfd"));
    }
  }
  setup_.passed_stdio.reset();  // the payload has its own copies
  if (master) {
    in_ = Fd(::fcntl(master.get(), F_DUPFD_CLOEXEC, 3));
    if (!in_) {
      (void)close(true);
      return fail(sys_error("dup pty master"));
    }
    out_ = std::move(master);
  } else {
    in_ = std::move(in_pipe.write);
    out_ = std::move(out_pipe.read);
    err_ = std::move(err_pipe.read);
  }

  if (setup_.timeout.count() > 0) {
    watch_ = std::make_shared<Watch>();
    watch_->pidfd = Fd(::fcntl(spawned_->pidfd(), F_DUPFD_CLOEXEC, 3));
    if (!watch_->pidfd) {
      (void)close(true);
      return fail(sys_error("dup pidfd"));
    }
    watch_->cgroup = spawned_->killer();
    if (spawned_->ends_by_cgroup()) watch_->then_init = kInitGrace;
    watch_->deadline = started_at_ + setup_.timeout;
    Watchdog::get().add(watch_);
  }
  return {};
}

Status Process::write_stdin(std::string_view data) {
  std::lock_guard lk(in_mu_);
  if (!started_) return fail(invalid("write_stdin before start"));
  if (closed_) return fail(invalid("write_stdin after close"));
  if (!setup_.stdin_open && !setup_.pty)
    return fail(invalid("stdin was not opened for this process"));
  if (!in_) return fail(invalid("write_stdin after stdin was closed"));
  if (data.empty() && setup_.pty) {
    // A terminal has no half-close: send its EOF character (VEOF, ^D).
    termios t{};
    char eof = ::tcgetattr(in_.get(), &t) == 0 ? static_cast<char>(t.c_cc[VEOF]) : '\x04';
    if (write_nosigpipe(in_.get(), &eof, 1) != 1) return fail(sys_error("write pty EOF"));
    return {};
  }
  if (data.empty()) {
    in_.reset();
    return {};
  }
  while (!data.empty()) {
    ssize_t n = write_nosigpipe(in_.get(), data.data(), data.size());
    if (n < 0) {
      if (errno == EPIPE)
        return fail(make_error(ErrorKind::Invalid, "stdin: the process no longer reads it", EPIPE));
      return fail(sys_error("write stdin"));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

int64_t output_tail_at_exit(int fd, bool pty) {
  int avail = 0;
  if (fd < 0) return 0;
  return (::ioctl(fd, FIONREAD, &avail) == 0 ? avail : 0) + (pty ? 4096 : 0);
}

bool output_readable_now(int fd) {
  pollfd p{fd, POLLIN, 0};
  return fd >= 0 && ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

Result<std::string> Process::read_fd(Fd& fd, std::mutex& mu, Cap& cap) {
  std::lock_guard lk(mu);
  if (!started_) return fail(invalid("read before start"));
  if (!fd) return std::string();
  if (cap.truncated) {
    // The kept part was returned by the previous call: the stream ends here
    // for the reader, and the drainer swallows the rest.
    Drainer::get().add(std::move(fd));
    return std::string();
  }
  // Not a zeroed string of the chunk's size: its pages would be written
  // (and faulted in) on every call, however little there is to read.
  std::unique_ptr<char[]> chunk(new char[kReadChunk]);
  // A joined process's streams may be held open by processes of the
  // sandbox that outlive it: they end with what the pipe holds at its exit.
  if (joined_exit_ && cap.tail < 0) {
    pollfd w[2] = {{fd.get(), POLLIN, 0}, {joined_exit_.get(), POLLIN, 0}};
    while (::poll(w, 2, -1) < 0 && errno == EINTR) {
    }
    if (w[1].revents) cap.tail = output_tail_at_exit(fd.get(), setup_.pty.has_value());
  }
  // After the exit, what is there now or nothing: never a wait on a writer
  // the sandbox keeps.
  if (cap.tail == 0 || (cap.tail > 0 && !output_readable_now(fd.get()))) {
    fd.reset();
    return std::string();
  }
  for (;;) {
    const size_t want =
        cap.tail > 0 ? std::min<size_t>(kReadChunk, static_cast<size_t>(cap.tail)) : kReadChunk;
    ssize_t n = ::read(fd.get(), chunk.get(), want);
    if (n < 0 && errno == EINTR) continue;
    // A pty master reads EIO once the last slave is closed: that is its EOF.
    if (n < 0 && errno == EIO && setup_.pty) n = 0;
    if (n < 0) return fail(sys_error("read output"));
    if (n == 0) fd.reset();
    if (cap.tail > 0) cap.tail -= n;
    std::string buf(chunk.get(), static_cast<size_t>(n));
    if (cap.limit > 0 && cap.seen + buf.size() > cap.limit) {
      // Past the cap: keep what fits; the next call ends the stream (so that
      // a caller polling the fd is told, as at any EOF, by a read).
      buf.resize(static_cast<size_t>(cap.limit - cap.seen));
      cap.truncated = true;
      if (buf.empty()) {
        Drainer::get().add(std::move(fd));
        return buf;
      }
    }
    cap.seen += buf.size();
    return buf;
  }
}

Result<std::string> Process::read(Stream stream) {
  return stream == Stream::Stdout ? read_fd(out_, out_mu_, out_cap_)
                                  : read_fd(err_, err_mu_, err_cap_);
}

Result<std::optional<Chunk>> Process::read() {
  if (!started_) return fail(invalid("read before start"));
  for (;;) {
    pollfd p[3] = {
        {out_.get(), POLLIN, 0}, {err_.get(), POLLIN, 0}, {joined_exit_.get(), POLLIN, 0}};
    if (p[0].fd < 0 && p[1].fd < 0) return std::optional<Chunk>();
    int n = ::poll(p, 3, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(sys_error("poll output"));
    }
    for (int i = 0; i < 2; ++i) {
      // A joined process's exit ends both streams (read_fd).
      if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR) || p[2].revents)) continue;
      Stream s = i == 0 ? Stream::Stdout : Stream::Stderr;
      auto data = read(s);
      if (!data) return fail(data.error());
      if (!data->empty()) return std::optional<Chunk>(Chunk{s, std::move(*data)});
      // EOF on this stream: poll the other one.
    }
  }
}

Status Process::resize(unsigned short rows, unsigned short cols) {
  std::lock_guard lk(in_mu_);
  if (!setup_.pty) return fail(invalid("resize: the process has no terminal"));
  if (!started_ || !out_) return fail(invalid("resize: the terminal is closed"));
  winsize ws{rows, cols, 0, 0};
  if (::ioctl(out_.get(), TIOCSWINSZ, &ws) != 0) return fail(sys_error("TIOCSWINSZ"));
  return {};
}

Result<Join> Process::join_point() const {
  std::lock_guard lk(state_mu_);
  if (!started_ || !spawned_) return fail(invalid("the process has not started"));
  if (status_ || abandoned_ || closed_) return fail(invalid("the process has exited"));
  if (joined_) return fail(invalid("the process was joined into another's sandbox: join that"));
  return spawned_->join_point();
}

bool Process::running() const {
  if (!started_ || status_) return false;
  pollfd p{spawned_->pidfd(), POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

pid_t Process::pid() const {
  return spawned_ ? spawned_->pid() : -1;
}
int Process::pidfd() const {
  return spawned_ ? spawned_->pidfd() : -1;
}
int Process::exit_fd() const {
  if (!spawned_) return -1;
  return spawned_->status_fd() >= 0 ? spawned_->status_fd() : spawned_->pidfd();
}

Result<ExitStatus> Process::finish() {
  if (status_) return with_flags(*status_);
  if (!spawned_->exited())
    if (auto r = spawned_->reap(); !r) return fail(r.error());
  int raw = spawned_->exit_status();
  // Nothing of the sandbox outlives the report, whatever its init said:
  // SIGKILL to its pid namespace and its cgroup (an init that is alone is
  // exiting anyway). A joined process's sandbox is another's, where what
  // it leaves stays; its init is a process of that sandbox's cgroup, where
  // even its zombie counts against pids_limit: reaped now (it owns no
  // namespace, so its exit is quick).
  if (!joined_)
    spawned_->end();
  else
    (void)spawned_->reap();
  disarm(watch_);
  disarm(escalate_);
  ExitStatus st;
  st.wall_time = std::chrono::duration_cast<std::chrono::microseconds>(
      std::chrono::steady_clock::now() - started_at_);
  if (WIFEXITED(raw))
    st.exit_code = WEXITSTATUS(raw);
  else if (WIFSIGNALED(raw))
    st.signal = WTERMSIG(raw);
  st.timed_out = watch_ && watch_->timed_out;
  if (auto u = spawned_->usage()) {
    st.cpu_time = std::chrono::microseconds(u->cpu_usec);
    st.peak_memory = u->memory_peak;
    st.oom_killed = u->oom_kills > 0 && st.signal == SIGKILL;
  }
  // Without a reap, the cgroup goes with the init, on the reaper's thread.
  if (spawned_->reaped())
    if (auto r = spawned_->release(); !r) return fail(r.error().wrap("remove cgroup"));
  status_ = st;
  // The executor's next sandbox can set itself up now.
  setup_.sandbox->refill(setup_.cgroups);
  // The process has ended: its places in the concurrency limits are free.
  setup_.slots.clear();
  return with_flags(st);
}

Result<Process::Now> Process::now() const {
  std::lock_guard lk(state_mu_);
  if (!started_) return fail(invalid("not started"));
  Now n;
  if (status_) {
    n.usage.cpu_usec = static_cast<uint64_t>(status_->cpu_time.count());
    n.usage.memory_peak = status_->peak_memory;
    n.usage.oom_kills = status_->oom_killed ? 1 : 0;
    return n;
  }
  auto u = spawned_->usage();
  if (!u) return fail(u.error());
  n.usage = *u;
  auto l = spawned_->live();
  if (!l) return fail(l.error());
  n.live = *l;
  auto p = spawned_->pids();
  if (!p) return fail(p.error());
  n.pids = std::move(*p);
  return n;
}

Result<ExitStatus> Process::wait_for(std::chrono::milliseconds timeout) {
  std::lock_guard lk(state_mu_);
  if (!started_) return fail(invalid("wait before start"));
  if (status_) return with_flags(*status_);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int ms = -1;
    if (timeout.count() >= 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      ms = static_cast<int>(std::max<int64_t>(0, left.count()));
    }
    // The init's word on its payload's exit comes before its own exit (and
    // the teardown of its namespaces); poll skips the fd once it is read.
    pollfd p[2] = {{spawned_->pidfd(), POLLIN, 0}, {spawned_->status_fd(), POLLIN, 0}};
    int n = ::poll(p, 2, ms);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(sys_error("poll pidfd"));
    if (n == 0) return fail(make_error(ErrorKind::Timeout, "process still running"));
    if (p[1].revents && !p[0].revents && !spawned_->read_exit()) continue;
    return finish();
  }
}

Result<ExitStatus> Process::wait() {
  return wait_for(std::chrono::milliseconds(-1));
}

Status Process::signal(int sig) {
  std::lock_guard lk(state_mu_);
  if (!started_) return fail(invalid("signal before start"));
  if (status_) return fail(invalid("signal after the process exited"));
  if (sig <= 0 || sig >= NSIG) return fail(invalid("bad signal number " + std::to_string(sig)));
  return spawned_->signal(sig);
}

// The watchdog neither holds nor uses w after this; its fds are closed.
void Process::disarm(const std::shared_ptr<Watch>& w) {
  if (!w) return;
  Watchdog::get().cancel(w);
  w->pidfd.reset();
  w->cgroup = {};
}

Status Process::kill_nowait() {
  std::lock_guard lk(state_mu_);
  if (!started_) return fail(invalid("kill before start"));
  if (status_) return {};
  spawned_->end();
  if (spawned_->ends_by_cgroup() && !escalate_) {
    // Its init, left to reap the tree, goes too should the tree not.
    auto w = std::make_shared<Watch>();
    w->pidfd = Fd(::fcntl(spawned_->pidfd(), F_DUPFD_CLOEXEC, 3));
    if (!w->pidfd) return fail(sys_error("dup pidfd"));
    w->timeout = false;
    w->deadline = std::chrono::steady_clock::now() + kInitGrace;
    escalate_ = w;
    Watchdog::get().add(std::move(w));
  }
  return {};
}

void Process::abandon() {
  std::lock_guard lk(state_mu_);
  if (!started_ || status_ || abandoned_ || !spawned_) return;
  disarm(watch_);
  disarm(escalate_);
  abandoned_ = true;
  Spawned::retire_killed(std::move(*spawned_));
  spawned_.reset();
  std::lock_guard lk2(in_mu_);
  closed_ = true;
  in_.reset();
}

Status Process::close(bool force) {
  {
    std::lock_guard lk(state_mu_);
    if (!started_ || status_ || abandoned_) {
      closed_ = true;
      setup_.slots.clear();
      in_.reset();
      return {};
    }
    if (!force) {
      if (auto s = spawned_->signal(SIGTERM); !s && s.error().code != ESRCH) return s;
    }
  }
  if (!force) {
    auto r = wait_for(grace_);
    if (r) {
      std::lock_guard lk(in_mu_);
      closed_ = true;
      in_.reset();
      return {};
    }
  }
  {
    std::lock_guard lk(state_mu_);
    if (!status_)
      if (auto k = spawned_->kill(); !k) return k;
  }
  auto r = wait();
  std::lock_guard lk(in_mu_);
  closed_ = true;
  in_.reset();
  if (!r) return fail(r.error());
  return {};
}

}  // namespace cloister
