// Scale tests of cloisterd (ctest label "slow"; tools/test.sh runs them):
// 1,000 concurrent sessions on this 2-core machine, and 10,000 sequential
// sessions with no growth in the service's fds, RSS or cgroups.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "../integration/service_support.h"
#include "isolate/spawn.h"

using namespace cloister;
using namespace cloister::testing;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

// Per-process cgroups with this prefix: one per sandbox, however many
// hierarchies it has a directory in (cgroup2, v1 memory and pids, ...).
int count_cgroups(const std::string& prefix) {
  std::set<std::string> names;
  auto m = cgroups::Manager::shared();
  if (!m) return 0;
  for (const auto& base : (*m)->base_paths())
    if (auto entries = read_dir(base))
      for (const auto& e : *entries)
        if (e.name.starts_with(prefix)) names.insert(e.name);
  return static_cast<int>(names.size());
}

TEST(ServiceScale, ThousandConcurrentSessions) {
  Daemon d("  max_sessions: 1000\n");
  constexpr int kSessions = 1000;
  auto t0 = std::chrono::steady_clock::now();
  // Four clients start 250 sessions each, pipelined: no reply is awaited
  // before the next request.
  std::vector<std::unique_ptr<Connection>> clients;
  for (int i = 0; i < 4; ++i) clients.push_back(connect_ok(d.socket));
  std::vector<uint64_t> sessions;
  for (auto& c : clients) {
    for (int i = 0; i < kSessions / 4; ++i)
      ASSERT_TRUE(c->send({{"op", "start"},
                           {"executor", "shell"},
                           {"detached", true},
                           {"stdin", true},
                           {"argv", {"sh", "-c", "read x; echo $x"}}}));
  }
  for (auto& c : clients) {
    for (int i = 0; i < kSessions / 4;) {
      auto m = c->next(120s);
      ASSERT_TRUE(m) << m.error().what();
      if (m->data || !m->control.contains("ok")) continue;
      ASSERT_TRUE(m->control["ok"].get<bool>()) << m->control.dump();
      sessions.push_back(m->control["session"]);
      ++i;
    }
  }
  auto started = std::chrono::steady_clock::now();
  auto list = clients[0]->call({{"op", "list"}});
  ASSERT_TRUE(list);
  int running = 0;
  for (auto& s : (*list)["sessions"]) running += s["state"] == "running";
  // The 1,001st is refused with LIMIT while they run.
  auto over = clients[0]->call({{"op", "start"}, {"executor", "shell"}, {"argv", {"true"}}});
  ASSERT_FALSE(over);
  EXPECT_EQ(over.error().kind, ErrorKind::Limit);
  EXPECT_EQ(running, kSessions) << "each waits for its stdin: all run at once";
  // Now end them: a line, then EOF, to each.
  for (size_t i = 0; i < sessions.size(); ++i) {
    auto& c = clients[i / (kSessions / 4)];
    ASSERT_TRUE(c->send_stdin(sessions[i], std::to_string(i) + "\n"));
    ASSERT_TRUE(c->call({{"op", "close_stdin"}, {"session", sessions[i]}}));
  }
  for (size_t i = 0; i < sessions.size(); ++i) {
    auto& c = clients[i / (kSessions / 4)];
    auto w = c->call({{"op", "wait"}, {"session", sessions[i]}});
    ASSERT_TRUE(w) << w.error().what();
    ASSERT_EQ((*w)["status"]["exit_code"], 0);
  }
  // Each printed its own line: stdout ended at its length.
  auto after = clients[0]->call({{"op", "list"}});
  ASSERT_TRUE(after);
  std::map<uint64_t, uint64_t> ends;
  for (auto& s : (*after)["sessions"]) ends[s["session"]] = s["stdout"]["end"];
  for (size_t i = 0; i < sessions.size(); ++i) {
    ASSERT_EQ(ends[sessions[i]], std::to_string(i).size() + 1);
    ASSERT_TRUE(clients[0]->call({{"op", "remove"}, {"session", sessions[i]}}));
  }
  auto done = std::chrono::steady_clock::now();
  auto ms = [](auto d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
  std::printf("1000 concurrent: started in %lld ms (%d running at once), all done in %lld ms\n",
              static_cast<long long>(ms(started - t0)), running,
              static_cast<long long>(ms(done - t0)));
  // The sandboxes' teardown runs in the background once their exits are
  // reported; what is left after it is at most the executor's warm
  // sandboxes (its next ones, set up ahead), which the daemon takes along
  // when it stops.
  const int warm = static_cast<int>(cloister::Sandbox::kWarmInits);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (count_cgroups(std::to_string(d.pid) + "-") > warm &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::printf("torn down %lld ms after the last exit was reported\n",
              static_cast<long long>(ms(std::chrono::steady_clock::now() - done)));
  EXPECT_LE(count_cgroups(std::to_string(d.pid) + "-"), warm);
  EXPECT_EQ(d.stop(), 0);
  EXPECT_EQ(count_cgroups(std::to_string(d.pid) + "-"), 0);
}

TEST(ServiceScale, TenThousandSequentialSessionsDoNotGrow) {
  Daemon d;
  auto c = connect_ok(d.socket);
  auto one = [&](int i) {
    auto r = c->call({{"op", "run"}, {"executor", "shell"}, {"argv", {"echo", std::to_string(i)}}});
    ASSERT_TRUE(r) << r.error().what();
    ASSERT_EQ((*r)["stdout"], std::to_string(i) + "\n");
  };
  // Warm up (allocator arenas, lazily opened files), then measure.
  for (int i = 0; i < 200; ++i) one(i);
  // Let the daemon's background work (the warm sandboxes being set up, the
  // last teardown) finish before each count: a count is taken once two
  // 100 ms apart agree (a warm init mid-setup holds fds of its own; on a
  // loaded machine 200 ms did not always suffice).
  auto settled_fds = [&] {
    int a = count_fds(d.pid);
    for (int i = 0; i < 50; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      int b = count_fds(d.pid);
      if (a == b) return a;
      a = b;
    }
    return a;
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const int fds0 = settled_fds();
  const uint64_t rss0 = rss_kib(d.pid);
  const int kRuns = 10'000;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRuns; ++i) {
    one(i);
    if (HasFatalFailure()) return;
  }
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const int fds1 = settled_fds();
  const uint64_t rss1 = rss_kib(d.pid);
  std::printf("10000 sequential: %.1f s (%.2f ms each); fds %d -> %d; RSS %llu -> %llu KiB\n", secs,
              secs * 1000 / kRuns, fds0, fds1, static_cast<unsigned long long>(rss0),
              static_cast<unsigned long long>(rss1));
  EXPECT_LE(fds1, fds0) << "fds grew";
  EXPECT_LT(rss1, rss0 + 2048) << "RSS grew by more than 2 MiB";
  EXPECT_LE(count_cgroups(std::to_string(d.pid) + "-"),
            static_cast<int>(cloister::Sandbox::kWarmInits))
      << "more than the warm sandboxes";
  EXPECT_EQ((*c->call({{"op", "list"}}))["sessions"].size(), 0u);
  c.reset();
  EXPECT_EQ(d.stop(), 0);
  EXPECT_EQ(count_cgroups(std::to_string(d.pid) + "-"), 0);
}

}  // namespace
