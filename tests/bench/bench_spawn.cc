// Start->exit latency of /bin/true: a plain fork+exec+wait, and the library
// call (Executor::exec + start + wait) with full isolation, in one process so
// that both see the same machine state; back to back, then with 5 ms idle
// before each run (both methods alike); and an exec of /bin/true into a
// running sandbox (ExecRequest::join). Prints one line per method:
//   METHOD runs=N p50_ms=... p99_ms=... mean_ms=...
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "isolate/spawn.h"
#include "runtime/config.h"
#include "runtime/executor.h"

using namespace cloister;
using Clock = std::chrono::steady_clock;

namespace {

void report(const char* name, std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  double sum = 0;
  for (double v : ms) sum += v;
  auto pct = [&](double p) {
    return ms[std::min(ms.size() - 1, static_cast<size_t>(p * ms.size()))];
  };
  std::printf("%s runs=%zu p50_ms=%.3f p99_ms=%.3f mean_ms=%.3f\n", name, ms.size(), pct(0.50),
              pct(0.99), sum / ms.size());
}

// gap: idle time before each run, so that work a method leaves in the
// background (a sandbox's teardown, the next one's setup) is done by then,
// as between the requests of a service that is not saturated. 0: back to
// back, where that work competes with the next run.
std::vector<double> measure(int runs, int warmup, const std::function<bool()>& once,
                            std::chrono::milliseconds gap = {}) {
  std::vector<double> out;
  for (int i = 0; i < runs + warmup; ++i) {
    if (gap.count()) std::this_thread::sleep_for(gap);
    auto t0 = Clock::now();
    if (!once()) std::exit(1);
    auto t1 = Clock::now();
    if (i >= warmup) out.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = argc > 1 ? std::atoi(argv[1]) : 500;
  const char* config_path = argc > 2 ? argv[2] : nullptr;

  auto fork_exec = [] {
    pid_t pid = ::fork();
    if (pid == 0) {
      char* const args[] = {const_cast<char*>("/bin/true"), nullptr};
      ::execv("/bin/true", args);
      ::_exit(127);
    }
    int st;
    return pid > 0 && ::waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  };
  report("fork+exec", measure(runs, 20, fork_exec));

  ExecutorConfig cfg;
  if (config_path) {
    auto c = load_config(config_path);
    if (!c || c->executors.empty()) {
      std::fprintf(stderr, "config: %s\n", c ? "no executor" : c.error().what().c_str());
      return 1;
    }
    cfg = c->executors.front();
  } else {
    cfg.name = "bench";
    cfg.host_paths = kDefaultHostPaths;
    cfg.masked_paths = kDefaultMaskedPaths;
    cfg.default_env = {{"PATH", "/usr/bin:/bin"}};
  }
  auto exec = Executor::create(cfg);
  if (!exec) {
    std::fprintf(stderr, "executor: %s\n", exec.error().what().c_str());
    return 1;
  }
  auto library = [&] {
    ExecRequest req;
    req.argv = {"/bin/true"};
    auto p = (*exec)->exec(std::move(req));
    if (!p || !(*p)->start()) return false;
    auto st = (*p)->wait();
    return st && st->exit_code == 0;
  };
  report("libcloister", measure(runs, 20, library));
  using std::chrono::milliseconds;
  report("fork+exec-spaced", measure(runs, 20, fork_exec, milliseconds(5)));
  report("libcloister-spaced", measure(runs, 20, library, milliseconds(5)));
  // `exec` into a running sandbox: a joined init per run (its setns, its
  // credential steps, the move of the init out of the exec's cgroup).
  ExecRequest session_req;
  session_req.argv = {"/bin/sleep", "1000"};
  auto session = (*exec)->exec(std::move(session_req));
  if (!session || !(*session)->start()) {
    std::fprintf(stderr, "session: %s\n",
                 session ? "start failed" : session.error().what().c_str());
    return 1;
  }
  auto joined = [&] {
    ExecRequest req;
    req.argv = {"/bin/true"};
    req.join = session->get();
    auto p = (*exec)->exec(std::move(req));
    if (!p || !(*p)->start()) return false;
    auto st = (*p)->wait();
    return st && st->exit_code == 0;
  };
  report("libcloister-exec-join", measure(runs, 20, joined));
  (void)(*session)->close(true);
  session->reset();
  // The executor's warm inits go with it; their teardown (and their cgroups')
  // finishes before we exit, so that the bench leaves nothing behind.
  exec->reset();
  Spawned::drain_retired();
}
