// The image store's event log: events.jsonl in the store's root, one JSON
// object per line, appended by whichever process pulls, loads or removes an
// image (the CLI in its own process as much as the service), and followed
// by cloisterd, which sends them to its `events` subscribers
// (docs/protocol.md). podman keeps its events the same way: every podman
// process appends to one log that `podman events` reads.
//
//   {"action":"pulled","image":"docker.io/library/alpine:3.20",
//    "digest":"sha256:...","time":"2026-12-04T19:30:00Z"}
//
// Appends take turns on locks/events.lock. Past kEventLogRotateAt bytes
// the writer that finds the log full renames it to events.jsonl.1
// (replacing the one before) and writes to a new one; a follower reads the
// old file to its end through the fd it holds before it turns to the new
// one, so a rotation loses nothing, unless the log rotates twice before the
// follower reads again (more than 1 MiB of events behind): then the middle
// file is not read. The log is the store owner's alone (0600).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "isolate/error.h"
#include "isolate/fd.h"

namespace cloister::oci {

struct StoreEvent {
  std::string action;  // pulled, loaded, removed
  std::string image;   // the reference, canonical
  std::string digest;  // the manifest's
  std::string time;    // ISO 8601, UTC; filled in by record_store_event
};

inline constexpr uint64_t kEventLogRotateAt = 1 << 20;
inline constexpr size_t kEventLineMax = 16 << 10;  // longer lines are skipped
inline constexpr size_t kReadBudget = 256 << 10;   // bytes one read() takes at most

// "2026-12-04T19:30:00Z": the events' times, the store's and the service's.
std::string iso_utc(std::chrono::system_clock::time_point t);

// Appends one event to the log of the store at `root`.
[[nodiscard]] Status record_store_event(const std::string& root, StoreEvent e);

// Follows the log of the store at `root` from its current end (no history).
class StoreEventFollower {
 public:
  [[nodiscard]] static Result<StoreEventFollower> open(const std::string& root);
  // Readable (inotify) when the store's root changed: then call read().
  int fd() const { return inotify_.get(); }
  // The events appended since the last call, in order; drains fd(). Lines
  // that are not an event's JSON are skipped. At most kReadBudget bytes at
  // a time, so that a flood cannot hold its caller: pending() then says
  // there is more to read, which fd() will not signal again.
  std::vector<StoreEvent> read();
  bool pending() const { return pending_; }

 private:
  bool read_file(std::vector<StoreEvent>& out, size_t& budget);  // false: budget spent
  std::string path_;
  Fd inotify_;
  Fd file_;  // the log as it was when opened; -1 until it exists
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  std::string partial_;    // a line not yet ended
  bool skipping_ = false;  // inside a line longer than kEventLineMax
  bool pending_ = false;
};

}  // namespace cloister::oci
