// User namespaces: the payload's uid 0 is never the host's.
//
// A sandbox with a user namespace (SpawnSpec::userns, the default of every
// executor) runs its payload in a namespace whose ids 0..size-1 map to host
// ids base..base+size-1. The namespace is made once per prepared sandbox
// spec, by the library, which writes its maps as host root
// (make()). The init does every mount, the hostname, the cgroup namespace
// and the rlimits as host root and joins the namespace (setns) just before
// it drops the bounding set, sets the ids and capabilities. So every other
// namespace of the sandbox (mount, pid, net, uts, ipc, cgroup) stays owned
// by the host's user namespace: a capability the payload keeps (cap_add)
// holds in its own user namespace and over nothing else, and no mount can
// be changed from inside whatever it keeps.
//
// Files the payload creates reach the host with mapped ids (uid 0 inside is
// base on the host); host files whose owner is not mapped show as the
// overflow ids (nobody, 65534) and give the payload only the "other"
// permission bits, even with CAP_DAC_OVERRIDE. Image layers are idmapped
// mounts (mounts.h), so an image's root-owned files are the payload's.
//
// The range: a "cloister" line in /etc/subuid and /etc/subgid where there
// is one, else kDefaultBase (docs/security.md, "User namespace").
#pragma once

#include <errno.h>
#include <sched.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "isolate/error.h"
#include "isolate/fd.h"

