// Integration-test helpers for cloisterd: the real binary on a temporary
// socket and config, raw protocol clients, and measurements of the service
// process (/proc/PID/fd, RSS).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "runtime/client.h"
#include "runtime/protocol.h"
#include "test_support.h"

extern char** environ;

namespace cloister::testing {

// extra_executors are appended to the executors list, extra_top to the
// config's top level (an images: section, say).
inline std::string service_config(const std::string& dir, const std::string& extra_service = "",
                                  const std::string& extra_executors = "",
                                  const std::string& extra_top = "") {
  return "executors:\n"
         "  - name: shell\n"
         "    kind: host\n"
         "    default_env: { PATH: /usr/bin:/bin }\n"
         "    tmpfs: { /tmp: \"rw,size=16m\" }\n"
         "    volumes: [\"" CLOISTER_BIN_DIR ":/probe:ro\"]\n" +
         extra_executors + extra_top +
         "service:\n"
         "  socket: " +
         dir +
         "/cloister.sock\n"
         "  log_dir: " +
         dir + "/logs\n" + extra_service;
}

// cloisterd started on a fresh temporary socket; stopped with SIGTERM (and
// reaped) on destruction.
class Daemon {
 public:
  explicit Daemon(const std::string& extra_service = "", const std::string& extra_executors = "",
                  const std::string& extra_top = "") {
    socket = dir.path + "/cloister.sock";
    config = dir.path + "/cloister.yaml";
    write_text(config, service_config(dir.path, extra_service, extra_executors, extra_top));
    std::string bin = CLOISTER_BIN_DIR "/cloisterd";
    std::string log = dir.path + "/cloisterd.log";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    const char* argv[] = {bin.c_str(), "--config", config.c_str(), nullptr};
    // No NOTIFY_SOCKET: this is not systemd.
    std::vector<std::string> env_s;
    std::vector<char*> env;
    for (char** e = environ; *e; ++e)
      if (std::string_view(*e).rfind("NOTIFY_SOCKET=", 0) != 0 &&
          std::string_view(*e).rfind("LISTEN_", 0) != 0)
        env.push_back(*e);
    env.push_back(nullptr);
    EXPECT_EQ(::posix_spawn(&pid, bin.c_str(), &fa, nullptr, const_cast<char**>(argv), env.data()),
              0);
    posix_spawn_file_actions_destroy(&fa);
    for (int i = 0; i < 500; ++i) {  // up to 5 s for the socket
      if (auto c = Connection::connect(socket)) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "cloisterd did not come up: " << read_text(log);
  }
  ~Daemon() { stop(); }
  // SIGTERM and reap; returns the exit status.
  int stop(int sig = SIGTERM) {
    if (pid <= 0) return -1;
    ::kill(pid, sig);
    int st = 0;
    ::waitpid(pid, &st, 0);
    pid = -1;
    return st;
  }
  std::string log() const { return read_text(dir.path + "/cloisterd.log"); }

  TempDir dir;
  std::string socket, config;
  pid_t pid = -1;
};

// Runs body in a forked child as uid (gid = uid unless given, with these
// supplementary groups) and returns what body returns: its checks as bits,
// so that a failure says which. 100: the switch failed; 200: no exit.
inline int as_user(uid_t uid, const std::function<int()>& body, std::vector<gid_t> groups = {},
                   gid_t gid = static_cast<gid_t>(-1)) {
  pid_t child = ::fork();
  if (child == 0) {
    if (::setgroups(groups.size(), groups.data()) != 0 ||
        ::setgid(gid == static_cast<gid_t>(-1) ? uid : gid) != 0 || ::setuid(uid) != 0)
      ::_exit(100);
    ::_exit(body());
  }
  int st = 0;
  while (::waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 200;
}
constexpr uid_t kNobody = 65534;
// Service settings for tests of other callers: nobody (in the socket's
// group, nogroup) may get the shell executor and run what pattern matches.
inline std::string nobody_may_run(const std::string& pattern) {
  return "  socket_group: nogroup\n"
         "callers:\n"
         "  - users: [nobody]\n"
         "    exec.get: [shell]\n"
         "    exec.run: [\"" +
         pattern + "\"]\n";
}

inline std::unique_ptr<Connection> connect_ok(const std::string& socket) {
  auto c = Connection::connect(socket);
  EXPECT_TRUE(c) << c.error().what();
  return c ? std::move(*c) : nullptr;
}

// A raw socket, for frames no client library would send.
inline Fd raw_connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  return fd;
}

inline void raw_send(int fd, const std::string& bytes) {
  EXPECT_TRUE(write_all(fd, bytes));
}

inline std::string control_frame(const std::string& json) {
  std::string out;
  EXPECT_TRUE(protocol::encode(protocol::FrameType::Control, json, out));
  return out;
}

// Reads frames until one control frame arrives; "" when the peer closed.
inline std::string raw_reply(int fd, int timeout_ms = 5000) {
  protocol::Decoder dec(64u << 20);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    auto f = dec.next();
    if (f && *f && (*f)->type == protocol::FrameType::Control) return (*f)->body;
    if (f && *f) continue;
    pollfd p{fd, POLLIN, 0};
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    deadline - std::chrono::steady_clock::now())
                                    .count());
    if (left <= 0 || ::poll(&p, 1, left) <= 0) return "(timeout)";
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return "";
    dec.feed(std::string_view(buf, static_cast<size_t>(n)));
  }
}

// True when the peer has closed (read gives EOF or ECONNRESET) within timeout.
inline bool closed_by_peer(int fd, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    deadline - std::chrono::steady_clock::now())
                                    .count());
    if (left <= 0 || ::poll(&p, 1, left) <= 0) return false;
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
  }
}

inline uint64_t rss_kib(pid_t pid) {
  std::string s = read_text("/proc/" + std::to_string(pid) + "/status");
  auto at = s.find("VmRSS:");
  return at == std::string::npos ? 0 : std::stoull(s.substr(at + 6));
}

inline int count_inits() {
  int inits = 0;
  DIR* d = ::opendir("/proc");
  while (dirent* e = d ? ::readdir(d) : nullptr)
    if (read_text(std::string("/proc/") + e->d_name + "/comm") == "cloister-init\n") ++inits;
  if (d) ::closedir(d);
  return inits;
}

// Runs a shell command line, returns its exit code (and output in *out).
inline int sh(const std::string& cmd, std::string* out = nullptr) {
  std::string full = cmd + (out ? "" : " >/dev/null 2>&1");
  FILE* f = ::popen(full.c_str(), "r");
  if (!f) return -1;
  char buf[4096];
  size_t n;
  std::string text;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  int st = ::pclose(f);
  if (out) *out = text;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

}  // namespace cloister::testing
