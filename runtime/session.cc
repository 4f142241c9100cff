#include "runtime/session.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

namespace cloister {
namespace {
constexpr size_t kPullChunk = 64 * 1024;

void set_nonblock(int fd) {
  if (fd >= 0) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}
}  // namespace

Session::Session(SessionSpec spec, std::unique_ptr<Process> process)
    : spec_(std::move(spec)),
      process_(std::move(process)),
      out_{RingBuffer(spec_.buffer_size), RingBuffer(spec_.buffer_size)} {
  started_wall = std::chrono::system_clock::now();
  for (int i = 0; i < 2; ++i) {
    set_nonblock(output_fd(i));
    eof_[i] = output_fd(i) < 0;
  }
  set_nonblock(process_->stdin_fd());
  stdin_ok_ = process_->stdin_fd() >= 0;
}

Session::~Session() {
  if (process_ && process_->started()) (void)process_->close(true);
}

int Session::output_fd(int i) const {
  return i == 0 ? process_->stdout_fd() : process_->stderr_fd();
}

void Session::end_output_at_exit() {
  for (int i = 0; i < 2; ++i) {
    if (eof_[i]) continue;
    tail_[i] = output_tail_at_exit(output_fd(i), spec_.pty);
    // (Nothing there now: no event would come to end it; pull ends the
    // stream once nothing is.)
    if (tail_[i] == 0 || !output_readable_now(output_fd(i))) eof_[i] = true;
  }
}

size_t Session::pull(int i, size_t max) {
  if (eof_[i] || max == 0) return 0;
  char buf[kPullChunk];
  if (tail_[i] >= 0) max = std::min(max, static_cast<size_t>(tail_[i]));
  ssize_t n = ::read(output_fd(i), buf, std::min(max, sizeof buf));
  // After an exec's exit nothing more is waited for.
  if (n < 0 && errno == EAGAIN && tail_[i] >= 0) n = 0;
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
  if (n <= 0) {  // EOF, or EIO from a pty master whose slave is gone
    eof_[i] = true;
    return 0;
  }
  if (tail_[i] >= 0) {
    tail_[i] -= std::min<int64_t>(n, tail_[i]);
    if (tail_[i] == 0 || !output_readable_now(output_fd(i))) eof_[i] = true;
  }
  std::string_view data(buf, static_cast<size_t>(n));
  if (spec_.max_output > 0) {
    uint64_t room = out_[i].end() >= spec_.max_output ? 0 : spec_.max_output - out_[i].end();
    if (data.size() > room) {
      discarded_[i] += data.size() - room;
      data = data.substr(0, room);
    }
  }
  out_[i].append(data);
  // The log is best effort: a full disk must not stop the session.
  if (spec_.log && !data.empty()) (void)write_all(spec_.log.get(), data);
  return static_cast<size_t>(n);
}

Status Session::queue_stdin(std::string_view data) {
  if (!stdin_open())
    return fail(invalid("stdin of session " + std::to_string(id()) + " is closed"));
  stdin_.append(data);
  return {};
}

void Session::close_stdin() {
  if (!stdin_ok_) return;
  stdin_close_pending_ = true;
  if (stdin_.empty()) {
    (void)process_->write_stdin({});
    stdin_ok_ = false;
  }
}

bool Session::flush_stdin() {
  while (!stdin_.empty() && process_->stdin_fd() >= 0) {
    ssize_t n = write_nosigpipe(process_->stdin_fd(), stdin_.data(), stdin_.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return false;
    if (n < 0) {  // EPIPE: the payload no longer reads; drop what is queued
      stdin_.clear();
      stdin_ok_ = false;
      break;
    }
    stdin_.erase(0, static_cast<size_t>(n));
    stdin_consumed_ += static_cast<uint64_t>(n);
  }
  if (stdin_.empty() && stdin_close_pending_ && stdin_ok_) {
    (void)process_->write_stdin({});
    stdin_ok_ = false;
  }
  return true;
}

void Session::reap() {
  if (exited()) return;
  auto st = process_->wait();
  if (st)
    status_ = *st;
  else
    reap_error_ = st.error();
  finished_at = std::chrono::steady_clock::now();
}

bool Session::try_reap() {
  if (exited()) return true;
  auto st = process_->wait_for(std::chrono::milliseconds(0));
  if (!st && st.error().kind == ErrorKind::Timeout) return false;  // still running
  if (st)
    status_ = *st;
  else
    reap_error_ = st.error();
  finished_at = std::chrono::steady_clock::now();
  return true;
}

}  // namespace cloister
