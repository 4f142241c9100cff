#include "isolate/network.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netlink/msg.h>
#include <netlink/route/link.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fcntl.h>
#include <sched.h>

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

struct NetnsPool::State {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Fd> ready;
  int target = 2;
  bool broken = false;  // unshare(CLONE_NEWNET) failed: no pool on this host
  bool started = false;
  int requests = 0;
  LoopbackUp lo;
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

Fd NetnsPool::take() {
  State& st = *state_;
  std::unique_lock lk(st.mu);
  if (st.broken) return Fd();
  if (!st.started) {
    // A process that starts one sandbox (a `cloister exec`) would only pay
    // for namespaces it never uses: the pool starts with the second.
    if (++st.requests < 2 || st.target == 0) return Fd();
    auto lo = LoopbackUp::prepare();
    if (!lo) {
      st.broken = true;
      return Fd();
    }
    st.lo = std::move(*lo);
    st.started = true;
    std::thread([&st] {
      // Namespaces are made by unsharing this thread's own and going back.
      Fd home(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
      std::unique_lock lk(st.mu);
      for (;;) {
        st.cv.wait(lk, [&] { return static_cast<int>(st.ready.size()) < st.target; });
        lk.unlock();
        Fd ns;
        bool ok = home && ::unshare(CLONE_NEWNET) == 0;
        if (ok) {
          ns = Fd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
          ok = ns && st.lo.apply() == 0;
          if (::setns(home.get(), CLONE_NEWNET) != 0) ::abort();  // cannot go home: unsafe to go on
        }
        lk.lock();
        if (!ok) {
          st.broken = true;
          st.ready.clear();
          return;
        }
        st.ready.push_back(std::move(ns));
      }
    }).detach();
  }
  if (st.ready.empty()) {
    st.cv.notify_all();
    return Fd();
  }
  Fd ns = std::move(st.ready.front());
  st.ready.pop_front();
  st.cv.notify_all();
  return ns;
}

}  // namespace cloister::network
