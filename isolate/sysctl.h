// Kernel parameters (sysctl) set for one sandbox. Only parameters the
// kernel keeps per namespace, in a namespace the sandbox has of its own,
// are accepted: the ipc namespace's (kernel.msgmax, kernel.msgmnb,
// kernel.msgmni, kernel.sem, kernel.shmall, kernel.shmmax, kernel.shmmni,
// kernel.shm_rmid_forced, fs.mqueue.*), which every sandbox has, and the
// network namespace's (net.*) unless the sandbox shares the host's network.
// So no value can reach the host or another sandbox; anything else
// (kernel.core_pattern, vm.*, kernel.hostname: hostname has its own field)
// is an error naming the key.
//
// The init writes them through the host's /proc/sys after it has joined or
// made its namespaces and before its mounts (a sandbox's own /proc/sys is
// read-only): net and ipc entries follow the writer's namespaces.
#pragma once

#include <string>
#include <string_view>

#include "isolate/error.h"

namespace cloister::sysctl {

struct Setting {
  std::string key;    // "net.ipv4.ip_forward", or with '/' ("net/ipv4/conf/eth0.1/forwarding")
  std::string value;  // written as given
};

// The one rule for a key and its value. own_netns: the sandbox has a network
// namespace of its own (made, or joined by path). Returns the path under
// /proc/sys ("/proc/sys/net/ipv4/ip_forward").
Result<std::string> path_of(const Setting& s, bool own_netns);

// Whether the setting is the network namespace's (net.*).
bool is_net(const Setting& s);

// Child side: writes value to path; 0 or errno.
int apply(const char* path, const char* value) noexcept;

}  // namespace cloister::sysctl
