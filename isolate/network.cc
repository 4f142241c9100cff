#include "isolate/network.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netlink/msg.h>
#include <netlink/route/link.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

namespace cloister::network {

Result<LoopbackUp> LoopbackUp::prepare() {
  // In a new network namespace the loopback device is always ifindex 1.
  std::unique_ptr<rtnl_link, decltype(&rtnl_link_put)> orig(rtnl_link_alloc(), rtnl_link_put);
  std::unique_ptr<rtnl_link, decltype(&rtnl_link_put)> change(rtnl_link_alloc(), rtnl_link_put);
  if (!orig || !change) return fail(internal("rtnl_link_alloc", ENOMEM));
  rtnl_link_set_ifindex(orig.get(), 1);
  rtnl_link_set_flags(change.get(), IFF_UP);
  nl_msg* raw = nullptr;
  int rc = rtnl_link_build_change_request(orig.get(), change.get(), 0, &raw);
  if (rc < 0 || !raw) return fail(internal(std::string("build RTM_NEWLINK: ") + nl_geterror(rc)));
  std::unique_ptr<nl_msg, decltype(&nlmsg_free)> msg(raw, nlmsg_free);
  nlmsghdr* hdr = nlmsg_hdr(msg.get());
  // libnl adds NLM_F_REQUEST when it sends; we send the bytes ourselves.
  hdr->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  hdr->nlmsg_seq = 1;
  LoopbackUp up;
  up.request_.assign(reinterpret_cast<const char*>(hdr), hdr->nlmsg_len);
  return up;
}

int LoopbackUp::apply() const noexcept {
  int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return errno;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  int err = 0;
  if (::sendto(fd, request_.data(), request_.size(), 0, reinterpret_cast<sockaddr*>(&kernel),
               sizeof kernel) < 0) {
    err = errno;
  } else {
    alignas(nlmsghdr) char buf[512];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    auto* h = reinterpret_cast<nlmsghdr*>(buf);
    if (n < 0)
      err = errno;
    else if (n < static_cast<ssize_t>(NLMSG_LENGTH(sizeof(nlmsgerr))) ||
             h->nlmsg_type != NLMSG_ERROR)
      err = EPROTO;
    else
      err = -reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;
  }
  ::close(fd);
  return err;
}

Result<Fd> make_netns(const LoopbackUp& lo) {
  Fd home(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!home) return fail(sys_error("open /proc/thread-self/ns/net"));
  if (::unshare(CLONE_NEWNET) != 0) return fail(sys_error("unshare(CLONE_NEWNET)"));
  Fd ns(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  int err = ns ? lo.apply() : errno;
  if (::setns(home.get(), CLONE_NEWNET) != 0) ::abort();  // cannot go home: unsafe to go on
  if (err) return fail(sys_error(ns ? "bring lo up" : "open the new network namespace", err));
  return ns;
}

struct NetnsPool::State {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Fd> ready;
  int target = 2;  // kept ready once the pool runs
  int active = 0;  // kept ready now: 0 until the second take, then target
  bool making = false;
  bool broken = false;  // unshare(CLONE_NEWNET) failed: no pool on this host
  bool started = false;
  int requests = 0;
  LoopbackUp lo;

  // Under mu. False when the pool cannot run here.
  bool start() {
    if (started) return true;
    auto l = LoopbackUp::prepare();
    if (!l) {
      broken = true;
      return false;
    }
    lo = std::move(*l);
    started = true;
    std::thread([this] { run(); }).detach();
    return true;
  }

  void run() {
    // Background work: making a namespace costs half a millisecond of CPU,
    // which must not be taken from sandboxes that are starting or running.
    ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 19);
    std::unique_lock lk(mu);
    for (;;) {
      cv.wait(lk, [&] { return static_cast<int>(ready.size()) < std::min(active, target); });
      making = true;
      lk.unlock();
      auto made = make_netns(lo);
      bool ok = made.has_value();
      Fd ns = ok ? std::move(*made) : Fd();
      lk.lock();
      making = false;
      if (!ok) {
        broken = true;
        ready.clear();
        cv.notify_all();
        return;
      }
      ready.push_back(std::move(ns));
      cv.notify_all();
    }
  }
};

NetnsPool& NetnsPool::get() {
  static NetnsPool* pool = [] {
    auto* p = new NetnsPool;  // never destroyed: its thread runs to the end
    p->state_ = new State;
    return p;
  }();
  return *pool;
}

void NetnsPool::set_target(int n) {
  std::lock_guard lk(state_->mu);
  state_->target = n;
  while (static_cast<int>(state_->ready.size()) > n) state_->ready.pop_front();
  state_->cv.notify_all();
}

void NetnsPool::wait_idle() {
  State& st = *state_;
  std::unique_lock lk(st.mu);
  // Not making, and nothing about to be made: full, off or broken.
  st.cv.wait(lk, [&] {
    return !st.making &&
           (st.broken || static_cast<int>(st.ready.size()) >= std::min(st.active, st.target));
  });
}

Fd NetnsPool::take() {
  State& st = *state_;
  std::unique_lock lk(st.mu);
  if (st.broken || st.target == 0) return Fd();
  // A process that starts one sandbox (a `cloister exec`) would only pay for
  // namespaces it never uses: the pool runs at full size from the second.
  if (++st.requests < 2) return Fd();
  if (!st.start()) return Fd();
  st.active = st.target;
  st.cv.wait(lk, [&] { return !st.ready.empty() || !st.making || st.broken; });
  Fd ns;
  if (!st.ready.empty()) {
    ns = std::move(st.ready.front());
    st.ready.pop_front();
  }
  st.cv.notify_all();
  return ns;
}

}  // namespace cloister::network
