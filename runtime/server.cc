#include "runtime/server.h"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <variant>

#include "isolate/capabilities.h"
#include "isolate/init_program.h"
#include "isolate/rlimits.h"
#include "isolate/signals.h"
#include "oci/events.h"
#include "oci/store.h"
#include "policy/caller.h"
#include "runtime/copy.h"
#include "runtime/executor.h"
#include "runtime/messages.h"
#include "runtime/protocol.h"
#include "runtime/session.h"
#include "runtime/top.h"

namespace cloister {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
namespace proto = protocol;

namespace {

constexpr size_t kHighWater = 256 * 1024;  // queued output per connection
constexpr size_t kDataChunk = 64 * 1024;   // bytes per data frame
constexpr size_t kStdinHighWater = 1 << 20;
// Stdin acknowledgements: one per this much consumed, and one whenever the
// queue runs empty (docs/protocol.md, "Stdin").
constexpr uint64_t kStdinAckEvery = 256 * 1024;
constexpr size_t kMaxFdsQueued = 16;
constexpr const char* kServerName = "cloisterd 0.1.0";

// epoll tags: kind in the top byte, an id below.
enum Kind : uint64_t {
  kListen = 1,
  kSignal,
  kConn,
  kOut,
  kErr,
  kPid,
  kStdin,
  kTop,
  kExecDone,
  kImages
};
uint64_t tag(Kind k, uint64_t id) {
  return (static_cast<uint64_t>(k) << 56) | id;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Root, or the socket's group among the peer's groups as the kernel gave
// them at connect() (SO_PEERGROUPS): what the socket file's own mode was
// checked against, never a passwd/group lookup, which could block the event
// loop (LDAP) and answer for a process that has dropped the group.
bool caller_allowed(const policy::Caller& c, gid_t want) {
  if (c.uid == 0 || c.gid == want) return true;
  return std::find(c.groups.begin(), c.groups.end(), want) != c.groups.end();
}

// What one `top` reply lists at most: with 4 KiB per command line it stays
// well inside the default max_frame even when every byte is escaped.
constexpr size_t kTopMax = 1024;
// How long the command lines of one `top` may take to read (runtime/top.h):
// a payload that stalls the reader gets its processes listed without them.
constexpr auto kTopArgvDeadline = std::chrono::milliseconds(500);
// Command-line readers alive at once, server-wide, and per session: past
// either, `top` lists processes by their kernel names. A reader the payload
// stalled lives until the session ends (runtime/top.h): a session with one
// gets no more, and one has two reading at most.
constexpr size_t kTopReadersMax = 32;
// `exec` starts under way at once (each on a thread of its own, bounded by
// kJoinStartDeadline): per caller uid, and in the service.
constexpr size_t kExecStartsPerUid = 4;
constexpr size_t kExecStartsMax = 16;
// `cp`s under way, of one caller (uid) and in all.
constexpr size_t kCopiesPerUid = 4;
constexpr size_t kCopiesMax = 16;
// And per caller (uid): one tenant's stalled sessions never take them all.
constexpr size_t kTopReadersPerUid = 8;
// Bytes queued for a connection past which an event is not added but the
// subscriber dropped (docs/protocol.md, `events`).
constexpr size_t kEventBacklog = 4 << 20;

// The sandbox a session runs in, as its executor's config was lowered and
// validated (isolate/spec.h), and its command: what `inspect` shows.
// A volume's host path is the administrator's to know: shown to root only.
json sandbox_json(const SpawnSpec& sp, bool host_paths) {
  json volumes = json::array(), tmpfs = json::array(), caps = json::array();
  for (const auto& v : sp.volumes) {
    volumes.push_back({{"target", v.target}, {"read_only", v.read_only}});
    if (host_paths) volumes.back()["source"] = v.source;
  }
  for (const auto& t : sp.tmpfs) tmpfs.push_back({{"target", t.target}, {"options", t.options}});
  for (int cap = 0; cap < 64; ++cap)
    if (sp.capabilities & (uint64_t{1} << cap)) caps.push_back(capabilities::name(cap));
  json rl = json::object();
  const auto lim = [](rlim_t v) { return v == RLIM_INFINITY ? json("unlimited") : json(v); };
  for (const auto& r : sp.rlimits) rl[rlimits::name(r.resource)] = {lim(r.soft), lim(r.hard)};
  json sysctls = json::object();
  for (const auto& x : sp.sysctls) sysctls[x.key] = x.value;
  json userns = nullptr;
  if (sp.userns_pool)
    userns = "a range of its own per sandbox";
  else if (sp.userns)
    userns = {{"uid_base", sp.userns->uid_base},
              {"gid_base", sp.userns->gid_base},
              {"size", sp.userns->ids()}};
  const auto& l = sp.limits;
  return {{"hostname", sp.hostname},
          {"network", sp.network == NetworkMode::Host ? "host" : "none"},
          {"root",
           sp.image_root ? json({{"image_layers", sp.image_root->layers.size()}}) : json("host")},
          {"read_only_rootfs", sp.read_only_rootfs},
          {"volumes", volumes},
          {"tmpfs", tmpfs},
          {"masked_paths", sp.masked_paths},
          {"read_only_paths", sp.read_only_paths},
          {"user", {{"uid", sp.user.uid}, {"gid", sp.user.gid}, {"groups", sp.user.groups}}},
          {"userns", userns},
          {"no_new_privileges", sp.no_new_privileges},
          {"capabilities", caps},
          {"seccomp", sp.seccomp_profile.empty() ? "default" : sp.seccomp_profile},
          {"rlimits", rl},
          {"sysctls", sysctls},
          {"limits",
           {{"memory_max", l.memory_max},
            {"memory_high", l.memory_high},
            {"cpu_quota", l.cpu_quota},
            {"cpu_period", l.cpu_period},
            {"pids_max", l.pids_max},
            {"cpu_weight", l.cpu_weight},
            {"io_weight", l.io_weight},
            {"cpuset_cpus", l.cpuset_cpus}}}};
}

// Session names as docker takes them; not all digits, so that a name never
// reads as an id.
Status check_name(const std::string& n) {
  static const std::regex kName("[A-Za-z0-9][A-Za-z0-9_.-]{0,127}");
  if (n.size() > 128)
    return fail(invalid("name of " + std::to_string(n.size()) + " bytes: at most 128"));
  if (!std::regex_match(n, kName))
    return fail(
        invalid("name '" + n + "': 1 to 128 of [A-Za-z0-9_.-], starting with a letter or digit"));
  if (n.find_first_not_of("0123456789") == std::string::npos)
    return fail(invalid("name '" + n + "' is all digits, which reads as a session id"));
  return {};
}

// A request field, checked: INVALID names the field.
}  // namespace

// ---------------------------------------------------------------------------

struct Attachment {
  uint64_t session = 0;
  uint64_t next[2] = {0, 0};
  bool eof_sent[2] = {false, false};
  bool exit_sent = false;
  bool follow = true;  // false: replay what is buffered, then "end"
};

struct Pending {  // a wait or run answered when the session finishes
  json id;
  uint64_t session = 0;
  bool run = false;
  size_t tail = 0;
  std::optional<std::regex> grep;
  uint64_t max_output = 0;
  std::optional<Clock::time_point> deadline;  // wait's timeout
};

struct Conn {
  uint64_t id = 0;
  Fd fd;
  ucred cred{};
  policy::Caller caller;  // SO_PEERCRED and SO_PEERGROUPS, for the policy
  bool allowed = false;
  bool hello = false;
  bool events = false;        // subscribed with the `events` op
  bool image_events = false;  // and granted image.events: the store's events too
  bool closing = false;       // close once the output is flushed
  bool want_out = false;
  bool reading = true;
  proto::Decoder dec;
  std::string out;
  size_t out_pos = 0;
  std::deque<Fd> fds;  // received with SCM_RIGHTS, not yet claimed
  std::map<uint64_t, Attachment> attached;
  std::vector<Pending> pending;
  std::set<uint64_t> owns;  // sessions this client started attached
  Clock::time_point created, last_frame;
  size_t queued() const { return out.size() - out_pos; }
};

struct SessionEntry {
  std::unique_ptr<Session> s;
  std::set<uint64_t> conns;  // attached connections
  bool paused[2] = {false, false};
  bool registered[2] = {false, false};
  bool stdin_registered = false;
  std::set<uint64_t> stdin_waiters;  // connections paused on a full stdin queue
  std::set<uint64_t> stdin_senders;  // connections that sent stdin: they get its acks
  uint64_t stdin_acked = 0;          // the consumed offset last acknowledged
  // Its places in the service's limits (max_sessions and the rest): held
  // while its payload runs, so an exited session no longer counts.
  std::vector<policy::Slot> slots;
  bool finished_handled = false;
  bool run_session = false;  // made by op run: removed once answered
  int exit_fd = -1;          // registered for kPid: Process::exit_fd()
};

// A `top` reply waiting for its command lines (runtime/top.h). Once the
// reply is sent, a reader that had to be killed stays until it is reaped.
struct TopJob {
  uint64_t conn = 0, session = 0;
  uid_t uid = 0;  // the caller's
  json id, reply;
  std::vector<top::Process> procs;
  top::ArgvReader reader;
  Clock::time_point deadline;
  bool replied = false;
};

struct Server::Impl {
  struct Prepared;
  struct ExecStart;
  struct Copy;
  Config config;
  ServiceConfig sc;
  Fd listener, epoll, sigfd;
  std::string unlink_path;
  std::function<void(const std::string&)> log = [](const std::string&) {};
  std::function<void()> ready = [] {};
  std::map<std::string, Result<std::shared_ptr<Executor>>> executors;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns;
  std::map<uint64_t, SessionEntry> sessions;
  // Names are each caller's own (by uid): a name never leads one caller to
  // a session someone else started, whatever was removed and renamed since.
  std::map<std::pair<uid_t, std::string>, uint64_t> names;
  uint64_t next_conn = 1, next_session = 1, next_top = 1;
  std::map<uint64_t, TopJob> top_jobs;
  std::map<uint64_t, std::unique_ptr<ExecStart>> exec_starts;
  uint64_t next_exec = 1;
  Fd exec_done;  // eventfd (kExecDone): an exec start's or a copy's thread is done
  // The image store's event log (kImages), followed from the service's
  // start; absent where the store cannot be opened (said in the log).
  std::optional<oci::StoreEventFollower> store_events;
  std::map<uint64_t, std::shared_ptr<Copy>> copies;
  uint64_t next_copy = 1;
  std::vector<uint64_t> resumed;  // connections to handle buffered frames of
  // The service's session limits, as the policy's counters (policy/limits.h)
  // keyed "sessions", "executor:NAME" and "uid:N": a session takes its
  // places when it is prepared (an exec still starting counts) and gives
  // them back when its payload has exited.
  std::shared_ptr<policy::Counters> limits = policy::Counters::make();
  bool stopping = false;
  Clock::time_point stop_deadline, last_tick;

