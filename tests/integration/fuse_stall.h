// A FUSE file system whose one file, "f", opens (for direct I/O) but is
// never read: every READ request is left unanswered until the test ends.
// So is the lookup of the name "stall": a request the server has read and
// never answers holds its caller even against SIGKILL.
// What an attacker with its own FUSE server does to stall whoever waits for
// a page of it.
#pragma once

#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.h"

namespace cloister::testing {

class FuseStall {
 public:
  // Whether this kernel has FUSE (a test VM's may not: then why says so).
  // A missing /dev/fuse node is made.
  static bool available(std::string& why) {
    if (read_text("/proc/filesystems").find("\tfuse\n") == std::string::npos) {
      why = "this kernel has no FUSE (no fuse in /proc/filesystems)";
      return false;
    }
    if (::access("/dev/fuse", F_OK) != 0 &&
        ::mknod("/dev/fuse", S_IFCHR | 0666, ::makedev(10, 229)) != 0) {
      why = "no /dev/fuse, and mknod failed: " + std::string(std::strerror(errno));
      return false;
    }
    return true;
  }
  // Mounts on dir (an empty directory); ok() says whether it did. With
  // executable, "f" may be exec'd (its first page never comes either).
  explicit FuseStall(std::string dir, bool executable = false)
      : dir_(std::move(dir)), file_mode_(executable ? 0555 : 0444) {
    fd_ = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd_ < 0) {
      error_ = "open /dev/fuse: " + std::string(std::strerror(errno));
      return;
    }
    const std::string opts =
        "fd=" + std::to_string(fd_) + ",rootmode=40000,user_id=0,group_id=0,allow_other";
    if (::mount("cloister-stall", dir_.c_str(), "fuse", MS_NOSUID | MS_NODEV, opts.c_str()) != 0) {
      error_ = "mount fuse on " + dir_ + ": " + std::strerror(errno);
      return;
    }
    mounted_ = true;
    if (::pipe2(stop_, O_CLOEXEC) != 0) {
      error_ = "pipe: " + std::string(std::strerror(errno));
      return;
    }
    thread_ = std::thread([this] { serve(); });
  }
  ~FuseStall() { stop(); }

  // Fails every request left unanswered (closing the device's last fd
  // aborts the connection: the stalled wake) and unmounts.
  void stop() {
    if (thread_.joinable()) {
      (void)::write(stop_[1], "x", 1);
      thread_.join();
    }
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    mounted_ = false;
    for (int& p : stop_)
      if (p >= 0) ::close(std::exchange(p, -1));
  }
  bool ok() const { return mounted_; }
  const std::string& error() const { return error_; }
  // READ requests received (and left unanswered).
  int reads() const { return reads_.load(); }
  // Lookups of "stall" received (and left unanswered).
  int stalled_lookups() const { return lookups_.load(); }

 private:
  void reply(uint64_t unique, int error, const void* body = nullptr, size_t size = 0) {
    std::vector<char> out(sizeof(fuse_out_header) + size);
    fuse_out_header h{static_cast<uint32_t>(out.size()), error, unique};
    std::memcpy(out.data(), &h, sizeof h);
    if (size) std::memcpy(out.data() + sizeof h, body, size);
    (void)::write(fd_, out.data(), out.size());
  }
  fuse_attr attr_of(uint64_t node) const {
    fuse_attr a{};
    a.ino = node;
    a.mode = node == FUSE_ROOT_ID ? (S_IFDIR | 0755) : (S_IFREG | file_mode_);
    a.nlink = node == FUSE_ROOT_ID ? 2 : 1;
    a.size = node == FUSE_ROOT_ID ? 0 : 1 << 20;
    a.blocks = a.size / 512;
    a.blksize = 4096;
    return a;
  }
  void serve() {
    std::vector<char> buf(1 << 20);
    for (;;) {
      pollfd p[2] = {{fd_, POLLIN, 0}, {stop_[0], POLLIN, 0}};
      if (::poll(p, 2, -1) < 0 && errno == EINTR) continue;
      if (p[1].revents) return;
      ssize_t n = ::read(fd_, buf.data(), buf.size());
      if (n < 0 && (errno == EINTR || errno == ENOENT)) continue;
      if (n < static_cast<ssize_t>(sizeof(fuse_in_header))) return;  // aborted or unmounted
      fuse_in_header in;
      std::memcpy(&in, buf.data(), sizeof in);
      const char* arg = buf.data() + sizeof in;
      switch (in.opcode) {
        case FUSE_INIT: {
          fuse_init_out o{};
          o.major = FUSE_KERNEL_VERSION;
          o.minor = 31;
          o.max_readahead = 4096;
          o.max_write = 4096;
          o.max_background = 16;
          o.congestion_threshold = 12;
          o.time_gran = 1;
          reply(in.unique, 0, &o, sizeof o);
          break;
        }
        case FUSE_LOOKUP: {
          if (std::strcmp(arg, "stall") == 0) {
            ++lookups_;  // never answered
            break;
          }
          if (std::strcmp(arg, "f") != 0) {
            reply(in.unique, -ENOENT);
            break;
          }
          fuse_entry_out o{};
          o.nodeid = 2;
          o.attr = attr_of(2);
          o.entry_valid = o.attr_valid = 3600;
          reply(in.unique, 0, &o, sizeof o);
          break;
        }
        case FUSE_GETATTR: {
          fuse_attr_out o{};
          o.attr = attr_of(in.nodeid);
          o.attr_valid = 3600;
          reply(in.unique, 0, &o, sizeof o);
          break;
        }
        case FUSE_OPEN:
        case FUSE_OPENDIR: {
          fuse_open_out o{};
          o.fh = 1;
          if (in.opcode == FUSE_OPEN) o.open_flags = FOPEN_DIRECT_IO;
          reply(in.unique, 0, &o, sizeof o);
          break;
        }
        case FUSE_STATFS: {
          fuse_statfs_out o{};
          o.st.bsize = o.st.frsize = 4096;
          o.st.namelen = 255;
          reply(in.unique, 0, &o, sizeof o);
          break;
        }
        case FUSE_READ:
          ++reads_;  // never answered
          break;
        case FUSE_READDIR:
        case FUSE_FLUSH:
        case FUSE_RELEASE:
        case FUSE_RELEASEDIR:
        case FUSE_ACCESS:
        case FUSE_DESTROY:
          reply(in.unique, 0);
          break;
        case FUSE_FORGET:
        case FUSE_BATCH_FORGET:
        case FUSE_INTERRUPT:
          break;
        default:
          reply(in.unique, -ENOSYS);
      }
    }
  }

  std::string dir_, error_;
  unsigned file_mode_ = 0444;
  int fd_ = -1;
  int stop_[2] = {-1, -1};
  bool mounted_ = false;
  std::atomic<int> reads_{0};
  std::atomic<int> lookups_{0};
  std::thread thread_;
};

}  // namespace cloister::testing
