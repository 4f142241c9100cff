// cp: a tar stream into or out of a running sandbox (the service's `cp`,
// `cloister cp`), as `podman cp` copies into and out of a container.
//
// What it promises:
//  - Every path is the sandbox's own: resolved beneath its root as its
//    processes see it (its mount namespace, through /proc/PID/root of its
//    init), the path given with openat2(RESOLVE_IN_ROOT |
//    RESOLVE_NO_MAGICLINKS), everything below it one component at a time
//    without following a symlink. `..`, absolute and relative symlinks, and
//    a file swapped for a symlink during the copy never lead out of it.
//  - The copy runs on a thread of its own whose effective ids are the host
//    ids of the sandbox's user (its payload's, as the executor sets it),
//    with no supplementary group and no capability at all: it reads and
//    writes what that user may (never through the capabilities the
//    sandbox's root holds in its user namespace), a read-only mount stays
//    read-only, and what it makes belongs to that user. Its real and saved
//    ids stay the service's. Owners in a copy out are the sandbox's ids,
//    as it sees them.
//  - In: the rules of oci/layer.h for hostile archives (no `..`, files made
//    fresh, hardlinks only to what is inside, no device nodes), with no
//    owner, xattr or whiteout taken from the archive, no setuid or setgid
//    bit, and no directory with anything in it replaced. Into a directory
//    that exists.
//  - Out: directories, regular files, symlinks (as links, never followed),
//    hardlinks among the files copied, fifos and device nodes (as headers);
//    sockets are left out. The archive's top entry is the path's last
//    component ("." for "/").
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "isolate/error.h"
#include "isolate/fd.h"

namespace cloister::copy {

// A user namespace's id map: {inside, outside (host), count} ranges.
struct IdMap {
  struct Range {
    uint32_t inside, outside, count;
  };
  std::vector<Range> ranges;
  // The id inside for a host id; 65534 (the overflow id) where unmapped.
  uint32_t inside(uint32_t host) const;
};

// A running sandbox's root, the host ids of the user a copy acts as, and
// the sandbox's maps.
struct Target {
  Fd root;  // O_PATH, the root directory of the init's mount namespace
  uid_t uid = 0;
  gid_t gid = 0;
  IdMap uids, gids;  // owners in a copy out are the sandbox's, as it sees them
};

// The sandbox whose init is pid, held by pidfd (checked to be alive after
// its root was opened, so that a reused pid is never another's), to be
// copied as the user uid_inside:gid_inside of the sandbox (its payload's:
// a copy is no way to its root).
Result<Target> target_of(pid_t pid, int pidfd, uid_t uid_inside, gid_t gid_inside);

// Writes a tar of the sandbox's `path` to fd; returns the bytes written.
Result<uint64_t> copy_out(const Target& t, const std::string& path, int fd);

// Extracts the tar read from fd into the sandbox's directory `dir`;
// returns the entries made.
Result<uint64_t> copy_in(const Target& t, const std::string& dir, int fd);

// copy_out's walk over a local path, with the caller's own rights (the
// CLI's `cp LOCAL SESSION:DIR`).
Result<uint64_t> write_local(const std::string& path, int fd);

// copy_in's extraction of the tar read from fd into the directory dir_fd,
// with the caller's own rights (copy_in's thread, the CLI's `cp
// SESSION:PATH DIR`); returns the entries made.
Result<uint64_t> extract(int fd, int dir_fd);

}  // namespace cloister::copy
