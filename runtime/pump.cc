#include "runtime/pump.h"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <thread>

namespace cloister {

int exit_code_for(const Error& e) {
  if (!e.at_exec) return 125;
  return e.kind == ErrorKind::NotFound ? 127 : 126;
}

Result<ExitStatus> pump(Process& p, int in_fd, int out_fd, int err_fd,
                        const std::vector<int>& forward) {
  sigset_t set, old;
  sigemptyset(&set);
  for (int s : forward) sigaddset(&set, s);
  ::pthread_sigmask(SIG_BLOCK, &set, &old);
  Fd sfd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sfd) {
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return fail(sys_error("signalfd"));
  }

  // stdin is copied by a thread of its own: a blocking write to a payload
  // that does not read must not stop its output from being drained. It stops
  // at EOF, when the payload stops reading, or when told to through `stop`.
  auto stop = make_pipe();
  if (!stop) {
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return fail(stop.error());
  }
  std::thread feeder;
  if (in_fd >= 0 && p.stdin_fd() >= 0) {
    feeder = std::thread([&p, in_fd, stop_fd = stop->read.get()] {
      char buf[65536];
      for (;;) {
        pollfd fds[2] = {{in_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0 && errno == EINTR) continue;
        if (fds[1].revents) return;
        ssize_t n = ::read(in_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          (void)p.write_stdin({});
          return;
        }
        if (!p.write_stdin(std::string_view(buf, static_cast<size_t>(n)))) return;
      }
    });
  }

  Error failure;
  bool failed = false;
  bool open[2] = {p.stdout_fd() >= 0, p.stderr_fd() >= 0};
  while (open[0] || open[1]) {
    pollfd fds[3] = {{open[0] ? p.stdout_fd() : -1, POLLIN, 0},
                     {open[1] ? p.stderr_fd() : -1, POLLIN, 0},
                     {sfd.get(), POLLIN, 0}};
    if (::poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      failure = sys_error("poll");
      failed = true;
      break;
    }
    if (fds[2].revents & POLLIN) {
      signalfd_siginfo si;
      while (::read(sfd.get(), &si, sizeof si) == sizeof si)
        (void)p.signal(static_cast<int>(si.ssi_signo));
    }
    for (int i = 0; i < 2; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      auto data = p.read(i == 0 ? Stream::Stdout : Stream::Stderr);
      if (!data) {
        failure = data.error();
        failed = true;
        open[0] = open[1] = false;
        break;
      }
      if (data->empty()) {
        open[i] = false;
        continue;
      }
      // A closed terminal or pipe on our side must not stop the payload's
      // output from draining: keep reading, drop what cannot be written.
      (void)write_all(i == 0 ? out_fd : err_fd, *data);
    }
  }
  if (failed) (void)p.close(true);
  auto status = failed ? Result<ExitStatus>(fail(failure)) : p.wait();
  if (feeder.joinable()) {
    (void)write_all(stop->write.get(), "x");
    feeder.join();
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return status;
}

}  // namespace cloister
