#include "oci/events.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <nlohmann/json.hpp>

#include "oci/store.h"

namespace cloister::oci {

namespace {

constexpr const char* kLog = "/events.jsonl";

// The log for reading, if it is a regular file (a FIFO put there would
// block a reader without O_NONBLOCK, and never end).
Fd open_log(const std::string& path, struct stat& st) {
  if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return Fd();
  Fd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (fd && (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))) fd.reset();
  return fd;
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
  // Writers take turns on a lock in locks/ (0700: no one else can take it
  // and hold up a pull), so the size check, the rotation and the append
  // are one step each.
  if (::mkdir((root + "/locks").c_str(), 0700) != 0 && errno != EEXIST)
    return fail(sys_error("event log: mkdir " + root + "/locks"));
  auto lock = FileLock::acquire(root + "/locks/events.lock", true);
  if (!lock) return fail(lock.error().wrap("event log"));
  for (int attempt = 0; attempt < 2; ++attempt) {
    Fd fd(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                 0600));
    if (!fd) return fail(sys_error("event log " + path));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return fail(sys_error("event log " + path));
    if (!S_ISREG(st.st_mode)) return fail(invalid("event log " + path + " is not a file"));
    // Readable by the store's owner only, whatever made it: references
    // go to those granted image.events, not to whoever can list the root.
    if ((st.st_mode & 077) != 0 && ::fchmod(fd.get(), 0600) != 0)
      return fail(sys_error("event log " + path + ": chmod"));
    if (static_cast<uint64_t>(st.st_size) >= kEventLogRotateAt && attempt == 0) {
      if (::rename(path.c_str(), (path + ".1").c_str()) != 0)
        return fail(sys_error("event log " + path + ": rotate"));
      continue;
    }
    return write_all(fd.get(), line);
  }
  return fail(internal("event log " + path + ": no file after its rotation"));
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

bool StoreEventFollower::read_file(std::vector<StoreEvent>& out, size_t& budget) {
  // Cut short in place (`: >`, copytruncate): from its new start.
  struct stat st {};
  const off_t at = ::lseek(file_.get(), 0, SEEK_CUR);
  if (::fstat(file_.get(), &st) == 0 && at > st.st_size) {
    ::lseek(file_.get(), 0, SEEK_SET);
    partial_.clear();
    skipping_ = false;
  }
  char buf[8192];
  for (;;) {
    if (budget == 0) return false;
    ssize_t n = ::read(file_.get(), buf, std::min(sizeof buf, budget));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return true;
    budget -= static_cast<size_t>(n);
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
  size_t budget = kReadBudget;
  pending_ = false;
  for (int turns = 0; turns < 4; ++turns) {
    if (file_ && !read_file(out, budget)) {
      pending_ = true;
      return out;
    }
    struct stat named {};
    const bool exists = ::lstat(path_.c_str(), &named) == 0;
    if (!exists || (file_ && named.st_dev == dev_ && named.st_ino == ino_)) break;
    // Rotated (or made): what was appended to the old file before its
    // rename is read first; nothing is written to it after.
    if (file_ && !read_file(out, budget)) {
      pending_ = true;
      return out;
    }
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
