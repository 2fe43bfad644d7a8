// Launcher for start_method="spawn": one fresh interpreter per worker, watched
// through a pidfd each.
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>

#include "shoal/proc/fd.hpp"
#include "shoal/proc/launcher.hpp"
#include "spawn.hpp"

namespace shoal {
namespace {

int pidfd_open(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

class SpawnLauncher final : public Launcher {
 public:
  explicit SpawnLauncher(std::vector<std::string> argv) : argv_(std::move(argv)) {}

  void spawn(uint32_t slot, std::vector<ProcessEvent>& events) override {
    auto argv = argv_;
    argv.push_back(std::to_string(slot));
    pid_t pid;
    try {
      pid = detail::spawn_process(argv);
    } catch (const std::system_error& e) {
      events.push_back({ProcessEvent::Type::spawn_failed, slot, -1, e.code().value()});
      return;
    }
    UniqueFd fd(pidfd_open(pid));
    events.push_back({ProcessEvent::Type::spawned, slot, pid, 0});
    const int key = fd.get();
    children_[key] = Child{slot, pid, std::move(fd)};
  }

  std::vector<int> poll_fds() const override {
    std::vector<int> fds;
    for (const auto& [fd, child] : children_) fds.push_back(fd);
    return fds;
  }

  void on_readable(int fd, std::vector<ProcessEvent>& events) override {
    auto it = children_.find(fd);
    if (it == children_.end()) return;
    int status = 0;
    if (waitpid(it->second.pid, &status, WNOHANG) != it->second.pid) return;
    events.push_back({ProcessEvent::Type::exited, it->second.slot, it->second.pid, status});
    children_.erase(it);
  }

  void stop() override {
    for (auto& [fd, child] : children_) {
      kill(child.pid, SIGKILL);
      waitpid(child.pid, nullptr, 0);
    }
    children_.clear();
  }

 private:
  struct Child {
    uint32_t slot;
    pid_t pid;
    UniqueFd fd;
  };
  std::vector<std::string> argv_;
  std::map<int, Child> children_;
};

}  // namespace

std::unique_ptr<Launcher> make_spawn_launcher(std::vector<std::string> argv) {
  return std::make_unique<SpawnLauncher>(std::move(argv));
}

}  // namespace shoal