namespace cloister::userns {

struct Map {
  uint32_t uid_base = 0;  // host uid of uid 0 inside
  uint32_t gid_base = 0;  // host gid of gid 0 inside
  uint32_t size = 0;      // ids mapped, from 0 inside
  // An ordinary user's subordinate range behind its own id
  // (own_subids()): ids size..size+sub_size-1 inside are host ids
  // sub_uid_base.. and sub_gid_base..; 0 = none (always for root's maps).
  uint32_t sub_uid_base = 0, sub_gid_base = 0, sub_size = 0;
  uint32_t ids() const { return size + sub_size; }  // ids mapped inside, from 0
  bool operator==(const Map&) const = default;
};

// The documented default size of a range, as podman and systemd-nspawn use.
constexpr uint32_t kDefaultSize = 65536;
// Where the default range starts when /etc/subuid names no "cloister":
// 0x60000000, inside the span systemd sets apart for containers' ids
// (0x00080000-0x6fffffff) and far from any distribution's user ids.
constexpr uint32_t kDefaultBase = 0x60000000u;

// Valid: size >= 1, no host id 0 or 1 mapped (base >= 2: the id below owns
// it), base + size fits in 32 bits below the invalid id (uid_t -1).
Status check(const Map& m);
// The uid, gid and groups inside must be mapped (< size).
Status check_ids(const Map& m, uid_t uid, gid_t gid, const uid_t* groups, size_t ngroups);

// Capabilities a payload in its user namespace can use: those the kernel
// checks in the caller's own user namespace or against files whose owners
// it maps (CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, KILL,
// SETGID, SETUID, SETPCAP, SYS_CHROOT, SYS_PTRACE, SETFCAP). Every other
// one is checked in a namespace the host's user namespace owns (the
// network, IPC, mount and UTS namespaces, or the host itself) and would
// be granted in name only: refused, naming it, with userns: host as the way
// to have it.
constexpr uint64_t kUsableCapabilities = (1ull << 0) | (1ull << 1) | (1ull << 2) | (1ull << 3) |
                                         (1ull << 4) | (1ull << 5) | (1ull << 6) | (1ull << 7) |
                                         (1ull << 8) | (1ull << 18) | (1ull << 19) | (1ull << 31);
// Capabilities outside kUsableCapabilities that act in the holder's own user
// namespace or on the processes in it all the same, so that holding them in
// name only would open something: CAP_SYS_ADMIN (unshare of new mount, uts,
// ipc, network and cgroup namespaces, owned by the payload's, and mounts in
// them), CAP_CHECKPOINT_RESTORE (prctl PR_SET_MM_EXE_FILE and PR_SET_MM_MAP:
// a process's /proc/PID/exe made to name another file), CAP_SYS_NICE
// (affinity and priority of the container's other users' processes) and
// CAP_SYS_RESOURCE (the user.* ucount limits of the payload's own user
// namespace, were /proc/sys writable). Every other capability outside the
// usable set is inert in a sandbox's user namespace: the kernel checks it
// with capable() (the host's user namespace) or against the user namespace
// owning a namespace of the host's (network, ipc, pid, mount).
constexpr uint64_t kOwnNamespaceCapabilities =
    (1ull << 21) | (1ull << 23) | (1ull << 24) | (1ull << 40);
constexpr uint64_t kInertCapabilities = ~(kUsableCapabilities | kOwnNamespaceCapabilities);
// unprivileged: an ordinary user's sandbox, whose own user namespace owns
// every namespace: the same set is offered there, SYS_ADMIN and the rest
// being able to undo its mounts; the error says so instead.
Status check_capabilities(uint64_t caps, bool unprivileged = false);

// "BASE:SIZE" (uid and gid ranges alike) or "UIDBASE:GIDBASE:SIZE".
Result<Map> parse(std::string_view text);
// The range of user `owner` in subuid and subgid (files of the
// "name:start:count" format; the first line for the name or its uid), or
// nullopt when neither names it. An entry in one file only is an error.
Result<std::optional<Map>> from_subid(const std::string& subuid, const std::string& subgid,
                                      const std::string& owner);
// The range a sandbox gets when its config sets none: "cloister" in
// /etc/subuid and /etc/subgid, else {kDefaultBase, kDefaultBase,
// kDefaultSize}.
Result<Map> default_map();

// An ordinary user's map (SpawnSpec::unprivileged): its effective uid and
// gid as 0 inside, one id each, which the kernel lets any user write for a
// namespace it made.
Map own_ids();
// The same, with the user's /etc/subuid and /etc/subgid range behind it
// (ids 1..count inside), as rootless podman maps: where both files name the
// user and newuidmap and newgidmap (Debian's uidmap, setuid root) are there
// to write such maps. nullopt otherwise.
std::optional<Map> own_subids();
// The setuid helpers that write own_subids()'s maps.
inline constexpr const char* kNewUidmap = "/usr/bin/newuidmap";
inline constexpr const char* kNewGidmap = "/usr/bin/newgidmap";

// The host uid that owns a sandbox's user namespace: the id just below its
// range. The kernel charges the per-user counters of everything inside
// (inotify instances, processes, pending signals, ...) to the owner at the
// host's level, and gives the owner every capability inside: so neither
// host root (whose inotify instances systemd needs) nor an id a payload can
// become (a setuid file it leaves in a volume is owned by an id of the
// range) nor a shared one such as nobody. No distribution allocates it
// (subordinate ranges start at 100000; the default range's is 0x5fffffff).
inline uid_t owner_of(const Map& m) {
  return m.uid_base - 1;
}

// Ranges of one size carved out of a pool, one per sandbox (userns:
// sandbox), as podman's --userns=auto does. Slot k holds ids
// [base + k*(size+1), base + (k+1)*(size+1)): its first id owns the slot's
// namespace (owner_of) and is mapped by no slot, the next size ids are the
// slot's range. So no payload of any slot can become another slot's owner.
struct Pool {
  uint32_t uid_base = 0, gid_base = 0;  // where the pool starts
  uint32_t span = 0;                    // ids in the pool
  uint32_t size = kDefaultSize;         // ids of each sandbox's range
  uint32_t slots() const { return size == 0 ? 0 : span / (size + 1); }
  Map slot(uint32_t k) const {
    const uint32_t off = k * (size + 1) + 1;
    return Map{uid_base + off, gid_base + off, size};
  }
  bool operator==(const Pool&) const = default;
};
// The pool when the config names none: from the end of the default range
// (kDefaultBase, kDefaultSize) to 0x6fffffff, the end of the span systemd
// sets apart for containers' ids: 4094 ranges of 65536.
constexpr uint32_t kDefaultPoolEnd = 0x70000000u;
Pool default_pool(uint32_t size = kDefaultSize);
// Valid: at least one slot, every slot's map valid (check()).
Status check(const Pool& p);

// A range held for one sandbox: the map, and an fd of kLeaseFile whose
// locks hold it (open file description locks over the slot's uid and gid
// ids, which every process taking a range of any pool honours). Closing
// the fd, or the end of the process, frees it.
struct Lease {
  Map map;
  Fd lock;
};
inline constexpr const char* kLeaseFile = "/run/cloister/userns.lock";
// The lowest free slot of the pool, or LIMIT when every one is taken.
Result<Lease> lease(const Pool& p);
// A shared (read) lock over an executor's own range with its owner id, for
// as long as the executor's namespace is used: no pool's lease takes those
// ids meanwhile; LIMIT when a lease holds some of them now. No fd (and no
// error) where kLeaseFile cannot be opened as lease() requires it.
Result<Fd> hold_shared(const Map& m);

// A user namespace with this map and owner_of(m), as an fd of
// /proc/PID/ns/user, made by a short-lived child. Needs root (CAP_SETUID
// and CAP_SETGID for the maps, the owner change).
Result<Fd> make(const Map& m);

// A detached clone of the directory tree at path, recursively read-only,
// nosuid and nodev, for a caller without CAP_SYS_ADMIN (which may not clone
// trees in its own mount namespace): made by a short-lived child in a user
// and mount namespace of its own, where it has that capability, and passed
// back. path is resolved again there with no symlink followed and must
// still be the directory `pinned` is (an fd of it), or INVALID.
Result<Fd> read_only_tree(const std::string& path, int pinned);

// Child side (the init, which links no more of this module): join the
// namespace and close its fd. Returns 0 or errno.
inline int enter(int userns_fd) noexcept {
  if (::setns(userns_fd, CLONE_NEWUSER) != 0) return errno;
  ::close(userns_fd);
  return 0;
}

}  // namespace cloister::userns
