#include "isolate/init_program.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mutex>

// The bytes of cloister-init (the build passes the binary's path as
// CLOISTER_INIT_BINARY).
#ifndef CLOISTER_INIT_BINARY
#error "CLOISTER_INIT_BINARY must name the built cloister-init"
#endif
CLOISTER_EMBED_PROGRAM(cloister_init_image, CLOISTER_INIT_BINARY)

namespace cloister::init_program {
namespace {

// From linux/memfd.h of 6.3 and later; older headers lack them.
#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

Result<int> make(const char* name, std::span<const unsigned char> bytes) {
  // MFD_EXEC says so where vm.memfd_noexec would otherwise make memfds
  // non-executable; kernels before 6.3 refuse the flag (EINVAL) and every
  // memfd is executable there.
  int fd = ::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
  if (fd < 0 && errno == EINVAL) fd = ::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    int e = errno;
    return fail(sys_error(std::string(name) + ": memfd_create", e));
  }
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = n < 0 ? errno : EIO;
      ::close(fd);
      return fail(sys_error(std::string(name) + ": write the memfd", e));
    }
    off += static_cast<size_t>(n);
  }
  int seals = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
  // Where the kernel has it, the mode (its exec bits) is sealed too.
  if (::fcntl(fd, F_ADD_SEALS, seals | F_SEAL_EXEC) != 0 &&
      (errno != EINVAL || ::fcntl(fd, F_ADD_SEALS, seals) != 0)) {
    int e = errno;
    ::close(fd);
    return fail(sys_error(std::string(name) + ": seal the memfd", e));
  }
  return fd;
}

}  // namespace

std::span<const unsigned char> image() {
  return {cloister_init_image_start,
          static_cast<size_t>(cloister_init_image_end - cloister_init_image_start)};
}

Result<int> fd(Sealed& program) {
  std::lock_guard lk(program.mu);
  if (program.fd < 0) {
    auto r = make(program.name, program.image());
    if (!r) return r;
    program.fd = *r;
  }
  return program.fd;
}

Result<int> fd() {
  static Sealed init{"cloister-init", image};
  return fd(init);
}

}  // namespace cloister::init_program
