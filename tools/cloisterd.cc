// cloisterd: the service. Loads the config, takes its socket from systemd
// (socket activation) or makes it, tells systemd it is ready, and runs the
// server's event loop (runtime/server.h) until SIGTERM.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>

#include "runtime/config.h"
#include "runtime/server.h"

using namespace cloister;

namespace {

void log_line(const std::string& line) {
  // journald adds its own timestamps; a terminal gets ours.
  if (::getenv("JOURNAL_STREAM")) {
    std::fprintf(stderr, "%s\n", line.c_str());
    return;
  }
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%H:%M:%S", std::localtime(&t));
  std::fprintf(stderr, "cloisterd %s %s\n", buf, line.c_str());
}

int fail_with(const Error& e) {
  std::fprintf(stderr, "cloisterd: %s: %s\n", std::string(kind_name(e.kind)).c_str(),
               e.what().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = "/etc/cloister/cloister.yaml";
  std::string socket;
  CLI::App app{"cloisterd: the cloister service"};
  app.set_version_flag("--version", "cloisterd 0.1.0");
  app.add_option("--config,-c", config_path, "config file")->capture_default_str();
  app.add_option("--socket", socket, "listen here (overrides service.socket)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  auto config = load_config(config_path);
  if (!config) return fail_with(config.error());
  if (!socket.empty()) config->service.socket = socket;

  Fd listener;
  std::string unlink_path;
  int n = ::sd_listen_fds(1);
  if (n > 1)
    return fail_with(invalid("systemd passed " + std::to_string(n) + " sockets; want one"));
  if (n == 1) {
    if (::sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, nullptr, 0) <= 0)
      return fail_with(invalid("the socket from systemd is not a listening Unix stream socket"));
    listener = Fd(SD_LISTEN_FDS_START);
    ::fcntl(listener.get(), F_SETFD, FD_CLOEXEC);
    // The socket's group (SocketGroup=) is the group whose members may call.
    sockaddr_un addr{};
    socklen_t len = sizeof addr;
    struct stat st {};
    if (::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
        addr.sun_path[0] && ::stat(addr.sun_path, &st) == 0)
      config->service.socket_gid = st.st_gid;
    log_line("listening on the socket from systemd");
  } else {
    auto fd = listen_unix(config->service.socket, config->service.socket_mode,
                          config->service.socket_gid);
    if (!fd) return fail_with(fd.error());
    listener = std::move(*fd);
    unlink_path = config->service.socket;
    log_line("listening on " + unlink_path);
  }

  auto server = Server::create(std::move(*config), std::move(listener), unlink_path);
  if (!server) return fail_with(server.error());
  (*server)->set_logger(log_line);
  (*server)->set_ready([] { ::sd_notify(0, "READY=1\nSTATUS=accepting"); });
  auto r = (*server)->run();
  ::sd_notify(0, "STOPPING=1");
  if (!r) return fail_with(r.error());
  return 0;
}
