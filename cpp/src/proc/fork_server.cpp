// start_method="forkserver": one clean interpreter, started before the pool has
// any work, forks every worker on request. A respawn after a crash then costs a
// fork, not an interpreter start. Both ends of its control socket live here.
//
// The server is the workers' parent: it reaps them and reports how they ended.
// The pool's process signals them through pidfds the server opens right after
// each fork (when the child cannot have been reaped yet, so the pidfd is sure
// to name it) and passes along with the "spawned" reply (SCM_RIGHTS).
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "shoal/base/errors.hpp"
#include "shoal/base/fd.hpp"
#include "shoal/proc/launcher.hpp"
#include "shoal/base/pidfd.hpp"
#include "spawn.hpp"

namespace shoal {
namespace {

constexpr std::size_t kContextMax = 240;

struct Request {
  uint32_t slot;
  uint32_t context_len;
  char context[kContextMax];
};
struct Reply {
  ProcessEvent::Type type;
  uint32_t slot;
  int32_t pid;
  int32_t status;
};

// Sends a reply, with descriptor `fd` attached if it is >= 0 (and without it
// if the descriptor cannot travel: the reply matters more).
void send_reply(int sock, const Reply& r, int fd = -1) {
  iovec iov{const_cast<Reply*>(&r), sizeof r};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0) {
    if (errno == EINTR) continue;
    if (errno == EPIPE || !msg.msg_control) return;  // the owner is gone, or it failed without a descriptor
    msg.msg_control = nullptr;
    msg.msg_controllen = 0;
  }
}

// Receives a reply without blocking, and the descriptor that came with it
// (if any: more are closed). Returns recvmsg's result.
ssize_t receive_reply(int sock, Reply& r, UniqueFd& fd) {
  iovec iov{&r, sizeof r};
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
      UniqueFd owned(received);
      if (!fd) fd = std::move(owned);  // the rest close here
    }
  }
  return n;
}

class ForkServerLauncher final : public Launcher {
 public:
  ForkServerLauncher(std::vector<std::string> argv, std::string context, ForkServerHandle adopt,
                     std::vector<int> inherited)
      : argv_(std::move(argv)), context_(std::move(context)), inherited_(std::move(inherited)) {
    if (context_.size() > kContextMax) throw std::length_error("fork server context too long");
    if (adopt.pid > 0 && adopt.socket >= 0) {
      server_pid_ = adopt.pid;
      sock_.reset(adopt.socket);
      watch_server();
    } else {
      start();
    }
  }
  ~ForkServerLauncher() override { stop(); }

  void spawn(uint32_t slot, std::vector<ProcessEvent>& events) override {
    if (gave_up_) {
      events.push_back({ProcessEvent::Type::spawn_failed, slot, -1, ECHILD, {}, give_up_reason_});
      return;
    }
    // Held until the server answers: a server that dies first leaves it to
    // its successor (a request lost with it would leave the slot waiting for
    // good).
    outstanding_.push_back(slot);
    if (!send_request(slot)) {
      const int err = errno;
      if (server_gone(err)) return;  // the hang-up follows: on_readable() restarts and resends
      outstanding_.pop_back();
      events.push_back({ProcessEvent::Type::spawn_failed, slot, -1, err});
    }
  }

  std::vector<int> poll_fds() const override {
    if (!sock_) return {};
    return {sock_.get()};
  }

  void on_readable(int, std::vector<ProcessEvent>& events) override {
    for (;;) {
      Reply r{};
      UniqueFd pidfd;
      ssize_t n = receive_reply(sock_.get(), r, pidfd);
      if (n == sizeof r) {
        ProcessEvent e{r.type, r.slot, r.pid, r.status};
        if (r.type == ProcessEvent::Type::spawned) {
          live_[r.pid] = r.slot;
          forked_any_ = true;
          // No pidfd only on kernels without them; the engine then signals by pid.
          if (pidfd) e.pidfd = std::make_shared<const UniqueFd>(std::move(pidfd));
        }
        if (r.type == ProcessEvent::Type::spawned || r.type == ProcessEvent::Type::spawn_failed) {
          auto it = std::find(outstanding_.begin(), outstanding_.end(), r.slot);
          if (it != outstanding_.end()) outstanding_.erase(it);
        }
        if (r.type == ProcessEvent::Type::exited) live_.erase(r.pid);
        events.push_back(std::move(e));
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      // The fork server is gone; its workers die with it (PR_SET_PDEATHSIG).
      for (auto [pid, slot] : live_) events.push_back({ProcessEvent::Type::exited, slot, pid, SIGKILL});
      live_.clear();
      sock_.reset();
      const int status = reap_server();
      // A server that forked nobody before it died is a failed start (an
      // interpreter that cannot start or import shoal dies at once, again
      // and again); one that did its work is simply replaced.
      failed_starts_ = forked_any_ ? 0 : failed_starts_ + 1;
      last_failure_ = describe_exit(status);
      restart(events);
      return;
    }
  }

  void stop() override {
    if (!sock_) return;
    sock_.reset();  // EOF tells the server to kill its workers and exit
    reap_server();
    live_.clear();
  }

 private:
  void start() {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) throw_errno("socketpair");
    UniqueFd mine(fds[0]);
    {
      UniqueFd theirs(fds[1]);
      server_pid_ = detail::spawn_process(argv_, theirs.get(), inherited_);
    }  // from here on only the server holds its end
    sock_ = std::move(mine);
    forked_any_ = false;
    watch_server();
  }