  // --- epoll helpers
  void ep(int op, int fd, uint32_t events, uint64_t t) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = t;
    ::epoll_ctl(epoll.get(), op, fd, &ev);
  }
  void ep_del(int fd) { ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, fd, nullptr); }

  // --- output to a connection
  void send_json(Conn& c, const json& j) {
    std::string body = dump(j);
    if (!proto::encode(proto::FrameType::Control, body, c.out, sc.max_frame)) {
      json e = {{"event", "error"},
                {"error", proto::to_json(make_error(ErrorKind::Internal, "reply too large"))}};
      if (j.contains("id")) e = {{"id", j["id"]}, {"ok", false}, {"error", e["error"]}};
      (void)proto::encode(proto::FrameType::Control, dump(e), c.out, sc.max_frame);
    }
  }
  void reply_ok(Conn& c, const json& id, json body = json::object()) {
    body["id"] = id;
    body["ok"] = true;
    send_json(c, body);
  }
  void reply_err(Conn& c, const json& id, const Error& e) {
    send_json(c, json{{"id", id}, {"ok", false}, {"error", proto::to_json(e)}});
  }
  void flush(Conn& c) {
    while (c.queued() > 0) {
      ssize_t n = ::send(c.fd.get(), c.out.data() + c.out_pos, c.queued(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      if (n < 0) {  // the peer is gone
        c.out.clear();
        c.out_pos = 0;
        c.closing = true;
        return;
      }
      c.out_pos += static_cast<size_t>(n);
    }
    if (c.out_pos == c.out.size()) {
      c.out.clear();
      c.out_pos = 0;
    } else if (c.out_pos > (1 << 20)) {
      c.out.erase(0, c.out_pos);
      c.out_pos = 0;
    }
    // Writable is news while something is queued, and while an attachment
    // has output fill() has not queued yet: a flush outside pump() (an
    // acknowledgement, a reply, the timer's) that empties the queue must
    // not leave that output waiting for an event that never comes (the
    // stdin flood's stall, issue 14 finding 1).
    bool want = c.queued() > 0 || fill_pending(c);
    if (want != c.want_out) {
      c.want_out = want;
      update_conn_events(c);
    }
  }
  bool fill_pending(const Conn& c) const {
    if (c.closing) return false;
    for (const auto& [sid, a] : c.attached) {
      auto se = sessions.find(sid);
      if (se == sessions.end()) return true;  // fill() drops it
      const Session& s = *se->second.s;
      for (int i = 0; i < 2; ++i)
        if (a.next[i] < s.buffer(i).end() || (s.output_eof(i) && !a.eof_sent[i])) return true;
      if (!a.exit_sent && s.finished()) return true;
    }
    return false;
  }
  void update_conn_events(Conn& c) {
    uint32_t ev =
        (c.reading ? uint32_t{EPOLLIN} : 0u) | (c.want_out ? uint32_t{EPOLLOUT} : 0u) | EPOLLRDHUP;
    ep(EPOLL_CTL_MOD, c.fd.get(), ev, tag(kConn, c.id));
  }

  // --- attachments: pull session output into connection queues
  //
  // fill() queues output up to the high-water mark and says whether more is
  // waiting; pump() alternates fill and flush until the socket is full (the
  // queue stays non-empty, EPOLLOUT brings us back) or nothing is left.
  void pump(Conn& c) {
    for (int round = 0; round < 16; ++round) {
      bool more = fill(c);
      flush(c);
      if (!more || c.closing) return;
      if (c.queued() > 0) return;  // EPOLLOUT is armed
    }
    // Still more after many rounds: come back when writable, fairly.
    if (!c.want_out) {
      c.want_out = true;
      update_conn_events(c);
    }
  }
  bool fill(Conn& c) {
    bool more = false;
    for (auto it = c.attached.begin(); it != c.attached.end();) {
      auto& a = it->second;
      auto se = sessions.find(a.session);
      if (se == sessions.end()) {
        it = c.attached.erase(it);
        continue;
      }
      Session& s = *se->second.s;
      for (int i = 0; i < 2 && c.queued() < kHighWater; ++i) {
        RingBuffer& rb = s.buffer(i);
        if (a.next[i] < rb.start()) {
          send_json(c, proto::to_json(proto::EvictedEvent{
                           a.session, static_cast<proto::StreamId>(i + 1), a.next[i], rb.start()}));
          a.next[i] = rb.start();
        }
        while (a.next[i] < rb.end() && c.queued() < kHighWater) {
          const std::string_view chunk = rb.peek(a.next[i], kDataChunk);
          (void)proto::encode_data(a.session, static_cast<proto::StreamId>(i + 1), a.next[i], chunk,
                                   c.out, sc.max_frame);
          a.next[i] += chunk.size();
        }
        if (a.next[i] == rb.end() && s.output_eof(i) && !a.eof_sent[i]) {
          a.eof_sent[i] = true;
          // Offsets count every byte the stream produced: those past
          // max_output too, which were read and dropped (issue 14, finding 5).
          send_json(c,
                    proto::to_json(proto::EofEvent{a.session, static_cast<proto::StreamId>(i + 1),
                                                   rb.end() + s.discarded(i), s.discarded(i)}));
        }
      }
      resume_if_caught_up(se->second);
      bool done = false;
      if (a.eof_sent[0] && a.eof_sent[1] && s.finished() && !a.exit_sent) {
        a.exit_sent = true;
        send_json(c, proto::to_json(proto::ExitEvent{a.session, s.status(), s.reap_error()}));
        done = true;
      } else if (!a.follow && c.queued() < kHighWater && a.next[0] == s.buffer(0).end() &&
                 a.next[1] == s.buffer(1).end()) {
        send_json(c,
                  proto::to_json(proto::EndEvent{a.session, s.buffer(0).end(), s.buffer(1).end()}));
        done = true;
      }
      if (done) {
        se->second.conns.erase(c.id);
        it = c.attached.erase(it);
      } else {
        more |= c.queued() >= kHighWater;
        ++it;
      }
    }
    return more;
  }
  void pump_session(SessionEntry& e) {
    for (uint64_t cid : std::vector<uint64_t>(e.conns.begin(), e.conns.end())) {
      auto it = conns.find(cid);
      if (it != conns.end()) pump(*it->second);
    }
  }

  // Backpressure: how many bytes of stream i may be read now without
  // evicting bytes an attached reader has not had yet (0 = pause).
  size_t room(SessionEntry& e, int i) {
    const RingBuffer& rb = e.s->buffer(i);
    size_t r = kDataChunk;
    for (uint64_t cid : e.conns) {
      auto it = conns.find(cid);
      if (it == conns.end()) continue;
      auto a = it->second->attached.find(e.s->id());
      if (a == it->second->attached.end()) continue;
      uint64_t unsent = rb.end() - std::max(a->second.next[i], rb.start());
      r = std::min<uint64_t>(r, rb.capacity() - unsent);
    }
    return r;
  }
  bool must_pause(SessionEntry& e, int i) { return room(e, i) == 0; }
  void resume_if_caught_up(SessionEntry& e) {
    for (int i = 0; i < 2; ++i) {
      if (!e.paused[i] || must_pause(e, i)) continue;
      e.paused[i] = false;
      ep(EPOLL_CTL_MOD, e.s->output_fd(i), EPOLLIN, tag(i == 0 ? kOut : kErr, e.s->id()));
    }
  }

  // --- events: to every subscribed connection that may see the session,
  // in the order they happen (docs/protocol.md, `events`).
  void publish(SessionEntry& e, const char* action) {
    const Session& s = *e.s;
    proto::SessionEvent m;
    m.action = action;
    m.session = s.id();
    m.executor = s.spec().executor;
    m.owner_uid = s.spec().owner;
    m.time = oci::iso_utc(std::chrono::system_clock::now());
    m.name = s.spec().name;
    m.run = e.run_session;
    if (std::string_view(action) == "exited") m.status = s.status();
    broadcast(proto::to_json(m), [&](Conn& c) { return may_see(c, s); });
  }
  void on_store_events() {
    for (auto& e : store_events->read())
      broadcast(proto::to_json(proto::ImageEvent{e.action, e.image, e.digest, e.time}),
                [](Conn& c) { return c.image_events; });
  }
  // A subscriber that does not read is dropped, not buffered for without
  // end: its queue is its own events and whatever else it had asked for.
  // (Marked, and closed by tick(): this may run inside a request of that
  // very connection.)
  template <class Sees>
  void broadcast(const json& ev, const Sees& sees) {
    for (auto& [cid, c] : conns) {
      if (!c->events || c->closing || !sees(*c)) continue;
      if (c->queued() > kEventBacklog) {
        log("events: connection " + std::to_string(cid) + " reads too slowly, closed");
        c->out.clear();
        c->out_pos = 0;
        c->closing = true;
        continue;
      }
      send_json(*c, ev);
      flush(*c);
    }
  }

  // --- sessions
  // A stream at EOF leaves the event loop.
  void drop_ended(SessionEntry& e, int i) {
    if (e.s->output_eof(i) && e.registered[i]) {
      ep_del(e.s->output_fd(i));
      e.registered[i] = false;
    }
  }
  void on_output(uint64_t sid, int i) {
    auto it = sessions.find(sid);
    if (it == sessions.end()) return;
    SessionEntry& e = it->second;
    if (must_pause(e, i)) {
      e.paused[i] = true;
      ep(EPOLL_CTL_MOD, e.s->output_fd(i), 0, tag(i == 0 ? kOut : kErr, sid));
      return;
    }
    e.s->pull(i, room(e, i));
    drop_ended(e, i);
    pump_session(e);
    check_finished(e);
  }
  void on_exit(uint64_t sid) {
    auto it = sessions.find(sid);
    if (it == sessions.end()) return;
    SessionEntry& e = it->second;
    ep_del(e.exit_fd);
    if (!e.s->try_reap()) {
      // The payload exited but left processes behind: the init's own exit,
      // which takes them along, is the news now.
      e.exit_fd = e.s->process().exit_fd();
      ep(EPOLL_CTL_ADD, e.exit_fd, EPOLLIN, tag(kPid, sid));
      return;
    }
    e.exit_fd = -1;
    uncount(e);
    if (e.s->process().joined()) {
      e.s->end_output_at_exit();
      for (int i = 0; i < 2; ++i) drop_ended(e, i);
    }
    if (e.s->status() && e.s->status()->oom_killed) publish(e, "oom");
    publish(e, "exited");
    check_finished(e);
  }
  void uncount(SessionEntry& e) { e.slots.clear(); }
  void check_finished(SessionEntry& e) {
    if (e.finished_handled || !e.s->finished()) return;
    e.finished_handled = true;
    e.s->finished_at = Clock::now();
    if (e.stdin_registered) {
      ep_del(e.s->stdin_fd());
      e.stdin_registered = false;
    }
    for (uint64_t w : e.stdin_waiters) resume_reading(w);
    e.stdin_waiters.clear();
    pump_session(e);
    // Answer waits and runs.
    const uint64_t sid = e.s->id();
    bool remove_after = false;
    for (auto& [cid, c] : conns) {
      for (auto p = c->pending.begin(); p != c->pending.end();) {
        if (p->session != sid) {
          ++p;
          continue;
        }
        answer(*c, *p, e);
        if (p->run) remove_after = true;
        p = c->pending.erase(p);
      }
    }
    // A run's session is gone before its answer leaves: a client that saw
    // the reply never sees the session's fds or cgroup.
    if (remove_after) remove_session(sid);
    for (auto& [cid, c] : conns) flush(*c);
  }
  void answer(Conn& c, Pending& p, SessionEntry& e) {
    Session& s = *e.s;
    if (s.reap_error()) return reply_err(c, p.id, *s.reap_error());
    json r = {{"session", s.id()}, {"status", proto::to_json(*s.status())}};
    if (p.run) {
      uint64_t cap = p.max_output;
      for (;;) {
        for (int i = 0; i < 2; ++i) {
          const char* name = i == 0 ? "stdout" : "stderr";
          RingBuffer& rb = s.buffer(i);
          std::string text = rb.read(rb.start(), rb.size());
          bool truncated = rb.start() > 0 || s.discarded(i) > 0;
          if (p.grep || p.tail) {
            std::vector<std::string> lines;
            size_t at = 0;
            while (at < text.size()) {
              size_t nl = text.find('\n', at);
              size_t end = nl == std::string::npos ? text.size() : nl + 1;
              std::string line = text.substr(at, end - at);
              at = end;
              std::string bare = line.back() == '\n' ? line.substr(0, line.size() - 1) : line;
              if (p.grep && !std::regex_search(bare, *p.grep)) continue;
              lines.push_back(std::move(line));
            }
            if (p.tail && lines.size() > p.tail)
              lines.erase(lines.begin(), lines.end() - static_cast<ptrdiff_t>(p.tail));
            text.clear();
            for (auto& l : lines) text += l;
          }
          if (text.size() > cap) {
            text = text.substr(text.size() - cap);  // the end matters most
            truncated = true;
          }
          r[name] = text;
          r[std::string(name) + "_truncated"] = truncated;
          r[std::string(name) + "_bytes"] = rb.end() + s.discarded(i);
        }
        if (dump(r).size() + 64 <= sc.max_frame || cap == 0) break;
        cap /= 2;
      }
    }
    reply_ok(c, p.id, r);
  }
  void remove_session(uint64_t sid) {
    auto it = sessions.find(sid);
    if (it == sessions.end()) return;
    SessionEntry& e = it->second;
    publish(e, "removed");
    for (int i = 0; i < 2; ++i)
      if (e.registered[i]) ep_del(e.s->output_fd(i));
    if (e.stdin_registered) ep_del(e.s->stdin_fd());
    if (!e.s->exited()) ep_del(e.exit_fd);
    uncount(e);
    for (uint64_t cid : e.conns) {
      auto c = conns.find(cid);
      if (c == conns.end()) continue;
      c->second->attached.erase(sid);
      send_json(*c->second, proto::to_json(proto::RemovedEvent{sid}));
      flush(*c->second);
    }
    for (uint64_t w : e.stdin_waiters) resume_reading(w);
    for (auto& [cid, c] : conns) {
      c->owns.erase(sid);
      for (auto p = c->pending.begin(); p != c->pending.end();) {
        if (p->session == sid) {
          reply_err(
              *c, p->id,
              make_error(ErrorKind::NotFound, "session " + std::to_string(sid) + " was removed"));
          p = c->pending.erase(p);
        } else {
          ++p;
        }
      }
    }
    if (!e.s->spec().name.empty()) names.erase({e.s->spec().owner, e.s->spec().name});
    // A tree still running is killed and left to the library's reaper: it
    // may take as long to die as what its processes wait for.
    if (!e.s->exited()) e.s->process().abandon();
    sessions.erase(it);
  }
  // Frames a connection sent before it was stopped may all be read already
  // (a close_stdin after the stdin that filled the queue): the loop handles
  // them once this event is done, as no socket event may come for them.
  void resume_reading(uint64_t cid) {
    auto it = conns.find(cid);
    if (it == conns.end() || it->second->reading) return;
    it->second->reading = true;
    update_conn_events(*it->second);
    resumed.push_back(cid);
  }
  void handle_resumed() {
    while (!resumed.empty()) {
      std::vector<uint64_t> ids;
      ids.swap(resumed);
      for (uint64_t cid : ids) {
        auto it = conns.find(cid);
        if (it == conns.end()) continue;
        Conn& c = *it->second;
        if (!c.reading || c.closing) continue;
        handle_frames(c);
        flush(c);
        if (c.closing && c.queued() == 0) close_conn(cid);
      }
    }
  }

  // --- ops
  Result<std::shared_ptr<Executor>> executor(const std::string& name) {
    auto it = executors.find(name);
    if (it == executors.end())
      return fail(make_error(ErrorKind::NotFound, "no executor named '" + name + "'"));
    return it->second;
  }

  // A session's process, checked and made but not started, and the rest of
  // its spec (all but its id).
  struct Prepared {
    std::unique_ptr<Process> proc;
    SessionSpec spec;
    bool run = false;
    std::vector<policy::Slot> slots;  // in the service's limits
  };
  // An `exec` being started. Its process joins a sandbox whose own
  // processes can hold the start up (isolate/spawn.h, kJoinStartDeadline),
  // so it starts on a thread of its own while the loop serves everyone;
  // the loop makes the session and replies once the thread is done.
  struct ExecStart {
    uint64_t conn = 0;
    json id;
    Prepared prep;
    Status started;
    std::atomic<bool> done{false};
    std::thread thread;
  };
  void start_exec(Conn& c, const json& id, const proto::Launch& m, SessionEntry& into) {
    size_t own = 0;
    for (const auto& [xid, x] : exec_starts) own += x->prep.spec.owner == c.caller.uid;
    if (own >= kExecStartsPerUid || exec_starts.size() >= kExecStartsMax)
      return reply_err(
          c, id,
          make_error(ErrorKind::Limit, "too many execs are starting (" + std::to_string(own) +
                                           " of yours, " + std::to_string(exec_starts.size()) +
                                           " in all); try again once they run"));
    auto p = prepare(c, m, &into);
    c.fds.clear();
    if (!p) return reply_err(c, id, p.error());
    auto x = std::make_unique<ExecStart>();
    x->conn = c.id;
    x->id = id;
    x->prep = std::move(*p);
    ExecStart* raw = x.get();
    const int done_fd = exec_done.get();
    try {
      x->thread = std::thread([raw, done_fd] {
        raw->started = raw->prep.proc->start();
        raw->done.store(true, std::memory_order_release);
        const uint64_t one = 1;
        (void)!::write(done_fd, &one, sizeof one);
      });
    } catch (const std::system_error& e) {
      return reply_err(
          c, id, make_error(ErrorKind::Limit, std::string("no thread for the exec: ") + e.what()));
    }
    exec_starts.emplace(next_exec++, std::move(x));
  }
  // A `cp` (runtime/copy.h). Its copy reads and writes the caller's fd and
  // the sandbox's files, either of which may block for as long as their
  // other side likes, so it runs on a thread of its own and the loop
  // replies once it is done. Shared with the thread: at shutdown a thread
  // still copying is left to the process's exit.
  struct Copy {
    uint64_t conn = 0;
    uid_t uid = 0;
    json id;
    uint64_t session = 0;
    bool in = false;
    Result<uint64_t> result = 0;
    std::atomic<bool> done{false};
    Fd notify;  // the loop's eventfd, a dup of its own: the thread may outlive the loop
    std::thread thread;
  };
  void start_copy(Conn& c, const json& id, const json& j, const proto::Cp& m) {
    const bool in = m.direction == proto::Cp::Direction::In;
    if (c.fds.empty())
      return reply_err(c, id,
                       invalid("cp needs the tar stream's fd sent with SCM_RIGHTS on this frame"));
    Fd data = std::move(c.fds.front());
    c.fds.clear();
    // The fd must go the copy's way; it is made blocking for the thread
    // (the file description is the caller's, given over for the copy).
    const int fl = ::fcntl(data.get(), F_GETFL);
    const int mode = fl & O_ACCMODE;
    if (fl < 0 || (fl & O_PATH) || (in ? mode == O_WRONLY : mode == O_RDONLY))
      return reply_err(c, id,
                       invalid(std::string("the fd sent must be open for ") +
                               (in ? "reading (the tar to copy in)" : "writing (the tar out)")));
    // A pipe or a file: not a socket, whose peer would take what the copy
    // writes as sent with the service's credentials.
    struct stat fst {};
    if (::fstat(data.get(), &fst) != 0 || !(S_ISFIFO(fst.st_mode) || S_ISREG(fst.st_mode)))
      return reply_err(c, id, invalid("the fd sent must be a pipe or a regular file"));
    if ((fl & O_NONBLOCK) && ::fcntl(data.get(), F_SETFL, fl & ~O_NONBLOCK) != 0)
      return reply_err(c, id, sys_error("make the fd sent blocking"));
    auto found = find(c, j);
    if (!found) return reply_err(c, id, found.error());
    auto sandbox = sandbox_of(**found);
    if (!sandbox) return reply_err(c, id, sandbox.error());
    SessionEntry* e = *sandbox;
    Session& s = *e->s;
    if (auto ok = may(c, s, policy::Action::SessionCp); !ok) return reply_err(c, id, ok.error());
    if (s.exited())
      return reply_err(c, id, invalid("session " + std::to_string(s.id()) + " has exited"));
    size_t own = 0;
    for (const auto& [cid, x] : copies) own += x->uid == c.caller.uid;
    if (own >= kCopiesPerUid || copies.size() >= kCopiesMax)
      return reply_err(
          c, id,
          make_error(ErrorKind::Limit, "too many copies are under way (" + std::to_string(own) +
                                           " of yours, " + std::to_string(copies.size()) +
                                           " in all); try again once they end"));
    // As the session's user (its payload's): a copy is no way to its root.
    const SpawnSpec* spec = s.process().sandbox_spec();
    const Identity who = spec ? spec->user : Identity{};
    auto target = copy::target_of(s.process().pid(), s.process().pidfd(), who.uid, who.gid);
    if (!target) return reply_err(c, id, target.error().wrap("cp"));
    if (target->uid == 0 && c.caller.uid != 0)
      return reply_err(c, id,
                       make_error(ErrorKind::PermissionDenied,
                                  "cp: session " + std::to_string(s.id()) +
                                      " runs as host root (userns: host): only root copies there"));
    log("cp " + std::string(in ? "into" : "out of") + " session " + std::to_string(s.id()) + " " +
        json(m.path).dump(-1, ' ', false, json::error_handler_t::replace) + " by uid " +
        std::to_string(c.caller.uid));
    auto x = std::make_shared<Copy>();
    x->conn = c.id;
    x->uid = c.caller.uid;
    x->id = id;
    x->session = s.id();
    x->in = in;
    x->notify = Fd(::fcntl(exec_done.get(), F_DUPFD_CLOEXEC, 3));
    if (!x->notify) return reply_err(c, id, sys_error("dup the loop's eventfd"));
    try {
      x->thread = std::thread(
          [x, t = std::move(*target), data = std::move(data), p = m.path, in]() mutable {
            x->result = in ? copy::copy_in(t, p, data.get()) : copy::copy_out(t, p, data.get());
            // The caller's end of the stream is closed before the reply.
            data.reset();
            x->done.store(true, std::memory_order_release);
            const uint64_t one = 1;
            (void)!::write(x->notify.get(), &one, sizeof one);
          });
    } catch (const std::system_error& err) {
      return reply_err(
          c, id,
          make_error(ErrorKind::Limit, std::string("no thread for the copy: ") + err.what()));
    }
    copies.emplace(next_copy++, std::move(x));
  }
  void on_copies_done() {
    std::vector<uint64_t> done;
    for (const auto& [cid, x] : copies)
      if (x->done.load(std::memory_order_acquire)) done.push_back(cid);
    for (uint64_t cid : done) {
      auto node = copies.extract(cid);
      Copy& x = *node.mapped();
      x.thread.join();
      auto cit = conns.find(x.conn);
      if (cit == conns.end() || cit->second->closing) continue;
      Conn& c = *cit->second;
      if (!x.result)
        reply_err(c, x.id, x.result.error());
      else
        reply_ok(c, x.id, {{"session", x.session}, {x.in ? "entries" : "bytes", *x.result}});
      flush(c);
    }
  }
  // Every exec start whose thread is done: its session, or its error.
  void on_exec_done() {
    uint64_t n;
    (void)!::read(exec_done.get(), &n, sizeof n);
    on_copies_done();
    std::vector<uint64_t> done;
    for (const auto& [xid, x] : exec_starts)
      if (x->done.load(std::memory_order_acquire)) done.push_back(xid);
    for (uint64_t xid : done) {
      auto node = exec_starts.extract(xid);
      ExecStart& x = *node.mapped();
      x.thread.join();
      auto cit = conns.find(x.conn);
      Conn* c = cit != conns.end() && !cit->second->closing ? cit->second.get() : nullptr;
      Status ok = x.started;
      const std::string& name = x.prep.spec.name;
      if (ok && !name.empty() && names.count({x.prep.spec.owner, name}))
        ok = fail(invalid("name '" + name + "' was taken while the exec started"));
      // A detached exec runs on without its client, as a detached start.
      if (ok && stopping) ok = fail(make_error(ErrorKind::Limit, "the service is shutting down"));
      if (ok && !c && !x.prep.spec.detached)
        ok = fail(internal("the client went before the exec ran"));
      if (!ok) {
        // Started but not wanted: killed, and left to the reaper.
        if (x.prep.proc->started()) x.prep.proc->abandon();
        if (c) {
          reply_err(*c, x.id, ok.error());
          flush(*c);
        }
        continue;
      }
      const uint64_t sid = enroll(std::move(x.prep));
      if (!c) continue;
      answer_start(*c, x.id, sid);
      flush(*c);
    }
  }
  // The reply to `start` and `exec`, and the owner's attachment.
  void answer_start(Conn& c, const json& id, uint64_t sid) {
    SessionEntry& e = sessions[sid];
    proto::LaunchReply r{sid, e.s->process().pid()};
    if (e.s->stdin_open()) r.stdin_window = kStdinHighWater;
    reply_ok(c, id, proto::to_json(r));
    if (!e.s->spec().detached) {
      c.owns.insert(sid);
      if (!e.s->spec().passed_stdio) attach(c, sid);
      pump(c);
    }
  }
  // `start` and `run`: prepared, started and enrolled at once.
  Result<uint64_t> start(Conn& c, const proto::Launch& m) {
    auto p = prepare(c, m);
    if (!p) return fail(p.error());
    if (auto st = p->proc->start(); !st) return fail(st.error());
    return enroll(std::move(*p));
  }
  // With `into`, for `exec`: a process of its own in that running session's
  // sandbox, on the session's executor.
  Result<Prepared> prepare(Conn& c, const proto::Launch& m, SessionEntry* into = nullptr) {
    if (stopping) return fail(make_error(ErrorKind::Limit, "the service is shutting down"));
    const bool run = m.kind == proto::Launch::Kind::Run;
    const std::string exname = into ? into->s->spec().executor : m.executor;
    if (into && !m.executor.empty() && m.executor != exname)
      return fail(invalid("exec runs on the session's own executor ('" + exname +
                          "'): leave out 'executor'"));
    auto ex = executor(exname);
    if (!ex) return fail(ex.error());
    ExecRequest req;
    if (into) req.join = &into->s->process();
    req.argv = m.argv;
    req.command = m.command;
    req.env = m.env;
    if (!m.name.empty()) {
      if (auto st = check_name(m.name); !st) return fail(st.error());
      if (auto n = names.find({c.caller.uid, m.name}); n != names.end())
        return fail(invalid("name '" + m.name + "' is taken by your session " +
                            std::to_string(n->second) + " (remove it first)"));
    }
    req.work_dir = m.work_dir;
    req.stdin_open = m.stdin_open;
    req.timeout = std::chrono::milliseconds(static_cast<int64_t>(m.timeout_ms));
    if (m.pty) req.pty = PtyRequest{m.pty->rows, m.pty->cols};
    SessionSpec spec;
    if (m.stdio == proto::Launch::Stdio::Passed) {
      if (c.fds.size() < 3)
        return fail(invalid("stdio \"passed\" needs 3 fds sent with SCM_RIGHTS on this frame"));
      auto p = std::make_shared<PassedStdio>();
      p->in = std::move(c.fds[0]);
      p->out = std::move(c.fds[1]);
      p->err = std::move(c.fds[2]);
      c.fds.erase(c.fds.begin(), c.fds.begin() + 3);
      req.passed_stdio = std::move(p);
      spec.passed_stdio = true;
    }
    const std::string* log_file = &m.log_file;
    if (!log_file->empty() &&
        (log_file->find('/') != std::string::npos || *log_file == "." || *log_file == ".."))
      return fail(invalid("log_file is a plain file name, created in " + sc.log_dir));
    // Limits, before anything forks.
    const uid_t uid = c.cred.uid;
    std::vector<policy::Slot> slots;
    for (auto [key, max, what] : {std::tuple{std::string("sessions"), sc.max_sessions,
                                             std::string("the service (max_sessions)")},
                                  {"executor:" + exname, sc.max_sessions_per_executor,
                                   "executor '" + exname + "' (max_sessions_per_executor)"},
                                  {"uid:" + std::to_string(uid), sc.max_sessions_per_caller,
                                   "uid " + std::to_string(uid) + " (max_sessions_per_caller)"}}) {
      auto slot = limits->acquire(key, max, what, "sessions");
      if (!slot) return fail(slot.error());
      slots.push_back(std::move(*slot));
    }
    req.caller = c.caller;  // exec.get, exec.run and limits are checked against it
    auto proc = (*ex)->exec(std::move(req));
    if (!proc) return fail(proc.error());
    // Only a request the policy let through leaves a file behind.
    if (!log_file->empty()) {
      ::mkdir(sc.log_dir.c_str(), 0750);
      // Each caller's log files in a directory of its own (log_dir/UID): no
      // caller can append to, take, or learn of another's. Only the service
      // writes there; still every step refuses a symlink, and the file must
      // be a regular one.
      ::mkdir(sc.log_dir.c_str(), 0750);
      const std::string own = std::to_string(uid);
      Fd top(::open(sc.log_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!top) return fail(sys_error("log_dir " + sc.log_dir));
      ::mkdirat(top.get(), own.c_str(), 0750);
      Fd dir(::openat(top.get(), own.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!dir) return fail(sys_error("log_dir " + sc.log_dir + "/" + own));
      Fd fd(::openat(dir.get(), log_file->c_str(),
                     O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC,
                     0640));
      if (!fd) return fail(sys_error("log file " + sc.log_dir + "/" + own + "/" + *log_file));
      struct stat st {};
      if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
        return fail(invalid("log file " + *log_file + " is not a regular file"));
      spec.log = std::move(fd);
    }
    spec.executor = exname;
    if (into) spec.exec_of = into->s->id();
    spec.argv = (*proc)->argv();
    spec.command = m.command;
    spec.name = m.name;
    spec.owner = uid;
    spec.detached = m.detached;
    spec.pty = m.pty.has_value();
    spec.buffer_size = sc.buffer_size;
    // A run's max_output bounds its reply, which keeps the end of the output
    // (docs/protocol.md): its session keeps the newest bytes, as its buffer
    // does, not the first max_output of them.
    spec.max_output = run ? 0 : m.max_output.value_or(0);
    return Prepared{std::move(*proc), std::move(spec), run, std::move(slots)};
  }
  // A started process becomes a session.
  uint64_t enroll(Prepared p) {
    p.spec.id = next_session++;
    const uint64_t sid = p.spec.id;
    SessionEntry& e = sessions[sid];
    e.s = std::make_unique<Session>(std::move(p.spec), std::move(p.proc));
    e.run_session = p.run;
    if (!e.s->spec().name.empty()) names[{e.s->spec().owner, e.s->spec().name}] = sid;
    e.slots = std::move(p.slots);
    for (int i = 0; i < 2; ++i)
      if (e.s->output_fd(i) >= 0 && !e.s->output_eof(i)) {
        ep(EPOLL_CTL_ADD, e.s->output_fd(i), EPOLLIN, tag(i == 0 ? kOut : kErr, sid));
        e.registered[i] = true;
      }
    e.exit_fd = e.s->process().exit_fd();
    ep(EPOLL_CTL_ADD, e.exit_fd, EPOLLIN, tag(kPid, sid));
    // A session is created and started by one request: both, in order.
    publish(e, "created");
    publish(e, "started");
    return sid;
  }

  void attach(Conn& c, uint64_t sid, const proto::Attach& m = {}) {
    SessionEntry& e = sessions[sid];
    Attachment a;
    a.session = sid;
    a.next[0] = m.stdout_offset.value_or(0);
    a.next[1] = m.stderr_offset.value_or(0);
    a.follow = m.follow;
    for (int i = 0; i < 2; ++i) a.next[i] = std::min(a.next[i], e.s->buffer(i).end());
    c.attached[sid] = a;
    e.conns.insert(c.id);
  }

  static json stats_json(const Process::Now& now) {
    return {{"cpu_time_us", now.usage.cpu_usec},
            {"memory", now.live.memory_current},
            {"memory_peak", now.usage.memory_peak},
            {"oom_kills", now.usage.oom_kills},
            {"pids", now.live.pids_current ? now.live.pids_current : now.pids.size()},
            {"io_read_bytes", now.live.io_read_bytes},
            {"io_write_bytes", now.live.io_write_bytes}};
  }

  json session_json(SessionEntry& e) {
    Session& s = *e.s;
    json j = {{"session", s.id()},
              {"executor", s.spec().executor},
              {"argv", s.spec().argv},
              {"pid", s.process().pid()},
              {"state", s.finished() ? "exited" : (s.exited() ? "exiting" : "running")},
              {"started_at", oci::iso_utc(s.started_wall)},
              {"owner_uid", s.spec().owner},
              {"detached", s.spec().detached},
              {"pty", s.spec().pty},
              {"attached", e.conns.size()},
              {"stdout", {{"start", s.buffer(0).start()}, {"end", s.buffer(0).end()}}},
              {"stderr", {{"start", s.buffer(1).start()}, {"end", s.buffer(1).end()}}}};
    if (!s.spec().command.empty()) j["command"] = s.spec().command;
    if (!s.spec().name.empty()) j["name"] = s.spec().name;
    if (s.spec().exec_of) j["exec_of"] = s.spec().exec_of;
    j["exit"] = s.status() ? proto::to_json(*s.status()) : json(nullptr);
    return j;
  }

  // Sessions started by others need session.attach / signal / remove
  // (docs/policy.md); one's own sessions are always one's own.
  Status may(const Conn& c, const Session& s, policy::Action action) {
    if (s.spec().owner == c.caller.uid) return {};
    policy::Request r;
    r.action = action;
    r.executor = s.spec().executor;
    r.session_owner = s.spec().owner;
    auto d = policy::authorize(config.callers.get(), c.caller, r);
    if (!d) return fail(d.error());
    return {};
  }
  bool may_see(const Conn& c, const Session& s) {
    if (s.spec().owner == c.caller.uid) return true;
    policy::Request r;
    r.action = policy::Action::SessionAttach;
    r.executor = s.spec().executor;
    r.session_owner = s.spec().owner;
    return policy::decide(config.callers.get(), c.caller, r).allowed;
  }

  Result<SessionEntry*> find(const Conn& c, const json& j) {
    auto key = proto::parse_session(j);
    if (!key) return fail(key.error());
    uint64_t sid = 0;
    if (const auto* name = std::get_if<std::string>(&*key)) {
      if (auto st = check_name(*name); !st) return fail(st.error());
      auto n = names.find({c.caller.uid, *name});
      if (n == names.end())
        return fail(make_error(ErrorKind::NotFound, "you have no session named " + *name));
      sid = n->second;
    } else {
      sid = std::get<uint64_t>(*key);
    }
    auto it = sessions.find(sid);
    if (it == sessions.end() || it->second.run_session)
      return fail(make_error(ErrorKind::NotFound, "no session " + std::to_string(sid)));
    return &it->second;
  }

  // A request, once the checks its entry in kOps asks for are passed: the
  // hello said, and for an op on a session, the session named (an id or a
  // name) found and the caller allowed the entry's permission on it.
  struct Request {
    Conn& c;
    const json& id;
    const json& j;
    SessionEntry* e;  // the session's entry, for an op on one
  };
  using Handler = void (Impl::*)(const Request&);
  // An op's fields are parsed into its message (runtime/messages.h) after
  // the checks above, as the protocol orders them.
  template <class M, void (Impl::*H)(const Request&, const M&)>
  void typed(const Request& rq) {
    auto m = proto::parse<M>(rq.j);
    if (!m) return reply_err(rq.c, rq.id, m.error());
    (this->*H)(rq, *m);
  }
  // One entry per op (the shape of crun's commands[]): its name, whether
  // it names a session to be found first, the permission it needs on that
  // session (none: exec checks its own on the sandbox an exec session ran
  // in; cp finds its session after checking its fd), and its handler.
  struct Op {
    std::string_view name;
    bool names_session;
    std::optional<policy::Action> on_session;
    Handler handle;
  };
  static const Op* find_op(std::string_view name) {
    using policy::Action;
    namespace m = proto;
    static const Op kOps[] = {
        {m::Hello::kOp, false, std::nullopt, &Impl::op_hello},
        {m::Ping::kOp, false, std::nullopt, &Impl::typed<m::Ping, &Impl::op_ping>},
        {m::ListExecutors::kOp, false, std::nullopt,
         &Impl::typed<m::ListExecutors, &Impl::op_executors>},
        {"start", false, std::nullopt, &Impl::op_start},
        {"run", false, std::nullopt, &Impl::op_start},
        {"exec", true, std::nullopt, &Impl::op_exec},
        {m::Cp::kOp, false, std::nullopt, &Impl::op_cp},
        {m::Events::kOp, false, std::nullopt, &Impl::typed<m::Events, &Impl::op_events>},
        {m::List::kOp, false, std::nullopt, &Impl::typed<m::List, &Impl::op_list>},
        {m::Attach::kOp, true, Action::SessionAttach, &Impl::typed<m::Attach, &Impl::op_attach>},
        {m::Detach::kOp, true, Action::SessionAttach, &Impl::typed<m::Detach, &Impl::op_detach>},
        {m::CloseStdin::kOp, true, Action::SessionAttach,
         &Impl::typed<m::CloseStdin, &Impl::op_close_stdin>},
        {m::Wait::kOp, true, Action::SessionAttach, &Impl::typed<m::Wait, &Impl::op_wait>},
        {m::Stats::kOp, true, Action::SessionAttach, &Impl::typed<m::Stats, &Impl::op_stats>},
        {m::Top::kOp, true, Action::SessionAttach, &Impl::typed<m::Top, &Impl::op_top>},
        {m::Inspect::kOp, true, Action::SessionAttach, &Impl::typed<m::Inspect, &Impl::op_inspect>},
        {m::Signal::kOp, true, Action::SessionSignal, &Impl::typed<m::Signal, &Impl::op_signal>},
        {m::Resize::kOp, true, Action::SessionSignal, &Impl::typed<m::Resize, &Impl::op_resize>},
        {m::Remove::kOp, true, Action::SessionRemove, &Impl::typed<m::Remove, &Impl::op_remove>},
    };
    for (const Op& o : kOps)
      if (o.name == name) return &o;
    return nullptr;
  }

  void handle_control(Conn& c, const std::string& body) {
    json j;
    try {
      j = json::parse(body);
    } catch (const std::exception& ex) {
      return reply_err(c, nullptr, invalid(std::string("invalid JSON: ") + ex.what()));
    }
    if (!j.is_object()) return reply_err(c, nullptr, invalid("a control frame is a JSON object"));
    json id = j.contains("id") ? j["id"] : json(nullptr);
    if (!id.is_null() && !id.is_number_unsigned() && !id.is_string())
      return reply_err(c, nullptr, invalid("'id' must be a non-negative integer or a string"));
    auto opit = j.find("op");
    if (opit == j.end() || !opit->is_string())
      return reply_err(c, id, invalid("field 'op' (a string) is required"));
    const std::string op = opit->get<std::string>();
    // In the order docs/protocol.md gives.
    const Op* o = find_op(op);
    if (!o) return reply_err(c, id, invalid("unknown op '" + op + "'"));
    if (op != proto::Hello::kOp && !c.hello) return reply_err(c, id, invalid("send hello first"));
    SessionEntry* e = nullptr;
    if (o->names_session) {
      auto found = find(c, j);
      if (!found) return reply_err(c, id, found.error());
      e = *found;
      if (o->on_session)
        if (auto ok = may(c, *e->s, *o->on_session); !ok) return reply_err(c, id, ok.error());
    }
    (this->*(o->handle))(Request{c, id, j, e});
  }

  void op_ping(const Request& rq, const proto::Ping&) { reply_ok(rq.c, rq.id); }

  // A hello that fails ends the connection: the peer speaks something else.
  void op_hello(const Request& rq) {
    Conn& c = rq.c;
    if (!c.allowed) {
      reply_err(c, rq.id,
                make_error(ErrorKind::PermissionDenied,
                           "uid " + std::to_string(c.cred.uid) +
                               " is neither root nor in the socket's group"));
      c.closing = true;
      return;
    }
    if (c.hello) return reply_err(c, rq.id, invalid("hello was sent already on this connection"));
    auto m = proto::parse<proto::Hello>(rq.j);
    if (!m) {
      reply_err(c, rq.id, m.error());
      c.closing = true;
      return;
    }
    if (std::find(m->versions.begin(), m->versions.end(), proto::kVersion) == m->versions.end()) {
      reply_err(c, rq.id, invalid("no common protocol version: the server speaks [1]"));
      c.closing = true;
      return;
    }
    c.hello = true;
    proto::HelloReply r;
    r.server = kServerName;
    r.max_frame = sc.max_frame;
    r.keepalive_ms = sc.idle_timeout.count() / 2;
    r.uid = c.cred.uid;
    return reply_ok(c, rq.id, proto::to_json(r));
  }

  // start and run: the service, then the executor, then the fields.
  void op_start(const Request& rq) {
    Conn& c = rq.c;
    const json& id = rq.id;
    if (stopping)
      return reply_err(c, id, make_error(ErrorKind::Limit, "the service is shutting down"));
    const json* exname = rq.j.contains("executor") ? &rq.j["executor"] : nullptr;
    if (!exname || !exname->is_string())
      return reply_err(c, id, invalid("field 'executor' (a string) is required"));
    if (auto ex = executor(exname->get<std::string>()); !ex) return reply_err(c, id, ex.error());
    auto m = proto::parse<proto::Launch>(rq.j);
    if (!m) return reply_err(c, id, m.error());
    const bool run = m->kind == proto::Launch::Kind::Run;
    Pending p;
    if (run) {
      p.tail = m->tail;
      p.max_output = std::min<uint64_t>(m->max_output.value_or(64 * 1024), sc.max_frame / 2);
      if (!m->grep.empty()) {
        try {
          p.grep.emplace(m->grep, std::regex::ECMAScript);
        } catch (const std::regex_error& ex) {
          return reply_err(c, id,
                           invalid("grep: bad regular expression: " + std::string(ex.what())));
        }
      }
    }
    auto sid = start(c, *m);
    c.fds.clear();  // unclaimed fds are not kept
    if (!sid) return reply_err(c, id, sid.error());
    if (run) {
      p.id = id;
      p.session = *sid;
      p.run = true;
      c.pending.push_back(std::move(p));
      return;
    }
    return answer_start(c, id, *sid);
  }

  // exec: the session, its sandbox, the permission on that, its state,
  // then the fields.
  void op_exec(const Request& rq) {
    Conn& c = rq.c;
    const json& id = rq.id;
    SessionEntry* into = rq.e;
    if (auto sandbox = sandbox_of(*into); !sandbox)
      return reply_err(c, id, sandbox.error());
    else
      into = *sandbox;
    if (auto ok = may(c, *into->s, policy::Action::SessionExec); !ok)
      return reply_err(c, id, ok.error());
    if (into->s->exited())
      return reply_err(c, id, invalid("session " + std::to_string(into->s->id()) + " has exited"));
    auto m = proto::parse<proto::Launch>(rq.j);
    if (!m) return reply_err(c, id, m.error());
    // No fd of the caller's into a sandbox whose processes may be
    // someone else's (the session's, another caller's exec), which
    // could take them over (ptrace the exec'd process).
    if (m->stdio == proto::Launch::Stdio::Passed)
      return reply_err(c, id,
                       invalid("stdio \"passed\" is not for exec: the sandbox's other "
                               "processes could use your fds (your terminal); use pipes or "
                               "a pty"));
    return start_exec(c, id, *m, *into);
  }
  // The session whose sandbox an exec or a cp into e goes to: an exec
  // session's is the session it was exec'd into.
  Result<SessionEntry*> sandbox_of(SessionEntry& e) {
    const uint64_t of = e.s->spec().exec_of;
    if (!of) return &e;
    auto it = sessions.find(of);
    if (it == sessions.end())
      return fail(invalid("session " + std::to_string(e.s->id()) + " ran in session " +
                          std::to_string(of) + ", which is gone"));
    return &it->second;
  }

  void op_cp(const Request& rq) {
    auto m = proto::parse<proto::Cp>(rq.j);
    if (!m) return reply_err(rq.c, rq.id, m.error());
    start_copy(rq.c, rq.id, rq.j, *m);
  }

  void op_executors(const Request& rq, const proto::ListExecutors&) {
    json list = json::array();
    for (auto& [name, ex] : executors) {
      policy::Request r;
      r.action = policy::Action::ExecGet;
      r.executor = name;
      if (!policy::decide(config.callers.get(), rq.c.caller, r).allowed) continue;  // exec.get
      json e = {{"name", name}, {"available", ex.has_value()}};
      if (ex) e["kind"] = (*ex)->config().kind == ExecutorKind::Host ? "host" : "container";
      if (!ex) e["error"] = proto::to_json(ex.error());
      list.push_back(e);
    }
    return reply_ok(rq.c, rq.id, {{"executors", list}});
  }

  void op_events(const Request& rq, const proto::Events& m) {
    rq.c.events = m.enabled;
    // Image references can name what a tenant works on: they go to root
    // and to callers granted image.events, decided once, at subscribing.
    rq.c.image_events =
        m.enabled && store_events &&
        policy::decide(config.callers.get(), rq.c.caller, {policy::Action::ImageEvents}).allowed;
    return reply_ok(rq.c, rq.id, {{"events", rq.c.events}, {"images", rq.c.image_events}});
  }

  void op_list(const Request& rq, const proto::List&) {
    json list = json::array();
    for (auto& [sid, e] : sessions)
      if (!e.run_session && may_see(rq.c, *e.s)) list.push_back(session_json(e));
    return reply_ok(rq.c, rq.id, {{"sessions", list}});
  }

  void op_inspect(const Request& rq, const proto::Inspect&) {
    Session& s = *rq.e->s;
    json reply = session_json(*rq.e);
    // The environment's names only: its values may be secrets the
    // executor's default_env holds for the payload, never the caller's.
    const Command& cmd = s.process().command();
    json env = json::array();
    for (const auto& kv : cmd.env) env.push_back(kv.substr(0, kv.find('=')));
    reply["process"] = {{"argv", cmd.argv},
                        {"env", env},
                        {"work_dir", cmd.work_dir},
                        {"timeout_ms", s.process().timeout().count()}};
    if (const SpawnSpec* sp = s.process().sandbox_spec())
      reply["sandbox"] = sandbox_json(*sp, rq.c.caller.uid == 0);
    auto now = s.process().now();
    if (!now) return reply_err(rq.c, rq.id, now.error());
    reply["stats"] = stats_json(*now);
    return reply_ok(rq.c, rq.id, reply);
  }

  static const char* state_name(const Session& s) {
    return s.finished() ? "exited" : (s.exited() ? "exiting" : "running");
  }

  void op_stats(const Request& rq, const proto::Stats&) {
    Session& s = *rq.e->s;
    auto now = s.process().now();
    if (!now) return reply_err(rq.c, rq.id, now.error());
    return reply_ok(rq.c, rq.id,
                    {{"session", s.id()}, {"state", state_name(s)}, {"stats", stats_json(*now)}});
  }

  void op_top(const Request& rq, const proto::Top&) {
    Conn& c = rq.c;
    const json& id = rq.id;
    Session& s = *rq.e->s;
    const uint64_t sid = s.id();
    auto now = s.process().now();
    if (!now) return reply_err(c, id, now.error());
    json reply = {{"session", sid}, {"state", state_name(s)}};
    std::vector<top::Process> procs;
    struct stat ns {};
    // An exec's init is outside the sandbox's pid namespace, which is
    // the one it forks into.
    const std::string init_ns = "/proc/" + std::to_string(s.process().pid()) +
                                (s.spec().exec_of ? "/ns/pid_for_children" : "/ns/pid");
    if (!now->pids.empty() && ::stat(init_ns.c_str(), &ns) == 0)
      for (pid_t p : now->pids) {
        if (procs.size() == kTopMax) {
          reply["truncated"] = true;
          break;
        }
        if (auto pr = top::read_process(p, ns.st_ino)) procs.push_back(std::move(*pr));
      }
    size_t reading = 0, killed = 0, by_uid = 0;
    for (const auto& [tid, t] : top_jobs) {
      if (t.session == sid) ++(t.replied ? killed : reading);
      by_uid += t.uid == c.caller.uid;
    }
    std::optional<top::ArgvReader> reader;
    if (!procs.empty() && killed == 0 && reading < 2 && by_uid < kTopReadersPerUid &&
        top_jobs.size() < kTopReadersMax) {
      auto r = top::ArgvReader::start(procs);
      if (r)
        reader = std::move(*r);
      else
        log("top: " + r.error().what());
    }
    if (!reader) {
      // No reader: every process by its kernel name.
      if (!procs.empty()) reply["argv_incomplete"] = true;
      reply["processes"] = top::to_json(procs, {});
      return reply_ok(c, id, reply);
    }
    // The reader has its own copies of the /proc fds.
    for (auto& p : procs) p.dir.reset();
    const uint64_t tid = next_top++;
    const int fd = reader->fd();
    top_jobs.emplace(tid, TopJob{c.id, sid, c.caller.uid, id, std::move(reply), std::move(procs),
                                 std::move(*reader), Clock::now() + kTopArgvDeadline});
    ep(EPOLL_CTL_ADD, fd, EPOLLIN, tag(kTop, tid));
    return;
  }

  void op_attach(const Request& rq, const proto::Attach& m) {
    Conn& c = rq.c;
    Session& s = *rq.e->s;
    const uint64_t sid = s.id();
    if (s.spec().passed_stdio)
      return reply_err(c, rq.id,
                       invalid("session " + std::to_string(sid) +
                               " has passed stdio: its output goes to the client's own fds, "
                               "and there is nothing to attach to"));
    attach(c, sid, m);
    json reply = {{"session", sid},
                  {"stdout", {{"start", s.buffer(0).start()}, {"end", s.buffer(0).end()}}},
                  {"stderr", {{"start", s.buffer(1).start()}, {"end", s.buffer(1).end()}}},
                  {"pty", s.spec().pty},
                  {"state", s.finished() ? "exited" : "running"}};
    if (s.stdin_open()) {
      // Where stdin stands, for a client that takes over the writing.
      reply["stdin_window"] = kStdinHighWater;
      reply["stdin_consumed"] = s.stdin_consumed();
    }
    reply_ok(c, rq.id, reply);
    return pump(c);
  }

  void op_detach(const Request& rq, const proto::Detach&) {
    Conn& c = rq.c;
    const uint64_t sid = rq.e->s->id();
    c.attached.erase(sid);
    rq.e->conns.erase(c.id);
    c.owns.erase(sid);
    resume_if_caught_up(*rq.e);
    return reply_ok(c, rq.id);
  }

  void op_close_stdin(const Request& rq, const proto::CloseStdin&) {
    Session& s = *rq.e->s;
    if (!s.stdin_open()) return reply_err(rq.c, rq.id, invalid("stdin is not open"));
    s.close_stdin();
    service_stdin(*rq.e);
    return reply_ok(rq.c, rq.id);
  }

  void op_signal(const Request& rq, const proto::Signal& m) {
    Session& s = *rq.e->s;
    if (s.exited()) return reply_err(rq.c, rq.id, invalid("the session has exited"));
    // SIGKILL does not wait for the tree to die: the exit comes as usual.
    if (auto st = m.signal == SIGKILL ? s.process().kill_nowait() : s.process().signal(m.signal);
        !st)
      return reply_err(rq.c, rq.id, st.error());
    return reply_ok(rq.c, rq.id);
  }

  void op_resize(const Request& rq, const proto::Resize& m) {
    Session& s = *rq.e->s;
    if (s.exited()) return reply_ok(rq.c, rq.id);  // too late to matter
    if (auto st = s.process().resize(m.rows, m.cols); !st)
      return reply_err(rq.c, rq.id, st.error());
    return reply_ok(rq.c, rq.id);
  }

  void op_wait(const Request& rq, const proto::Wait& m) {
    Pending p;
    p.id = rq.id;
    p.session = rq.e->s->id();
    if (rq.e->s->finished()) return answer(rq.c, p, *rq.e);
    if (m.timeout_ms > 0) p.deadline = Clock::now() + std::chrono::milliseconds(m.timeout_ms);
    rq.c.pending.push_back(std::move(p));
  }

  void op_remove(const Request& rq, const proto::Remove& m) {
    Session& s = *rq.e->s;
    const uint64_t sid = s.id();
    if (!s.finished() && !m.force)
      return reply_err(rq.c, rq.id,
                       invalid("session " + std::to_string(sid) +
                               " is still running (kill it, or remove with force)"));
    reply_ok(rq.c, rq.id);
    remove_session(sid);
  }

  void service_stdin(SessionEntry& e) {
    bool empty = e.s->flush_stdin();
    int fd = e.s->stdin_fd();
    if (!empty && !e.stdin_registered && fd >= 0) {
      ep(EPOLL_CTL_ADD, fd, EPOLLOUT, tag(kStdin, e.s->id()));
      e.stdin_registered = true;
    } else if (empty && e.stdin_registered) {
      ep_del(fd);
      e.stdin_registered = false;
    }
    if (e.s->stdin_queued() <= kStdinHighWater) {
      for (uint64_t w : e.stdin_waiters) resume_reading(w);
      e.stdin_waiters.clear();
    }
    const uint64_t consumed = e.s->stdin_consumed();
    if (consumed > e.stdin_acked &&
        (empty || consumed - e.stdin_acked >= kStdinAckEvery || !e.s->stdin_open())) {
      e.stdin_acked = consumed;
      for (uint64_t cid : e.stdin_senders) {
        auto it = conns.find(cid);
        if (it == conns.end() || it->second->closing) continue;
        send_json(*it->second, proto::to_json(proto::StdinEvent{e.s->id(), consumed}));
        flush(*it->second);
      }
    }
  }

  void handle_data(Conn& c, const std::string& body) {
    auto d = proto::decode_data(body);
    if (!d) {
      send_json(c, proto::to_json(proto::ErrorEvent{std::nullopt, d.error()}));
      return;
    }
    auto it = sessions.find(d->session);
    Error err;
    if (d->stream != proto::StreamId::Stdin)
      err = invalid("clients send stdin data frames only");
    else if (it == sessions.end() || it->second.run_session)
      err = make_error(ErrorKind::NotFound, "no session " + std::to_string(d->session));
    else if (auto ok = may(c, *it->second.s, policy::Action::SessionAttach); !ok)
      err = ok.error();
    else if (auto q = it->second.s->queue_stdin(d->bytes); !q)
      err = q.error();
    else {
      SessionEntry& e = it->second;
      e.stdin_senders.insert(c.id);
      service_stdin(e);
      if (e.s->stdin_queued() > kStdinHighWater) {  // past the window: backpressure
        e.stdin_waiters.insert(c.id);
        c.reading = false;
        update_conn_events(c);
      }
      return;
    }
    send_json(c, proto::to_json(proto::ErrorEvent{d->session, err}));
  }

  // --- connections
  void accept_all() {
    for (;;) {
      int fd = ::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) log("accept: " + std::string(std::strerror(errno)));
        return;
      }
      Fd f(fd);
      if (conns.size() >= sc.max_clients) {
        std::string out;
        json e = {{"id", nullptr},
                  {"ok", false},
                  {"error", proto::to_json(make_error(ErrorKind::Limit, "too many clients"))}};
        (void)proto::encode(proto::FrameType::Control, dump(e), out);
        (void)::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
        continue;
      }
      auto c = std::make_unique<Conn>();
      c->id = next_conn++;
      c->fd = std::move(f);
      // Credentials that cannot be read would read as uid 0: such a
      // connection is closed, never served.
      socklen_t len = sizeof c->cred;
      auto pc = policy::peer_caller(fd);
      if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c->cred, &len) != 0 || !pc) {
        log("accept: cannot read the peer's credentials: " +
            (pc ? std::string(std::strerror(errno)) : pc.error().what()));
        continue;
      }
      c->caller = std::move(*pc);
      c->allowed = caller_allowed(c->caller, sc.socket_gid);
      c->dec.set_max_frame(static_cast<uint32_t>(sc.max_frame));
      c->created = c->last_frame = Clock::now();
      ep(EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLRDHUP, tag(kConn, c->id));
      conns.emplace(c->id, std::move(c));
    }
  }

