#include "runtime/client.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace cloister {

using json = nlohmann::json;
using namespace std::chrono_literals;
namespace proto = protocol;

std::string default_socket_path() {
  const char* env = ::getenv("CLOISTER_SOCKET");
  return env && *env ? env : "/run/cloister/cloister.sock";
}

// ---------------------------------------------------------------------------
// Connection

Result<std::unique_ptr<Connection>> Connection::connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return fail(invalid("socket path too long: " + path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  auto c = std::make_unique<Connection>();
  c->fd_ = Fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!c->fd_) return fail(sys_error("socket"));
  if (::connect(c->fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return fail(sys_error("connect to cloisterd at " + path));
  auto h = c->call(proto::Hello{{proto::kVersion}, "libcloister"});
  if (!h) return fail(h.error().wrap("hello"));
  c->hello_ = *h;
  c->max_frame_ = h->value("max_frame", proto::kDefaultMaxFrame);
  c->dec_.set_max_frame(c->max_frame_);
  return c;
}

Result<uint64_t> Connection::send(json request, std::span<const int> fds) {
  const uint64_t id = next_id_++;
  request["id"] = id;
  std::string out;
  if (auto s = proto::encode(proto::FrameType::Control,
                             request.dump(-1, ' ', false, json::error_handler_t::replace), out,
                             max_frame_);
      !s)
    return fail(s.error());
  if (fds.size() > 8) return fail(invalid("at most 8 fds per frame"));
  size_t done = 0;
  while (done < out.size()) {
    // The fds go with the frame's first bytes.
    ssize_t n = send_fds(fd_.get(), out.data() + done, out.size() - done, fds.data(),
                         done == 0 ? fds.size() : 0);
    if (n < 0) return fail(sys_error("send to cloisterd"));
    done += static_cast<size_t>(n);
  }
  return id;
}

Status Connection::send_stdin(uint64_t session, std::string_view data) {
  const size_t room = max_frame_ - proto::kDataHeaderSize;
  while (!data.empty()) {
    std::string out;
    auto piece = data.substr(0, room);
    if (auto s = proto::encode_data(session, proto::StreamId::Stdin, 0, piece, out, max_frame_); !s)
      return s;
    if (auto s = write_all(fd_.get(), out); !s) return fail(s.error().wrap("send stdin"));
    data.remove_prefix(piece.size());
  }
  return {};
}

Result<std::optional<Connection::Message>> Connection::read_frame(
    std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto f = dec_.next_view();
    if (!f) return fail(f.error().wrap("from cloisterd"));
    if (*f) {
      Message m;
      if ((*f)->type == proto::FrameType::Control) {
        try {
          m.control = json::parse((*f)->body);
        } catch (const std::exception& e) {
          return fail(internal(std::string("cloisterd sent invalid JSON: ") + e.what()));
        }
      } else {
        auto d = proto::decode_data((*f)->body);
        if (!d) return fail(d.error());
        m.data = true;
        m.session = d->session;
        m.stream = d->stream;
        m.offset = d->offset;
        m.bytes = std::string(d->bytes);
      }
      return std::optional<Message>(std::move(m));
    }
    int ms = -1;
    if (timeout.count() >= 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      ms = static_cast<int>(std::max<int64_t>(0, left.count()));
    }
    pollfd p{fd_.get(), POLLIN, 0};
    int n = ::poll(&p, 1, ms);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(sys_error("poll cloisterd socket"));
    if (n == 0) return std::optional<Message>();
    char buf[65536];
    ssize_t r = ::read(fd_.get(), buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return fail(sys_error("read from cloisterd"));
    if (r == 0) return fail(make_error(ErrorKind::Internal, "cloisterd closed the connection"));
    dec_.feed(std::string_view(buf, static_cast<size_t>(r)));
  }
}

Result<Connection::Message> Connection::next(std::chrono::milliseconds timeout) {
  if (!queued_.empty()) {
    Message m = std::move(queued_.front());
    queued_.pop_front();
    return m;
  }
  auto m = read_frame(timeout);
  if (!m) return fail(m.error());
  if (!*m) return fail(make_error(ErrorKind::Timeout, "no message from cloisterd"));
  return std::move(**m);
}

Result<json> Connection::call(json request, std::span<const int> fds) {
  auto id = send(std::move(request), fds);
  if (!id) return fail(id.error());
  return reply(*id);
}

Result<json> Connection::reply(uint64_t id) {
  for (;;) {
    auto m = read_frame(std::chrono::milliseconds(-1));
    if (!m) return fail(m.error());
    if (!*m) continue;
    Message& msg = **m;
    if (!msg.data && msg.control.contains("ok")) {
      const json& rid = msg.control["id"];
      if (rid.is_number_unsigned() && rid.get<uint64_t>() == id) {
        if (msg.control.value("ok", false)) return msg.control;
        return fail(error_from_json(msg.control.value("error", json::object())));
      }
      if (rid.is_null() && !msg.control.value("ok", true))  // the service refused the frame
        return fail(error_from_json(msg.control.value("error", json::object())));
    }
    queued_.push_back(std::move(msg));
  }
}

// ---------------------------------------------------------------------------
// RemoteExecutor / RemoteProcess

Result<std::shared_ptr<RemoteExecutor>> RemoteExecutor::connect(const std::string& socket,
                                                                const std::string& executor) {
  auto c = Connection::connect(socket);
  if (!c) return fail(c.error());
  auto list = (*c)->call(proto::ListExecutors{});
  if (!list) return fail(list.error());
  for (auto& e : (*list)["executors"])
    if (e.value("name", "") == executor) {
      if (!e.value("available", false)) return fail(error_from_json(e["error"]));
      auto r = std::make_shared<RemoteExecutor>();
      r->socket_ = socket;
      r->executor_ = executor;
      return r;
    }
  return fail(
      make_error(ErrorKind::NotFound, "cloisterd has no executor named '" + executor + "'"));
}

namespace {
Status check_request(const ExecRequest& request) {
  if (!request.argv.empty() && !request.command.empty())
    return fail(invalid("give either argv or a command string, not both"));
  if (request.argv.empty() && request.command.empty()) return fail(invalid("empty command"));
  if (request.timeout.count() < 0) return fail(invalid("timeout is negative"));
  if (request.passed_stdio && request.pty)
    return fail(invalid("give either passed stdio or a pty"));
  if (request.join) return fail(invalid("join is the library's: exec_in_session names a session"));
  return {};
}
}  // namespace

Result<std::unique_ptr<RemoteProcess>> RemoteExecutor::exec(ExecRequest request) const {
  if (auto st = check_request(request); !st) return fail(st.error());
  return std::make_unique<RemoteProcess>(socket_, executor_, std::move(request));
}

Result<std::unique_ptr<RemoteProcess>> exec_in_session(const std::string& socket, json session,
                                                       ExecRequest request) {
  if (!session.is_number_unsigned() && !session.is_string())
    return fail(invalid("a session is named by its id or its name"));
  if (auto st = check_request(request); !st) return fail(st.error());
  return std::make_unique<RemoteProcess>(socket, "", std::move(request), std::move(session));
}

RemoteProcess::RemoteProcess(std::string socket, std::string executor, ExecRequest request,
                             json into)
    : socket_(std::move(socket)),
      executor_(std::move(executor)),
      request_(std::move(request)),
      into_(std::move(into)) {}

RemoteProcess::~RemoteProcess() {
  if (started() && conn_ && !detached_) {
    if (!status_) (void)conn_->call(proto::Signal{session_, SIGKILL});
    (void)conn_->call(proto::Remove{session_, true});
  }
}

Status RemoteProcess::start() {
  if (started()) return fail(invalid("process already started"));
  auto c = Connection::connect(socket_);
  if (!c) return fail(c.error());
  conn_ = std::move(*c);
  proto::Launch req;
  if (into_.is_null()) {
    req.executor = executor_;
  } else {
    req.kind = proto::Launch::Kind::Exec;
    req.session = into_.is_string() ? proto::SessionRef(into_.get<std::string>())
                                    : proto::SessionRef(into_.get<uint64_t>());
  }
  req.stdin_open = request_.stdin_open;
  req.argv = request_.argv;
  req.command = request_.command;
  req.env = request_.env;
  req.work_dir = request_.work_dir;
  req.timeout_ms = static_cast<uint64_t>(std::max<int64_t>(0, request_.timeout.count()));
  if (request_.pty) req.pty = proto::PtySize{request_.pty->rows, request_.pty->cols};
  std::vector<int> fds;
  if (request_.passed_stdio) {
    req.stdio = proto::Launch::Stdio::Passed;
    auto& p = *request_.passed_stdio;
    for (const Fd* f : {&p.in, &p.out, &p.err}) fds.push_back(f->get() >= 0 ? f->get() : -1);
    // /dev/null stands in for an absent fd: SCM_RIGHTS cannot carry -1.
    static Fd devnull = [] {
      auto f = open_fd("/dev/null", O_RDWR);
      return f ? std::move(*f) : Fd();
    }();
    for (int& f : fds)
      if (f < 0) f = devnull.get();
    eof_[0] = eof_[1] = true;  // no output comes through the socket
  }
  auto r = conn_->call(req, fds);
  if (!r) return fail(r.error());
  auto sid = r->find("session");
  if (sid == r->end() || !sid->is_number_unsigned())
    return fail(internal("cloisterd's reply to " + std::string(req.op()) + " has no session"));
  session_ = sid->get<uint64_t>();
  pid_ = r->value("pid", -1);
  request_.passed_stdio.reset();
  if (request_.pty) eof_[1] = true;  // a terminal merges stderr into stdout
  return {};
}

Status RemoteProcess::take(Connection::Message m) {
  if (m.data) {
    if (m.session != session_) return {};
    Stream s = m.stream == proto::StreamId::Stderr ? Stream::Stderr : Stream::Stdout;
    if (!m.bytes.empty()) chunks_.push_back(Chunk{s, std::move(m.bytes)});
    return {};
  }
  if (!m.control.contains("event")) return {};  // a reply to a request not waited for
  auto ev = proto::parse_event(m.control);
  if (!ev) return fail(ev.error().wrap("an event from cloisterd"));
  if (!*ev) return {};  // a kind this client does not know
  const proto::Event& e = **ev;
  if (proto::session_of(e) != session_ && !std::holds_alternative<proto::ShutdownEvent>(e))
    return {};
  if (const auto* x = std::get_if<proto::EofEvent>(&e)) {
    eof_[x->stream == proto::StreamId::Stderr ? 1 : 0] = true;
  } else if (const auto* x = std::get_if<proto::EvictedEvent>(&e)) {
    evicted_ += x->to - x->from;
  } else if (const auto* x = std::get_if<proto::ExitEvent>(&e)) {
    eof_[0] = eof_[1] = true;
    if (x->error) return fail(*x->error);
    status_ = x->status;
  } else if (std::holds_alternative<proto::RemovedEvent>(e) ||
             std::holds_alternative<proto::ShutdownEvent>(e)) {
    eof_[0] = eof_[1] = true;
    if (!status_) return fail(internal("the session was removed by the service"));
  } else if (const auto* x = std::get_if<proto::ErrorEvent>(&e)) {
    return fail(x->error);
  }
  return {};
}

Status RemoteProcess::call_ok(const json& request) {
  auto r = conn_->call(request);
  if (!r) return fail(r.error());
  return {};
}

Result<bool> RemoteProcess::pump_one(std::chrono::milliseconds timeout) {
  auto m = conn_->next(timeout);
  if (!m) {
    if (m.error().kind == ErrorKind::Timeout) return false;
    return fail(m.error());
  }
  if (auto s = take(std::move(*m)); !s) return fail(s.error());
  return true;
}

Result<std::optional<Chunk>> RemoteProcess::read() {
  if (!started()) return fail(invalid("read before start"));
  for (;;) {
    if (!chunks_.empty()) {
      Chunk c = std::move(chunks_.front());
      chunks_.pop_front();
      return std::optional<Chunk>(std::move(c));
    }
    if (eof_[0] && eof_[1]) return std::optional<Chunk>();
    if (auto r = pump_one(-1ms); !r) return fail(r.error());
  }
}

Result<std::string> RemoteProcess::read(Stream stream) {
  if (!started()) return fail(invalid("read before start"));
  const int i = stream == Stream::Stdout ? 0 : 1;
  for (;;) {
    for (auto it = chunks_.begin(); it != chunks_.end(); ++it)
      if (it->stream == stream) {
        std::string d = std::move(it->data);
        chunks_.erase(it);
        return d;
      }
    if (eof_[i]) return std::string();
    if (auto r = pump_one(-1ms); !r) return fail(r.error());
  }
}

Status RemoteProcess::write_stdin(std::string_view data) {
  if (!started()) return fail(invalid("write_stdin before start"));
  if (!request_.stdin_open && !request_.pty)
    return fail(invalid("stdin was not opened for this process"));
  if (data.empty()) {
    return call_ok(proto::to_json(proto::CloseStdin{session_}));
  }
  return conn_->send_stdin(session_, data);
}

Result<ExitStatus> RemoteProcess::wait_for(std::chrono::milliseconds timeout) {
  if (!started()) return fail(invalid("wait before start"));
  auto deadline = std::chrono::steady_clock::now() + timeout;
  // With passed stdio nothing is streamed: ask for the status instead.
  if (!status_ && eof_[0] && eof_[1] && !detached_) {
    proto::Wait req{session_};
    if (timeout.count() >= 0)
      req.timeout_ms = static_cast<uint64_t>(std::max<int64_t>(1, timeout.count()));
    auto r = conn_->call(req);
    if (!r) return fail(r.error());
    status_ = status_from_json((*r)["status"]);
    return *status_;
  }
  // Output that arrives meanwhile is kept for read().
  while (!status_) {
    auto left = timeout.count() < 0 ? -1ms
                                    : std::chrono::duration_cast<std::chrono::milliseconds>(
                                          deadline - std::chrono::steady_clock::now());
    if (timeout.count() >= 0 && left.count() <= 0)
      return fail(make_error(ErrorKind::Timeout, "process still running"));
    auto r = pump_one(left);
    if (!r) return fail(r.error());
  }
  return *status_;
}

Result<ExitStatus> RemoteProcess::wait() {
  return wait_for(-1ms);
}

Status RemoteProcess::signal(int sig) {
  if (!started()) return fail(invalid("signal before start"));
  if (status_) return fail(invalid("signal after the process exited"));
  return call_ok(proto::to_json(proto::Signal{session_, sig}));
}

Status RemoteProcess::resize(unsigned short rows, unsigned short cols) {
  if (!started()) return fail(invalid("resize before start"));
  return call_ok(proto::to_json(proto::Resize{session_, rows, cols}));
}

Status RemoteProcess::close(bool force) {
  if (!started() || status_) return {};
  if (!force) {
    (void)signal(SIGTERM);
    if (wait_for(grace_)) return {};
  }
  if (!status_) (void)conn_->call(proto::Signal{session_, SIGKILL});
  auto r = wait();
  if (!r) return fail(r.error());
  return {};
}

Status RemoteProcess::detach() {
  if (!started()) return fail(invalid("detach before start"));
  if (auto r = call_ok(proto::to_json(proto::Detach{session_})); !r) return r;
  detached_ = true;
  return {};
}

}  // namespace cloister