  bool send_request(uint32_t slot) {
    Request req{slot, static_cast<uint32_t>(context_.size()), {}};
    context_.copy(req.context, kContextMax);
    return send(sock_.get(), &req, sizeof req, MSG_NOSIGNAL) == sizeof req;
  }

  static bool server_gone(int err) { return err == EPIPE || err == ECONNRESET || err == ENOTCONN; }

  // Starts a fresh server after one died and hands it the requests the dead
  // one left unanswered, unless servers keep failing: then gives up.
  void restart(std::vector<ProcessEvent>& events) {
    for (;;) {
      if (failed_starts_ >= kFailedForkServerStarts) {
        give_up(events);
        return;
      }
      try {
        start();
      } catch (const std::exception& e) {
        ++failed_starts_;
        last_failure_ = std::string("could not be started (") + e.what() + ")";
        continue;
      }
      const std::vector<uint32_t> unanswered = outstanding_;
      for (uint32_t slot : unanswered) {
        if (send_request(slot)) continue;
        const int err = errno;
        if (server_gone(err)) return;  // this one died already: its hang-up comes next
        outstanding_.erase(std::find(outstanding_.begin(), outstanding_.end(), slot));
        events.push_back({ProcessEvent::Type::spawn_failed, slot, -1, err});
      }
      return;
    }
  }

  // No more servers: the failed event first (the engine breaks the pool with
  // its reason), then an answer to every request still held.
  void give_up(std::vector<ProcessEvent>& events) {
    gave_up_ = true;
    give_up_reason_ = "the fork server keeps dying: " + std::to_string(failed_starts_) +
                      " fresh fork servers in a row ended before starting any worker; the last one " + last_failure_ +
                      ". Check that '" + argv_.front() + "' can start and import shoal (its error output, if any, " +
                      "went to this process's stderr).";
    sock_.reset();
    events.push_back({ProcessEvent::Type::failed, 0, -1, 0, {}, give_up_reason_});
    for (uint32_t slot : outstanding_)
      events.push_back({ProcessEvent::Type::spawn_failed, slot, -1, ECHILD, {}, give_up_reason_});
    outstanding_.clear();
  }

  // Opens a pidfd for the server, to stop it by after shutdown. The server is
  // our child, but if this process ignores SIGCHLD the kernel reaps it the
  // moment it exits and its pid is free for reuse, so the pidfd is kept only
  // if the server was alive when it was opened: its end of the socket, which
  // no other process holds, is still open afterwards.
  void watch_server() {
    server_fd_.reset(pidfd_open(server_pid_));
    pollfd p{sock_.get(), 0, 0};  // reports only a hang-up or an error
    if (server_fd_ && poll(&p, 1, 0) != 0) server_fd_.reset();
  }