  void close_conn(uint64_t cid) {
    auto it = conns.find(cid);
    if (it == conns.end()) return;
    Conn& c = *it->second;
    ep_del(c.fd.get());
    for (auto& [sid, a] : c.attached) {
      auto se = sessions.find(sid);
      if (se == sessions.end()) continue;
      se->second.conns.erase(cid);
      se->second.stdin_waiters.erase(cid);
      se->second.stdin_senders.erase(cid);
      resume_if_caught_up(se->second);
    }
    // Sessions started attached by this client may run on for
    // max_run_after_disconnect (0 = without limit).
    for (uint64_t sid : c.owns) {
      auto se = sessions.find(sid);
      if (se == sessions.end() || se->second.s->exited()) continue;
      if (sc.max_run_after_disconnect.count() > 0)
        se->second.s->kill_at = Clock::now() + sc.max_run_after_disconnect;
    }
    // A pending run is never answered now: it ends with its client.
    for (auto& p : c.pending)
      if (p.run) {
        auto se = sessions.find(p.session);
        if (se != sessions.end()) {
          if (!se->second.s->exited()) (void)se->second.s->process().kill_nowait();
          se->second.run_session = false;  // listed, retained like any other
        }
      }
    conns.erase(it);
  }

  // The frames read from a connection, in order, until it closes or is
  // stopped (a full stdin queue); the rest wait in its decoder.
  void handle_frames(Conn& c) {
    while (!c.closing && c.reading) {
      auto f = c.dec.next();
      if (!f) {  // framing is lost: answer once and end the connection
        reply_err(c, nullptr, f.error());
        c.closing = true;
        break;
      }
      if (!*f) break;
      if ((*f)->type == proto::FrameType::Control) {
        handle_control(c, (*f)->body);
      } else if (!c.hello) {
        reply_err(c, nullptr, invalid("send hello first"));
      } else {
        handle_data(c, (*f)->body);
      }
    }
    if (c.fds.size() > 0 && c.dec.buffered() == 0) c.fds.clear();
  }

