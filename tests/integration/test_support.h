// Shared helpers of the integration tests: an executor config that sees the
// probe binary, one-call runs, and host-side checks.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "../unit/temp_dir.h"
#include "isolate/userns.h"
#include "oci/load.h"
#include "oci/store.h"
#include "runtime/executor.h"

namespace cloister::testing {

inline ExecutorConfig base_config() {
  ExecutorConfig c;
  c.name = "test";
  c.host_paths = kDefaultHostPaths;
  c.masked_paths = kDefaultMaskedPaths;
  c.default_env = {{"PATH", "/usr/bin:/bin"}};
  c.volumes.push_back({CLOISTER_BIN_DIR, "/probe", true});
  return c;
}

struct RunResult {
  std::string out, err;
  ExitStatus status;
};

inline std::unique_ptr<Process> make_process(const ExecutorConfig& cfg,
                                             std::vector<std::string> argv, bool stdin_open = false,
                                             std::string work_dir = "",
                                             std::chrono::milliseconds timeout = {}) {
  auto exec = Executor::create(cfg);
  EXPECT_TRUE(exec) << exec.error().what();
  if (!exec) return nullptr;
  ExecRequest req;
  req.argv = std::move(argv);
  req.stdin_open = stdin_open;
  req.work_dir = std::move(work_dir);
  req.timeout = timeout;
  auto p = (*exec)->exec(std::move(req));
  EXPECT_TRUE(p) << p.error().what();
  return p ? std::move(*p) : nullptr;
}

inline RunResult collect(Process& p) {
  RunResult r;
  for (;;) {
    auto c = p.read();
    EXPECT_TRUE(c) << c.error().what();
    if (!c || !*c) break;
    ((*c)->stream == Stream::Stdout ? r.out : r.err) += (*c)->data;
  }
  return r;
}

inline RunResult run(const ExecutorConfig& cfg, std::vector<std::string> argv,
                     std::chrono::milliseconds timeout = {}, std::string work_dir = "") {
  auto p = make_process(cfg, std::move(argv), false, std::move(work_dir), timeout);
  if (!p) return {};
  auto s = p->start();
  EXPECT_TRUE(s) << s.error().what();
  if (!s) return {};
  RunResult r = collect(*p);
  auto st = p->wait();
  EXPECT_TRUE(st) << st.error().what();
  if (st) r.status = *st;
  return r;
}

// Runs argv through one executor (its next sandbox: cold, template or warm,
// as the executor's history has it) and returns what it printed.
inline RunResult run_on(const Executor& exec, std::vector<std::string> argv,
                        std::chrono::milliseconds timeout = {}) {
  ExecRequest req;
  req.argv = std::move(argv);
  req.timeout = timeout;
  auto p = exec.exec(std::move(req));
  EXPECT_TRUE(p) << p.error().what();
  if (!p) return {};
  auto s = (*p)->start();
  EXPECT_TRUE(s) << s.error().what();
  if (!s) return {};
  RunResult r = collect(**p);
  auto st = (*p)->wait();
  EXPECT_TRUE(st) << st.error().what();
  if (st) r.status = *st;
  return r;
}

// Starts argv through exec and reads its stdout into *out until it holds
// marker; null (a test failure) if it ends first.
inline std::unique_ptr<Process> start_until(const Executor& exec, ExecRequest req,
                                            const std::string& marker, std::string* out) {
  auto p = exec.exec(std::move(req));
  EXPECT_TRUE(p) << p.error().what();
  if (!p) return nullptr;
  auto s = (*p)->start();
  EXPECT_TRUE(s) << s.error().what();
  if (!s) return nullptr;
  while (out->find(marker) == std::string::npos) {
    auto c = (*p)->read(Stream::Stdout);
    EXPECT_TRUE(c && !c->empty()) << "ended before printing " << marker << ": " << *out;
    if (!c || c->empty()) return nullptr;
    *out += *c;
  }
  return std::move(*p);
}

inline std::unique_ptr<Process> start_until(const Executor& exec, std::vector<std::string> argv,
                                            const std::string& marker, std::string* out) {
  ExecRequest req;
  req.argv = std::move(argv);
  return start_until(exec, std::move(req), marker, out);
}

inline RunResult run_ok(const ExecutorConfig& cfg, std::vector<std::string> argv,
                        std::chrono::milliseconds timeout = {}, std::string work_dir = "") {
  RunResult r = run(cfg, std::move(argv), timeout, std::move(work_dir));
  EXPECT_EQ(r.status.exit_code, 0) << "stderr: " << r.err;
  return r;
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

// The host ids of uid and gid 0 inside a default sandbox (its user
// namespace, isolate/userns.h).
// The suite run by an ordinary user (tools/test.sh's unprivileged group):
// its sandboxes are unprivileged (SpawnSpec::unprivileged).
inline bool unprivileged() {
  return ::geteuid() != 0;
}
#define SKIP_IF_UNPRIVILEGED(why)                                    \
  do {                                                               \
    if (unprivileged()) GTEST_SKIP() << "unprivileged run: " << why; \
  } while (0)

// An unprivileged run with a cgroup delegated to its user
// (tests/unprivileged/run.sh --delegate): the library's manager works below
// bases this user may write.
inline bool delegated_cgroup() {
  auto m = cgroups::Manager::shared();
  return m && (*m)->writable();
}
#define SKIP_WITHOUT_LIMITS()                                                                \
  do {                                                                                       \
    if (unprivileged() && !delegated_cgroup())                                               \
      GTEST_SKIP() << "unprivileged run: a limit needs a delegated cgroup, which this user " \
                      "lacks (tests/unprivileged/run.sh --delegate has one)";                \
  } while (0)

// The host ids of the sandboxes' root: the default range's base, or for an
// ordinary user its own ids.
inline uid_t sandbox_root_uid() {
  if (unprivileged()) return ::geteuid();
  auto m = userns::default_map();
  return m ? m->uid_base : 0;
}
inline gid_t sandbox_root_gid() {
  if (unprivileged()) return ::getegid();
  auto m = userns::default_map();
  return m ? m->gid_base : 0;
}
// Hands a host tree to the sandboxes' root, as an administrator does for a
// volume a payload writes or reads that root alone may: owned by the
// mapped ids (a payload's root is not host root).
inline void give_to_sandbox(const std::string& path) {
  if (unprivileged()) return;  // the user's own files are its sandboxes' root's
  const std::string cmd = "chown -R " + std::to_string(sandbox_root_uid()) + ":" +
                          std::to_string(sandbox_root_gid()) + " '" + path + "'";
  if (std::system(cmd.c_str()) != 0) ADD_FAILURE() << cmd;
}

// Whether the directory's filesystem can be idmapped on this kernel (tmpfs
// needs 6.3; the test VM runs Debian's 6.1).
inline bool idmap_supported(const std::string& dir) {
  auto m = userns::default_map();
  if (!m) return false;
  auto ns = userns::make(*m);
  if (!ns) return false;
  Fd tree(::open_tree(AT_FDCWD, dir.c_str(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC));
  if (!tree) return false;
  struct mount_attr attr {};
  attr.attr_set = MOUNT_ATTR_IDMAP;
  attr.userns_fd = static_cast<uint64_t>(ns->get());
  return ::mount_setattr(tree.get(), "", AT_EMPTY_PATH, &attr, sizeof attr) == 0;
}

// Open fds of a process, but for network namespaces: the library keeps a few
// (network::NetnsPool: its home namespace and up to two ready or being made),
// and their number moves on its own. *netns gets how many those were.
inline int count_fds(pid_t pid, int* netns = nullptr) {
  int n = 0, ns = 0;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  const int own = d ? ::dirfd(d) : -1;
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    if (e->d_name[0] == '.') continue;
    if (pid == ::getpid() && std::atoi(e->d_name) == own) continue;
    char target[64] = {};
    ::readlink((dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
    (std::string_view(target).starts_with("net:[") ? ns : n)++;
  }
  if (d) ::closedir(d);
  if (netns) *netns = ns;
  return n;
}

// Runs a shell command on the host (not in a sandbox) and returns its
// stdout; a non-zero exit fails the test.
inline std::string shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  while (p && !std::feof(p)) out.append(buf, std::fread(buf, 1, sizeof buf, p));
  int rc = p ? ::pclose(p) : -1;
  EXPECT_EQ(rc, 0) << cmd << "\n" << out;
  return out;
}

// Sandbox inits that are children of this process (those of other runtimes
// on the host are not ours). A warm init is handed to the pool as soon as it
// is cloned and sent its setup, and sets itself up from there: until its
// exec it is a copy of us, and until its first step it is named for its
// memfd. So an init is known by its argv[0], and a child of ours that is
// neither an init nor a zombie yet is waited for (2 s at most).
inline int count_own_inits() {
  const std::string ppid = "PPid:\t" + std::to_string(::getpid()) + "\n";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (;;) {
    int inits = 0;
    bool unsettled = false;
    DIR* d = ::opendir("/proc");
    while (dirent* e = d ? ::readdir(d) : nullptr) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      const std::string dir = std::string("/proc/") + e->d_name;
      const std::string status = read_text(dir + "/status");
      if (status.find(ppid) == std::string::npos) continue;
      if (read_text(dir + "/cmdline").starts_with(std::string_view("cloister-init\0", 14)))
        ++inits;
      else if (status.find("State:\tZ") == std::string::npos)
        unsettled = true;
    }
    if (d) ::closedir(d);
    if (!unsettled || std::chrono::steady_clock::now() > deadline) return inits;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Zombies named comm whose parent is `parent` (a zombie keeps its comm,
// not its command line).
inline std::vector<pid_t> zombies_of(pid_t parent, std::string_view comm) {
  std::vector<pid_t> out;
  const std::string ppid = "\nPPid:\t" + std::to_string(parent) + "\n";
  DIR* d = ::opendir("/proc");
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const std::string dir = std::string("/proc/") + e->d_name;
    const std::string status = read_text(dir + "/status");
    if (status.find(ppid) == std::string::npos || status.find("State:\tZ") == std::string::npos)
      continue;
    if (read_text(dir + "/comm") == std::string(comm) + "\n") out.push_back(std::atoi(e->d_name));
  }
  if (d) ::closedir(d);
  return out;
}

// Processes on the host whose command line (NUL-separated) starts with cmdline.
inline int count_host_processes(std::string_view cmdline) {
  int n = 0;
  DIR* d = ::opendir("/proc");
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::string text = read_text(std::string("/proc/") + e->d_name + "/cmdline");
    if (text.compare(0, cmdline.size(), cmdline) == 0) ++n;
  }
  if (d) ::closedir(d);
  return n;
}

// A test image: `layers` (a shell script run in dir) makes the layer
// directories, tools/oci-build.py lays them out as an OCI image with
// `build_args`, and the image is loaded into a store at dir/store, whose path
// is returned ("" and a test failure when a step fails).
inline std::string load_test_image(const std::string& dir, const std::string& layers,
                                   const std::string& build_args) {
  shell("set -e; cd " + dir + "; " + layers +
        "; python3 " CLOISTER_SOURCE_DIR "/tools/oci-build.py layout " + build_args +
        " >/dev/null");
  const std::string state = dir + "/store";
  auto store = oci::Store::open(state);
  EXPECT_TRUE(store) << store.error().what();
  if (!store) return "";
  auto r = oci::load_images(*store, dir + "/layout", "");
  EXPECT_TRUE(r) << r.error().what();
  return r ? state : "";
}

}  // namespace cloister::testing
