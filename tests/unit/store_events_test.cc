// The image store's event log (oci/events.h): what the store's writers
// append, a follower reads once, in order, across rotations.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "oci/events.h"
#include "oci/store.h"
#include "temp_dir.h"

namespace cloister::oci {
namespace {

using Dir = cloister::testing::TempDir;

std::vector<std::string> images_of(const std::vector<StoreEvent>& evs) {
  std::vector<std::string> out;
  for (const auto& e : evs) out.push_back(e.action + " " + e.image);
  return out;
}

TEST(StoreEvents, FollowedFromTheEndInOrder) {
  Dir d;
  ASSERT_TRUE(record_store_event(d.path, {"pulled", "old/one:1", "sha256:aa", {}}));
  auto f = StoreEventFollower::open(d.path);
  ASSERT_TRUE(f) << f.error().what();
  EXPECT_TRUE(f->read().empty()) << "no history";
  ASSERT_TRUE(record_store_event(d.path, {"loaded", "a/b:1", "sha256:bb", {}}));
  pollfd p{f->fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 2000), 1) << "the follower's fd wakes on an append";
  ASSERT_TRUE(record_store_event(d.path, {"removed", "a/b:1", "sha256:bb", {}}));
  auto evs = f->read();
  EXPECT_EQ(images_of(evs), (std::vector<std::string>{"loaded a/b:1", "removed a/b:1"}));
  ASSERT_EQ(evs.size(), 2u);
  EXPECT_EQ(evs[0].digest, "sha256:bb");
  EXPECT_EQ(evs[0].time.size(), 20u) << evs[0].time;
  EXPECT_TRUE(f->read().empty()) << "each event once";
  EXPECT_EQ(::poll(&p, 1, 0), 0) << "read() drains the fd";
}

TEST(StoreEvents, GarbageAndOverlongLinesAreSkipped) {
  Dir d;
  auto f = StoreEventFollower::open(d.path);
  ASSERT_TRUE(f);
  {
    std::ofstream o(d.path + "/events.jsonl", std::ios::app);
    o << "not json\n{\"action\":1,\"image\":\"x\"}\n[]\n{\"action\":\"pulled\"}\n"
      << std::string(kEventLineMax + 10, 'x') << "{\"action\":\"pulled\",\"image\":\"hidden\"}\n";
  }
  ASSERT_TRUE(record_store_event(d.path, {"pulled", "good:1", "sha256:cc", {}}));
  EXPECT_EQ(images_of(f->read()), (std::vector<std::string>{"pulled good:1"}));
}

TEST(StoreEvents, AFifoForTheLogBlocksNoOne) {
  Dir d;
  ASSERT_EQ(::mkfifo((d.path + "/events.jsonl").c_str(), 0644), 0);
  EXPECT_FALSE(record_store_event(d.path, {"pulled", "x:1", "", {}}));
  auto f = StoreEventFollower::open(d.path);
  ASSERT_TRUE(f) << f.error().what();
  EXPECT_TRUE(f->read().empty());
  ASSERT_EQ(::symlink("/etc/passwd", (d.path + "/events.jsonl.tmp").c_str()), 0);
  ASSERT_EQ(::rename((d.path + "/events.jsonl.tmp").c_str(), (d.path + "/events.jsonl").c_str()),
            0);
  EXPECT_FALSE(record_store_event(d.path, {"pulled", "x:1", "", {}})) << "no write through a link";
  EXPECT_TRUE(f->read().empty()) << "nor a read";
}

TEST(StoreEvents, RotationLosesNothing) {
  Dir d;
  auto f = StoreEventFollower::open(d.path);
  ASSERT_TRUE(f);
  // Enough to rotate several times, read between some of them.
  const std::string pad(200, 'p');
  const int n = static_cast<int>(3 * kEventLogRotateAt / 260);
  std::vector<std::string> want, got;
  size_t slices = 0;
  auto drain = [&] {
    do {
      for (auto& s : images_of(f->read())) got.push_back(s);
      ++slices;
    } while (f->pending());
  };
  for (int i = 0; i < n; ++i) {
    const std::string image = "r/" + std::to_string(i) + ":" + pad;
    ASSERT_TRUE(record_store_event(d.path, {"pulled", image, "sha256:dd", {}}));
    want.push_back("pulled " + image);
    if (i % 1500 == 0) drain();
  }
  drain();
  EXPECT_EQ(got.size(), want.size());
  EXPECT_EQ(got, want);
  struct stat st {};
  EXPECT_EQ(::stat((d.path + "/events.jsonl.1").c_str(), &st), 0) << "it rotated";
  EXPECT_LE(static_cast<uint64_t>(st.st_size), kEventLogRotateAt + 4096);
  EXPECT_GT(slices, static_cast<size_t>(3 * kEventLogRotateAt / kReadBudget))
      << "read a slice at a time";
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(StoreEvents, ALogCutShortIsReadFromItsNewStart) {
  Dir d;
  auto f = StoreEventFollower::open(d.path);
  ASSERT_TRUE(f);
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(record_store_event(d.path, {"pulled", "a:1", "", {}}));
  EXPECT_EQ(f->read().size(), 50u);
  ASSERT_EQ(::truncate((d.path + "/events.jsonl").c_str(), 0), 0);
  ASSERT_TRUE(record_store_event(d.path, {"removed", "b:1", "", {}}));
  EXPECT_EQ(images_of(f->read()), (std::vector<std::string>{"removed b:1"}));
}

TEST(StoreEvents, ConcurrentWritersEachLineWhole) {
  Dir d;
  auto f = StoreEventFollower::open(d.path);
  ASSERT_TRUE(f);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i)
        (void)record_store_event(
            d.path, {"pulled", "t" + std::to_string(t) + "/" + std::to_string(i), "", {}});
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(f->read().size(), 800u);
}

TEST(StoreEvents, TheStoreRecordsItsImages) {
  Dir d;
  auto store = Store::open(d.path + "/s");
  ASSERT_TRUE(store) << store.error().what();
  auto f = StoreEventFollower::open(store->root());
  ASSERT_TRUE(f);
  ImageRecord r;
  r.reference = "localhost/x:1";
  r.manifest = *parse_digest("sha256:" + std::string(64, 'a'));
  r.config = r.manifest;
  ASSERT_TRUE(store->put_image(r));
  ASSERT_TRUE(store->put_image(r, "loaded"));
  ASSERT_TRUE(store->remove_image("localhost/x:1"));
  EXPECT_FALSE(store->remove_image("localhost/x:1"));
  auto evs = f->read();
  EXPECT_EQ(images_of(evs),
            (std::vector<std::string>{"pulled localhost/x:1", "loaded localhost/x:1",
                                      "removed localhost/x:1"}));
  for (const auto& e : evs) EXPECT_EQ(e.digest, r.manifest.str());
}

}  // namespace
}  // namespace cloister::oci