  void on_conn(uint64_t cid, uint32_t events) {
    auto it = conns.find(cid);
    if (it == conns.end()) return;
    Conn& c = *it->second;
    if (events & EPOLLOUT) {
      flush(c);
      pump(c);
    }
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) && c.reading) {
      char buf[65536];
      alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 8)];
      size_t total = 0;
      bool eof = false;
      while (total < 4 * sizeof buf && c.reading && !c.closing) {
        iovec iov{buf, sizeof buf};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf;
        msg.msg_controllen = sizeof cbuf;
        ssize_t n = ::recvmsg(c.fd.get(), &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
          if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
          size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          for (size_t i = 0; i < nfd; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
            Fd owned(fd);
            if (c.fds.size() < kMaxFdsQueued) c.fds.push_back(std::move(owned));
          }
        }
        if (n <= 0) {
          eof = true;
          break;
        }
        total += static_cast<size_t>(n);
        c.last_frame = Clock::now();
        c.dec.feed(std::string_view(buf, static_cast<size_t>(n)));
        handle_frames(c);
      }
      flush(c);
      if (eof) {
        close_conn(cid);
        return;
      }
    }
    if (c.closing) {
      flush(c);
      if (c.queued() == 0 || (events & (EPOLLHUP | EPOLLERR))) close_conn(cid);
    } else if ((events & (EPOLLHUP | EPOLLERR)) && !(events & EPOLLIN)) {
      close_conn(cid);
    }
  }

  // Timers: hello/idle timeouts, wait timeouts, max_run_after_disconnect,
  // retention of finished sessions.
  void tick() {
    const auto now = Clock::now();
    // Timers are coarse (100 ms): a busy loop must not walk every session
    // and connection per event.
    if (now - last_tick < std::chrono::milliseconds(100)) return;
    last_tick = now;
    std::vector<uint64_t> drop;
    for (auto& [cid, c] : conns) {
      if (c->closing && c->queued() == 0)
        drop.push_back(cid);
      else if (!c->hello && now - c->created > sc.hello_timeout)
        drop.push_back(cid);
      else if (c->attached.empty() && c->pending.empty() && !c->events &&
               now - c->last_frame > sc.idle_timeout)
        drop.push_back(cid);
      for (auto p = c->pending.begin(); p != c->pending.end();) {
        if (p->deadline && *p->deadline <= now) {
          reply_err(*c, p->id, make_error(ErrorKind::Timeout, "session still running"));
          p = c->pending.erase(p);
        } else {
          ++p;
        }
      }
      flush(*c);
    }
    for (uint64_t cid : drop) {
      log("dropping client " + std::to_string(cid) + " (silent, idle or closing)");
      close_conn(cid);
    }
    std::vector<uint64_t> expired;
    for (auto& [sid, e] : sessions) {
      if (e.s->kill_at && *e.s->kill_at <= now && !e.s->exited()) {
        e.s->kill_at.reset();
        log("session " + std::to_string(sid) + ": max_run_after_disconnect reached, killing");
        (void)e.s->process().kill_nowait();
      }
      if (e.finished_handled && e.conns.empty() && !e.run_session &&
          now - e.s->finished_at >= sc.retention)
        expired.push_back(sid);
    }
    for (uint64_t sid : expired) remove_session(sid);
    std::vector<uint64_t> late;
    for (const auto& [tid, t] : top_jobs)
      if (!t.replied && t.deadline <= now) late.push_back(tid);
    for (uint64_t tid : late) finish_top(tid);
  }

  // A `top` job's reader exited, or its deadline came and it is killed: the
  // reply goes out with what it read, to a connection that may have gone
  // meanwhile. The job ends once its reader is reaped.
  void finish_top(uint64_t tid) {
    auto it = top_jobs.find(tid);
    if (it == top_jobs.end()) return;
    TopJob& t = it->second;
    const int fd = t.reader.fd();
    if (!t.replied) {
      t.replied = true;
      if (!t.reader.reap()) t.reader.kill();
      bool complete = true;
      auto argvs = t.reader.argvs(complete);
      t.reply["processes"] = top::to_json(t.procs, argvs);
      if (!complete) t.reply["argv_incomplete"] = true;
      t.procs.clear();
      if (auto c = conns.find(t.conn); c != conns.end() && !c->second->closing) {
        reply_ok(*c->second, t.id, std::move(t.reply));
        flush(*c->second);
      }
    }
    if (t.reader.reap()) {
      if (fd >= 0) ep_del(fd);
      top_jobs.erase(it);
    }
  }

  bool drained() const {
    for (const auto& [sid, e] : sessions)
      if (!e.finished_handled) return false;
    for (const auto& [cid, c] : conns)
      if (!c->closing && (c->queued() > 0 || fill_pending(*c))) return false;
    return true;
  }

  void begin_stop() {
    if (stopping) return;
    stopping = true;
    log("stopping: no longer accepting");
    ep_del(listener.get());
    listener.reset();
    if (!unlink_path.empty()) ::unlink(unlink_path.c_str());
    stop_deadline =
        Clock::now() +
        (sc.shutdown == ShutdownMode::Wait ? sc.shutdown_grace : std::chrono::milliseconds(0));
  }

  // The store the executors pull into is where the CLI pulls, loads and
  // removes too: its event log is followed from now. A store that does not
  // exist yet is not made for it (a service of host executors has none).
  void follow_store() {
    auto root = oci::resolve_state_dir(config.images.state_dir);
    auto f = root ? oci::StoreEventFollower::open(*root)
                  : Result<oci::StoreEventFollower>(fail(root.error()));
    if (!f) {
      store_note = "image events: none (" + f.error().what() + ")";
      return;
    }
    store_events = std::move(*f);
    ep(EPOLL_CTL_ADD, store_events->fd(), EPOLLIN, tag(kImages, 0));
  }
  std::string store_note;  // logged once the log is set

  Status run() {
    if (!store_note.empty()) log(store_note);
    ready();
    epoll_event evs[64];
    for (;;) {
      // Every payload gone is not enough: their last output and exit events
      // must reach the clients still attached (until the deadline).
      if (stopping && ((limits->in_use("sessions") == exec_starts.size() && drained()) ||
                       Clock::now() >= stop_deadline))
        break;
      // A flood of image events is read a slice per turn (oci/events.h).
      const bool more_images = store_events && store_events->pending();
      if (more_images) on_store_events();
      int n = ::epoll_wait(epoll.get(), evs, 64, more_images ? 0 : 100);
      if (n < 0 && errno != EINTR) return fail(sys_error("epoll_wait"));
      for (int i = 0; i < n; ++i) {
        uint64_t t = evs[i].data.u64;
        uint64_t id = t & ((1ULL << 56) - 1);
        switch (static_cast<Kind>(t >> 56)) {
          case kListen:
            if (!stopping) accept_all();
            break;
          case kSignal: {
            signalfd_siginfo si;
            while (::read(sigfd.get(), &si, sizeof si) == sizeof si) begin_stop();
            break;
          }
          case kConn:
            on_conn(id, evs[i].events);
            break;
          case kOut:
            on_output(id, 0);
            break;
          case kErr:
            on_output(id, 1);
            break;
          case kPid:
            on_exit(id);
            break;
          case kTop:
            finish_top(id);
            break;
          case kExecDone:
            on_exec_done();
            break;
          case kImages:
            on_store_events();
            break;
          case kStdin: {
            auto it = sessions.find(id);
            if (it != sessions.end()) service_stdin(it->second);
            break;
          }
        }
      }
      handle_resumed();
      tick();
    }
    // Exec starts still under way end within their deadline; what they
    // started is dropped with the other sessions' processes.
    for (auto& [xid, x] : exec_starts) x->thread.join();
    on_exec_done();
    // A copy may wait on its caller's fd for good: left to run until exit.
    for (auto& [cid, x] : copies) x->thread.detach();
    copies.clear();
    // Shutdown: end what still runs, tell the clients, remove every session
    // (which reaps it and removes its cgroup).
    for (auto& [sid, e] : sessions)
      if (!e.s->exited()) (void)e.s->process().kill_nowait();
    std::vector<uint64_t> ids;
    for (auto& [sid, e] : sessions) ids.push_back(sid);
    for (uint64_t sid : ids) remove_session(sid);
    // Every `top` still reading is answered with what it has.
    for (auto& [tid, t] : top_jobs) t.reader.kill();
    std::vector<uint64_t> tops;
    for (const auto& [tid, t] : top_jobs) tops.push_back(tid);
    for (uint64_t tid : tops) finish_top(tid);
    top_jobs.clear();
    for (auto& [cid, c] : conns) {
      send_json(*c, proto::to_json(proto::ShutdownEvent{}));
      flush(*c);
    }
    conns.clear();
    // Removed sessions may leave their sandboxes' last teardown to the
    // reaper: waited for, but not for ever (a tree stuck in an
    // uninterruptible wait ends with what it waits for).
    if (!Spawned::drain_retired_for(std::chrono::seconds(10)))
      log("stopping with sandboxes still on their way out");
    log("stopped");
    return {};
  }
};

