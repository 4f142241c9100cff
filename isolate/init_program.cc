#include "isolate/init_program.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mutex>

// The bytes of cloister-init, placed in .rodata by the assembler (the build
// passes the binary's path as CLOISTER_INIT_BINARY and rebuilds this file
// when the binary changes).
#ifndef CLOISTER_INIT_BINARY
#error "CLOISTER_INIT_BINARY must name the built cloister-init"
#endif
asm(".pushsection .rodata\n"
    ".balign 64\n"
    ".globl cloister_init_image_start\n"
    ".hidden cloister_init_image_start\n"
    "cloister_init_image_start:\n"
    ".incbin \"" CLOISTER_INIT_BINARY
    "\"\n"
    ".globl cloister_init_image_end\n"
    ".hidden cloister_init_image_end\n"
    "cloister_init_image_end:\n"
    ".popsection\n");
extern "C" const unsigned char cloister_init_image_start[];
extern "C" const unsigned char cloister_init_image_end[];

namespace cloister::init_program {
namespace {

// From linux/memfd.h of 6.3 and later; older headers lack them.
#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

Result<int> make() {
  const auto bytes = image();
  // MFD_EXEC says so where vm.memfd_noexec would otherwise make memfds
  // non-executable; kernels before 6.3 refuse the flag (EINVAL) and every
  // memfd is executable there.
  int fd = ::memfd_create("cloister-init", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
  if (fd < 0 && errno == EINVAL)
    fd = ::memfd_create("cloister-init", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return fail(sys_error("init program: memfd_create"));
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = n < 0 ? errno : EIO;
      ::close(fd);
      return fail(sys_error("init program: write the memfd", e));
    }
    off += static_cast<size_t>(n);
  }
  int seals = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
  // Where the kernel has it, the mode (its exec bits) is sealed too.
  if (::fcntl(fd, F_ADD_SEALS, seals | F_SEAL_EXEC) != 0 &&
      (errno != EINVAL || ::fcntl(fd, F_ADD_SEALS, seals) != 0)) {
    int e = errno;
    ::close(fd);
    return fail(sys_error("init program: seal the memfd", e));
  }
  return fd;
}

}  // namespace

std::span<const unsigned char> image() {
  return {cloister_init_image_start,
          static_cast<size_t>(cloister_init_image_end - cloister_init_image_start)};
}

Result<int> fd() {
  // Made once; a failure (out of fds, say) is not kept: the next call tries again.
  static std::mutex mu;
  static int made = -1;
  std::lock_guard lk(mu);
  if (made < 0) {
    auto r = make();
    if (!r) return r;
    made = *r;
  }
  return made;
}

}  // namespace cloister::init_program
