// cloister-top-reader: reads the command lines of a session's processes for
// `top` (runtime/top.h), a program of its own so that a reader stuck on a
// payload's memory holds a few pages, not a copy of cloisterd.
//
// Built like cloister-init (static, no libc on x86_64) and exec'd from a
// sealed memfd by a child of cloisterd that kept only the fds named in argv
// (runtime/top_reader.h). It reads through those fds only, so a pid reused
// since cloisterd opened its directory is never read.
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "runtime/top_reader.h"

namespace {

int fd_arg(const char* s) {
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  return end && end != s && *end == '\0' && v >= 0 && v < 1 << 20 ? static_cast<int>(v) : -1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace cloister::top;
  // Nothing of the payload's may read or trace this process (it runs as
  // cloisterd's user, in the host's namespaces).
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  ::prctl(PR_SET_NAME, "cloister-top", 0, 0, 0);
  // It reads world-readable files through fds it was given: no capability
  // and no way to gain one, for as long as a payload keeps it waiting.
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[2] = {};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || ::syscall(SYS_capset, &hdr, none) != 0)
    return 4;
  if (argc < 2) return 2;
  const int mem = fd_arg(argv[1]);
  const size_t n = static_cast<size_t>(argc - 2);
  struct stat st {};
  if (mem < 0 || ::fstatat(mem, "", &st, AT_EMPTY_PATH) != 0 || st.st_size < 0 ||
      static_cast<size_t>(st.st_size) < n * sizeof(Slot))
    return 2;
  if (n == 0) return 0;
  void* m = ::mmap(nullptr, n * sizeof(Slot), PROT_READ | PROT_WRITE, MAP_SHARED, mem, 0);
  if (m == MAP_FAILED) return 3;
  auto* slots = static_cast<Slot*>(m);
  for (size_t i = 0; i < n; ++i) {
    uint32_t got = 0;
    const int dir = fd_arg(argv[2 + i]);
    const int f = dir < 0 ? -1 : ::openat(dir, "cmdline", O_RDONLY | O_CLOEXEC);
    if (f >= 0) {
      for (ssize_t r;
           got < kArgvMax && (r = ::read(f, slots[i].data + got, kArgvMax - got)) != 0;) {
        if (r < 0) {
          if (errno == EINTR) continue;
          break;
        }
        got += static_cast<uint32_t>(r);
      }
      ::close(f);
    }
    slots[i].len.store(got, std::memory_order_release);
  }
  return 0;
}