  // Waits for the server to exit (killing it after a grace period) and
  // returns its wait status (kExitStatusUnknown if it cannot be known).
  int reap_server() {
    if (server_pid_ <= 0) return kExitStatusUnknown;
    int status = kExitStatusUnknown;
    if (server_fd_) {
      // It exits once it sees the socket close; past the grace period it is killed.
      pollfd p{server_fd_.get(), POLLIN, 0};
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
      for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        const int rc = poll(&p, 1, static_cast<int>(left.count()) + 1);
        if (rc > 0 || (rc < 0 && errno != EINTR)) break;
      }
      if (!(p.revents & POLLIN)) signal_process(server_fd_.get(), server_pid_, SIGKILL);
      status = reap_child(server_fd_.get(), server_pid_);
      server_fd_.reset();
    } else {  // no pidfd: a kernel without them, or the server died before one was opened
      auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
      int st = 0;
      pid_t rc;
      while ((rc = waitpid(server_pid_, &st, WNOHANG)) == 0) {
        if (std::chrono::steady_clock::now() > until) {
          // Safe by pid: it has not been reaped (waitpid just said so).
          kill(server_pid_, SIGKILL);
          rc = waitpid(server_pid_, &st, 0);
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      if (rc == server_pid_) status = st;
    }
    server_pid_ = -1;
    return status;
  }

  std::vector<std::string> argv_;
  std::string context_;
  std::vector<int> inherited_;  // the caller's, open while this launcher lives
  UniqueFd sock_;
  pid_t server_pid_ = -1;
  UniqueFd server_fd_;  // the server's pidfd (empty without pidfd support)
  std::unordered_map<pid_t, uint32_t> live_;
  std::vector<uint32_t> outstanding_;  // slots asked for and not answered yet, oldest first
  bool forked_any_ = false;            // the current server has started a worker
  uint32_t failed_starts_ = 0;         // servers in a row that ended before forking anyone
  std::string last_failure_;           // how the last of them ended
  bool gave_up_ = false;
  std::string give_up_reason_;
};

}  // namespace

std::unique_ptr<Launcher> make_fork_server_launcher(std::vector<std::string> argv, std::string context,
                                                    ForkServerHandle adopt, std::vector<int> inherited) {
  return std::make_unique<ForkServerLauncher>(std::move(argv), std::move(context), adopt, std::move(inherited));
}

void die_with_parent(pid_t expected_parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != expected_parent) _exit(1);
}

ForkedWorker run_fork_server(int sock, const ForkHooks& hooks) {
  const pid_t me = getpid();
  signal(SIGINT, SIG_IGN);  // Ctrl-C belongs to the pool's owner, which shuts us down
  // This process is ours, whatever SIGCHLD disposition it inherited from the
  // pool's owner. Under SIG_IGN (or SA_NOCLDWAIT) the kernel would reap the
  // workers itself, send no SIGCHLD, and no exit would ever be reported; it
  // would also free a dead worker's pid for reuse while this server may still
  // kill by it. With the default disposition a worker's pid stays its own
  // until reap() below collects it. Workers get the inherited disposition
  // back, as spawned ones keep it across exec.
  struct sigaction dfl {}, inherited {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGCHLD, &dfl, &inherited);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, nullptr);
  UniqueFd sigfd(signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sigfd) throw_errno("signalfd");
  std::unordered_map<pid_t, uint32_t> children;

  auto reap = [&] {
    int status = 0;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      auto it = children.find(pid);
      if (it == children.end()) continue;
      send_reply(sock, {ProcessEvent::Type::exited, it->second, pid, status});
      children.erase(it);
    }
  };

  for (;;) {
    pollfd fds[2] = {{sock, POLLIN, 0}, {sigfd.get(), POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      throw_errno("fork server poll");
    }
    if (fds[1].revents & POLLIN) {
      signalfd_siginfo info;
      while (read(sigfd.get(), &info, sizeof info) > 0) {
      }
      reap();
    }
    if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    Request req{};
    ssize_t n = recv(sock, &req, sizeof req, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n != sizeof req) {  // the owner closed the socket or died: take the workers along
      // By pid is safe here: `children` holds only workers not yet reaped.
      for (auto [pid, slot] : children) kill(pid, SIGKILL);
      while (!children.empty()) {
        pid_t pid = waitpid(-1, nullptr, 0);
        if (pid < 0) break;
        children.erase(pid);
      }
      _exit(0);
    }
    if (hooks.before) hooks.before();
    pid_t pid = fork();
    if (pid == 0) {
      if (hooks.after_child) hooks.after_child();
      sigfd.reset();
      ::close(sock);
      sigaction(SIGCHLD, &inherited, nullptr);
      sigprocmask(SIG_UNBLOCK, &chld, nullptr);
      die_with_parent(me);
      return ForkedWorker{req.slot, std::string(req.context, std::min<std::size_t>(req.context_len, kContextMax))};
    }
    if (hooks.after_parent) hooks.after_parent();
    if (pid < 0) {
      send_reply(sock, {ProcessEvent::Type::spawn_failed, req.slot, -1, errno});
    } else {
      children[pid] = req.slot;
      // Opened before reap() can have collected the child, so it names this
      // worker for good; the pool's process signals the worker through it.
      // Without pidfd support the reply goes without one.
      UniqueFd pidfd(pidfd_open(pid));
      send_reply(sock, {ProcessEvent::Type::spawned, req.slot, pid, 0}, pidfd.get());
    }  // our copy closes here: the pool's process holds the one it received
  }
}

}  // namespace shoal
