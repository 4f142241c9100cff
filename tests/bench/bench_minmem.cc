// The smallest memory_limit at which `true` still runs in the host executor
// (the full sandbox: init, mounts, seccomp, ...). Binary search between 64 KiB
// and 64 MiB in 4 KiB steps; a limit passes when N runs out of N exit 0.
// Prints the figure and how reliable it and 1 MiB more are.
// Usage: cloister_bench_minmem [RUNS_PER_PROBE]   (root)
#include <cstdio>
#include <cstdlib>

#include "isolate/spawn.h"
#include "runtime/config.h"
#include "runtime/executor.h"

using namespace cloister;

namespace {

bool true_runs(uint64_t limit) {
  ExecutorConfig cfg;
  cfg.name = "minmem";
  cfg.host_paths = kDefaultHostPaths;
  cfg.masked_paths = kDefaultMaskedPaths;
  cfg.memory_limit = limit;
  auto exec = Executor::create(cfg);
  if (!exec) {
    std::fprintf(stderr, "executor: %s\n", exec.error().what().c_str());
    std::exit(1);
  }
  ExecRequest req;
  req.argv = {"/bin/true"};
  auto p = (*exec)->exec(req);
  if (!p || !(*p)->start()) return false;
  auto st = (*p)->wait();
  return st && st->exit_code == 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 10;
  auto passes = [&](uint64_t limit) {
    for (int i = 0; i < n; ++i)
      if (!true_runs(limit)) return false;
    return true;
  };
  uint64_t lo = 64 << 10, hi = 64 << 20;
  if (passes(lo) || !passes(hi)) {
    std::fprintf(stderr, "the edge is not between %llu and %llu bytes\n",
                 static_cast<unsigned long long>(lo), static_cast<unsigned long long>(hi));
    return 1;
  }
  while (hi - lo > 4096) {
    uint64_t mid = (lo + (hi - lo) / 2) & ~uint64_t{4095};
    if (mid <= lo) mid = lo + 4096;
    (passes(mid) ? hi : lo) = mid;
  }
  int ok = 0, ok_margin = 0;
  for (int i = 0; i < 50; ++i) ok += true_runs(hi);
  for (int i = 0; i < 50; ++i) ok_margin += true_runs(hi + (1 << 20));
  auto m = cgroups::Manager::shared();
  std::printf(
      "smallest memory_limit for true in the host executor (%s): %llu KiB; %d/50 runs ok "
      "there, %d/50 with 1 MiB more\n",
      m ? std::string(cgroups::layout_name((*m)->layout())).c_str() : "?",
      static_cast<unsigned long long>(hi >> 10), ok, ok_margin);
  Spawned::drain_retired();  // the sandboxes' teardown ends before we do
  return 0;
}
