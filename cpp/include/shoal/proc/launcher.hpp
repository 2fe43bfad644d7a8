#pragma once
// How worker processes come to life. A Launcher starts a worker for a slot and
// reports, through the file descriptors it asks the supervisor to poll, when a
// worker has started and when it has exited (with its wait status).
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shoal/base/pidfd.hpp"

namespace shoal {

struct ProcessEvent {
  // failed: the launcher or the supervisor thread cannot go on (a fork server
  // that keeps dying, an error on the supervisor thread); no worker can be
  // started or watched any more, and `reason` says why. Not tied to a slot.
  enum class Type { spawned, exited, spawn_failed, failed };
  Type type;
  uint32_t slot;
  pid_t pid;
  // For exited: as from waitpid(), or kExitStatusUnknown; for spawn_failed: errno.
  int wait_status;
  // For spawned: the worker's pidfd, the handle to signal it by (empty only on
  // kernels without pidfds). Opened before anyone could have reaped the worker,
  // so it is sure to name it.
  SharedPidfd pidfd = {};
  // For failed, and for spawn_failed when the launcher gave up: what happened.
  std::string reason = {};
};

class Launcher {
 public:
  virtual ~Launcher() = default;
  // Asks for a worker in `slot`. A spawned (or spawn_failed) event follows, at
  // once in `events` or later from on_readable(). A launcher that cannot start
  // workers any more reports a failed event, then spawn_failed for every
  // request it still holds and for each later one.
  virtual void spawn(uint32_t slot, std::vector<ProcessEvent>& events) = 0;
  // Descriptors the supervisor polls; on_readable() turns their input into events.
  virtual std::vector<int> poll_fds() const = 0;
  virtual void on_readable(int fd, std::vector<ProcessEvent>& events) = 0;
  // Stops the launcher itself (a fork server exits and takes its workers along).
  virtual void stop() = 0;
};

// Each worker is a fresh interpreter: argv + the slot number as a last argument.
// `inherited`: descriptors every worker keeps at the same numbers (an
// initializer argument's pipe); the caller keeps them open while the launcher lives.
std::unique_ptr<Launcher> make_spawn_launcher(std::vector<std::string> argv, std::vector<int> inherited = {});

// Workers are forked by one fork server, a clean interpreter started with
// `argv` (it receives its control socket as file descriptor 3). A server the
// caller already started (pid, socket) may be adopted instead; if a server
// dies, a fresh one is started from `argv` and is sent again the requests the
// dead one left unanswered. After kFailedForkServerStarts servers in a row end
// (or cannot be started) without forking any worker, the launcher gives up
// (a failed event, with the last one's exit) instead of restarting forever.
// Each worker learns `context` (the pool's segment name) from its spawn request.
inline constexpr uint32_t kFailedForkServerStarts = 3;
struct ForkServerHandle {
  pid_t pid = -1;
  int socket = -1;  // ownership passes to the launcher
};
// `inherited`: as for make_spawn_launcher, kept by each server it starts (and so by its workers).
std::unique_ptr<Launcher> make_fork_server_launcher(std::vector<std::string> argv, std::string context,
                                                    ForkServerHandle adopt = {}, std::vector<int> inherited = {});

// What a forked worker is told: its slot and the context string.
struct ForkedWorker {
  uint32_t slot;
  std::string context;
};

// The fork server's loop, run inside the fork server process on control socket
// `sock`. Returns only in a freshly forked worker.
// `before_fork`/`after_fork_child`/`after_fork_parent` let an embedding runtime
// (CPython) keep its own state consistent across fork().
struct ForkHooks {
  void (*before)() = nullptr;
  void (*after_parent)() = nullptr;
  void (*after_child)() = nullptr;
};
ForkedWorker run_fork_server(int sock, const ForkHooks& hooks);

// Makes the calling process receive SIGKILL when its parent dies, and exits at
// once if the parent is already gone (pid `expected_parent`).
void die_with_parent(pid_t expected_parent);

}  // namespace shoal
