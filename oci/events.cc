#include "oci/events.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <nlohmann/json.hpp>

namespace cloister::oci {

namespace {

constexpr const char* kLog = "/events.jsonl";

Status write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail(sys_error("write"));
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

// The log for reading, if it is a regular file (a FIFO put there would
// block a reader without O_NONBLOCK, and never end).
Fd open_log(const std::string& path, struct stat& st) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (fd && (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))) fd.reset();
  return fd;
}

bool same_file(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

}  // namespace

std::string iso_utc(std::chrono::system_clock::time_point t) {
  std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Status record_store_event(const std::string& root, StoreEvent e) {
  e.time = iso_utc(std::chrono::system_clock::now());
  const std::string path = root + kLog;
  const std::string line =
      nlohmann::json{
          {"action", e.action}, {"image", e.image}, {"digest", e.digest}, {"time", e.time}}
          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
      "\n";
  // One O_APPEND write under the flock. The flock is on the file, so a
  // writer that opened it before another renamed it away finds, once it
  // holds the lock, that the path names another file now, and starts over.
  for (int attempt = 0; attempt < 16; ++attempt) {
    Fd fd(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                 0644));
    if (!fd) return fail(sys_error("event log " + path));
    while (::flock(fd.get(), LOCK_EX) != 0)
      if (errno != EINTR) return fail(sys_error("event log " + path + ": flock"));
    struct stat held {
    }, named{};
    if (::fstat(fd.get(), &held) != 0) return fail(sys_error("event log " + path));
    if (!S_ISREG(held.st_mode)) return fail(invalid("event log " + path + " is not a file"));
    if (::lstat(path.c_str(), &named) != 0 || !same_file(held, named)) continue;
    if (static_cast<uint64_t>(held.st_size) >= kEventLogRotateAt) {
      if (::rename(path.c_str(), (path + ".1").c_str()) != 0)
        return fail(sys_error("event log " + path + ": rotate"));
      continue;
    }
    return write_all(fd.get(), line);
  }
  return fail(make_error(ErrorKind::Internal, "event log " + path + ": it kept moving"));
}

Result<StoreEventFollower> StoreEventFollower::open(const std::string& root) {
  StoreEventFollower f;
  f.path_ = root + kLog;
  f.inotify_ = Fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!f.inotify_) return fail(sys_error("inotify_init1"));
  if (::inotify_add_watch(f.inotify_.get(), root.c_str(),
                          IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_ONLYDIR) < 0)
    return fail(sys_error("inotify_add_watch " + root));
  // From the end: a subscriber learns what happens from now on, as with
  // session events.
  struct stat st {};
  f.file_ = open_log(f.path_, st);
  if (f.file_) {
    f.dev_ = st.st_dev;
    f.ino_ = st.st_ino;
    if (::lseek(f.file_.get(), 0, SEEK_END) < 0) return fail(sys_error("event log " + f.path_));
  }
  return f;
}

void StoreEventFollower::read_file(std::vector<StoreEvent>& out) {
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(file_.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    std::string_view chunk(buf, static_cast<size_t>(n));
    while (!chunk.empty()) {
      const size_t nl = chunk.find('\n');
      const std::string_view piece = chunk.substr(0, nl);
      if (!skipping_) partial_.append(piece);
      if (partial_.size() > kEventLineMax) {
        partial_.clear();
        skipping_ = true;
      }
      if (nl == std::string_view::npos) break;
      chunk.remove_prefix(nl + 1);
      if (!skipping_) {
        auto j = nlohmann::json::parse(partial_, nullptr, false);
        auto field = [&](const char* k) {
          auto it = j.is_object() ? j.find(k) : j.end();
          return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
        };
        StoreEvent e{field("action"), field("image"), field("digest"), field("time")};
        if (!e.action.empty() && !e.image.empty()) out.push_back(std::move(e));
      }
      partial_.clear();
      skipping_ = false;
    }
  }
}

std::vector<StoreEvent> StoreEventFollower::read() {
  char ev[4096];
  while (::read(inotify_.get(), ev, sizeof ev) > 0) {
  }
  std::vector<StoreEvent> out;
  for (int turns = 0; turns < 4; ++turns) {
    if (file_) read_file(out);
    struct stat named {};
    const bool exists = ::stat(path_.c_str(), &named) == 0;
    if (!exists || (file_ && named.st_dev == dev_ && named.st_ino == ino_)) break;
    // Rotated (or made): what was appended to the old file before its
    // rename is read first; nothing is written to it after.
    if (file_) read_file(out);
    struct stat st {};
    file_ = open_log(path_, st);
    partial_.clear();
    skipping_ = false;
    if (!file_) break;
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }
  return out;
}

}  // namespace cloister::oci