// ---------------------------------------------------------------------------

Result<Fd> listen_unix(const std::string& path, uint32_t mode, uint32_t gid) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return fail(invalid("socket path too long: " + path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return fail(sys_error("socket"));
  // A socket file nobody accepts on is left over: replace it. A live one
  // belongs to another service.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail(invalid(path + " exists and is not a socket"));
    Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0)
      return fail(make_error(ErrorKind::Limit, "another service listens on " + path));
    ::unlink(path.c_str());
  }
  auto dir = path.substr(0, path.rfind('/'));
  if (!dir.empty()) ::mkdir(dir.c_str(), 0755);
  // Bind with a umask that leaves nobody but us access until chmod/chown.
  mode_t old = ::umask(0177);
  int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::umask(old);
  if (rc != 0) return fail(sys_error("bind " + path));
  if (::chown(path.c_str(), 0, gid) != 0 && ::geteuid() == 0)
    return fail(sys_error("chown " + path));
  if (::chmod(path.c_str(), mode) != 0) return fail(sys_error("chmod " + path));
  if (::listen(fd.get(), 1024) != 0) return fail(sys_error("listen " + path));
  return fd;
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;

void Server::set_logger(std::function<void(const std::string&)> log) {
  impl_->log = std::move(log);
}
void Server::set_ready(std::function<void()> ready) {
  impl_->ready = std::move(ready);
}

