// Launcher for start_method="spawn": one fresh interpreter per worker, watched
// through a pidfd each.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <map>

#include "shoal/base/fd.hpp"
#include "shoal/proc/launcher.hpp"
#include "shoal/base/pidfd.hpp"
#include "spawn.hpp"

namespace shoal {
namespace {

// Whether the process behind `pidfd` is a child of this process not reaped
// yet: a pidfd opened on a pid that was reused after our child died names
// another process, which waitid() refuses (ECHILD). Kernels that cannot wait
// on a pidfd (Linux 5.3) are taken at their word.
bool is_our_child(int pidfd) {
  siginfo_t info{};
  const int rc = waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &info, WEXITED | WNOHANG | WNOWAIT);
  return rc == 0 || errno != ECHILD;
}

class SpawnLauncher final : public Launcher {
 public:
  SpawnLauncher(std::vector<std::string> argv, std::vector<int> inherited)
      : argv_(std::move(argv)), inherited_(std::move(inherited)) {}
  ~SpawnLauncher() override { stop(); }

  void spawn(uint32_t slot, std::vector<ProcessEvent>& events) override {
    auto argv = argv_;
    argv.push_back(std::to_string(slot));
    pid_t pid;
    try {
      pid = detail::spawn_process(argv, -1, inherited_);
    } catch (const std::system_error& e) {
      events.push_back({ProcessEvent::Type::spawn_failed, slot, -1, e.code().value()});
      return;
    }
    // Nobody has waited for the child yet, so its pid still names it, unless
    // this process ignores SIGCHLD: then the kernel reaps a child the moment
    // it exits, and one that exits at once may be gone (or its pid even taken
    // by another process) before pidfd_open. (posix_spawn gives no pidfd;
    // glibc 2.39's pidfd_spawn would.)
    auto pidfd = std::make_shared<const UniqueFd>(pidfd_open(pid));
    if (!*pidfd && errno != ESRCH) {
      // Nothing to watch it by (a kernel without pidfds, or out of
      // descriptors): a worker whose death would go unnoticed is worse than
      // none, so it is stopped and reported as failed.
      const int err = errno;
      kill(pid, SIGKILL);
      reap_child(-1, pid);
      events.push_back({ProcessEvent::Type::spawn_failed, slot, -1, err});
      return;
    }
    if (!*pidfd || !is_our_child(pidfd->get())) {
      // Gone and reaped already: it started and ended, how is unknown.
      events.push_back({ProcessEvent::Type::spawned, slot, pid, 0});
      events.push_back({ProcessEvent::Type::exited, slot, pid, kExitStatusUnknown});
      return;
    }
    events.push_back({ProcessEvent::Type::spawned, slot, pid, 0, pidfd});
    const int key = pidfd->get();
    children_[key] = Child{slot, pid, std::move(pidfd)};
  }

  std::vector<int> poll_fds() const override {
    std::vector<int> fds;
    for (const auto& [fd, child] : children_) fds.push_back(fd);
    return fds;
  }

  void on_readable(int fd, std::vector<ProcessEvent>& events) override {
    auto it = children_.find(fd);
    if (it == children_.end()) return;
    // A readable pidfd means the process has exited, whether or not its
    // status can still be collected (SIGCHLD ignored: the kernel reaped it
    // already). Either way the child leaves the poll set now: its pidfd stays
    // readable for good, and polling it again would spin this thread.
    const int status = reap_child(fd, it->second.pid);
    events.push_back({ProcessEvent::Type::exited, it->second.slot, it->second.pid, status});
    children_.erase(it);
  }

  void stop() override {
    for (auto& [fd, child] : children_) signal_process(fd, child.pid, SIGKILL);
    for (auto& [fd, child] : children_) reap_child(fd, child.pid);
    children_.clear();
  }

 private:
  struct Child {
    uint32_t slot;
    pid_t pid;
    SharedPidfd pidfd;  // shared with the engine, which kills the worker through it
  };
  std::vector<std::string> argv_;
  std::vector<int> inherited_;  // the caller's, open while this launcher lives
  std::map<int, Child> children_;
};

}  // namespace

std::unique_ptr<Launcher> make_spawn_launcher(std::vector<std::string> argv, std::vector<int> inherited) {
  return std::make_unique<SpawnLauncher>(std::move(argv), std::move(inherited));
}

}  // namespace shoal
