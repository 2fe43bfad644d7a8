// start_method="forkserver": one clean interpreter, started before the pool has
// any work, forks every worker on request. A respawn after a crash then costs a
// fork, not an interpreter start. Both ends of its control socket live here.
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "shoal/ipc/errors.hpp"
#include "shoal/proc/fd.hpp"
#include "shoal/proc/launcher.hpp"
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

void send_reply(int sock, const Reply& r) {
  while (send(sock, &r, sizeof r, MSG_NOSIGNAL) < 0 && errno == EINTR) {
  }
}

class ForkServerLauncher final : public Launcher {
 public:
  ForkServerLauncher(std::vector<std::string> argv, std::string context, ForkServerHandle adopt)
      : argv_(std::move(argv)), context_(std::move(context)) {
    if (context_.size() > kContextMax) throw std::length_error("fork server context too long");
    if (adopt.pid > 0 && adopt.socket >= 0) {
      server_pid_ = adopt.pid;
      sock_.reset(adopt.socket);
    } else {
      start();
    }
  }
  ~ForkServerLauncher() override { stop(); }

  void spawn(uint32_t slot, std::vector<ProcessEvent>& events) override {
    Request req{slot, static_cast<uint32_t>(context_.size()), {}};
    context_.copy(req.context, kContextMax);
    if (send(sock_.get(), &req, sizeof req, MSG_NOSIGNAL) != sizeof req)
      events.push_back({ProcessEvent::Type::spawn_failed, slot, -1, errno});
  }

  std::vector<int> poll_fds() const override { return {sock_.get()}; }

  void on_readable(int, std::vector<ProcessEvent>& events) override {
    for (;;) {
      Reply r{};
      ssize_t n = recv(sock_.get(), &r, sizeof r, MSG_DONTWAIT);
      if (n == sizeof r) {
        if (r.type == ProcessEvent::Type::spawned) live_[r.pid] = r.slot;
        if (r.type == ProcessEvent::Type::exited) live_.erase(r.pid);
        events.push_back({r.type, r.slot, r.pid, r.status});
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      // The fork server is gone; its workers die with it (PR_SET_PDEATHSIG).
      for (auto [pid, slot] : live_) events.push_back({ProcessEvent::Type::exited, slot, pid, SIGKILL});
      live_.clear();
      reap_server();
      start();
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
    UniqueFd mine(fds[0]), theirs(fds[1]);
    server_pid_ = detail::spawn_process(argv_, theirs.get());
    sock_ = std::move(mine);
  }

  void reap_server() {
    if (server_pid_ <= 0) return;
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while (waitpid(server_pid_, nullptr, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > until) {
        kill(server_pid_, SIGKILL);
        waitpid(server_pid_, nullptr, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    server_pid_ = -1;
  }

  std::vector<std::string> argv_;
  std::string context_;
  UniqueFd sock_;
  pid_t server_pid_ = -1;
  std::unordered_map<pid_t, uint32_t> live_;
};

}  // namespace

std::unique_ptr<Launcher> make_fork_server_launcher(std::vector<std::string> argv, std::string context,
                                                    ForkServerHandle adopt) {
  return std::make_unique<ForkServerLauncher>(std::move(argv), std::move(context), adopt);
}

void die_with_parent(pid_t expected_parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != expected_parent) _exit(1);
}

ForkedWorker run_fork_server(int sock, const ForkHooks& hooks) {
  const pid_t me = getpid();
  signal(SIGINT, SIG_IGN);  // Ctrl-C belongs to the pool's owner, which shuts us down
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
      sigprocmask(SIG_UNBLOCK, &chld, nullptr);
      die_with_parent(me);
      return ForkedWorker{req.slot, std::string(req.context, std::min<std::size_t>(req.context_len, kContextMax))};
    }
    if (hooks.after_parent) hooks.after_parent();
    if (pid < 0) {
      send_reply(sock, {ProcessEvent::Type::spawn_failed, req.slot, -1, errno});
    } else {
      children[pid] = req.slot;
      send_reply(sock, {ProcessEvent::Type::spawned, req.slot, pid, 0});
    }
  }
}

}  // namespace shoal