Result<std::unique_ptr<Server>> Server::create(Config config, Fd listener,
                                               std::string unlink_path) {
  auto impl = std::make_unique<Impl>();
  impl->config = std::move(config);
  impl->sc = impl->config.service;
  impl->unlink_path = std::move(unlink_path);
  impl->listener = std::move(listener);
  ::fcntl(impl->listener.get(), F_SETFL, ::fcntl(impl->listener.get(), F_GETFL) | O_NONBLOCK);
  // Every session holds several fds (pipes, pidfd, cgroup): use the whole
  // hard limit.
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
  // Every sandbox's init comes from this sealed memfd: a host where it cannot
  // be made (vm.memfd_noexec=2) runs nothing, which is said now.
  if (auto prog = init_program::fd(); !prog) return fail(prog.error());
  for (const auto& ec : impl->config.executors)
    impl->executors.emplace(ec.name, Executor::create(ec));
  // What a crashed predecessor left goes now, not at the first session.
  if (auto m = cgroups::Manager::shared()) (*m)->cleanup_stale_once();
  impl->epoll = Fd(::epoll_create1(EPOLL_CLOEXEC));
  if (!impl->epoll) return fail(sys_error("epoll_create1"));
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  impl->sigfd = Fd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!impl->sigfd) return fail(sys_error("signalfd"));
  impl->ep(EPOLL_CTL_ADD, impl->listener.get(), EPOLLIN, tag(kListen, 0));
  impl->ep(EPOLL_CTL_ADD, impl->sigfd.get(), EPOLLIN, tag(kSignal, 0));
  impl->exec_done = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl->exec_done) return fail(sys_error("eventfd"));
  impl->ep(EPOLL_CTL_ADD, impl->exec_done.get(), EPOLLIN, tag(kExecDone, 0));
  impl->follow_store();
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Status Server::run() {
  return impl_->run();
}

}  // namespace cloister
