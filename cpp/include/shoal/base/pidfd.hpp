#pragma once
// Process file descriptors (pidfds, Linux 5.3+). A pidfd names one process for
// as long as it is open. A pid does not: once the process has exited and been
// reaped, the system may hand its number to an unrelated process, so a kill()
// by a pid someone else may already have reaped can hit a stranger. The pool
// therefore signals and watches its workers through pidfds.
#include <sys/types.h>

#include <memory>
#include <string>

#include "shoal/base/fd.hpp"

namespace shoal {

// A pidfd shared by everyone who may signal or wait for its process (the
// launcher that watches a worker, the engine that kills it): the descriptor is
// closed when the last of them lets go, never while one may still use it.
using SharedPidfd = std::shared_ptr<const UniqueFd>;

// The wait status of a process that has exited in a way nobody can tell: it
// was reaped before its status could be collected (this process ignores
// SIGCHLD, so the kernel reaps its children itself, or other code took it with
// wait()). Real wait statuses are 16-bit values, so this never is one.
inline constexpr int kExitStatusUnknown = -1;

// pidfd_open(2): a close-on-exec pidfd for `pid`, or -1 with errno set
// (ENOSYS on kernels without pidfds).
int pidfd_open(pid_t pid);

// Sends `sig` through `pidfd`; without one (-1) by `pid`, the only handle
// there is on kernels without pidfds. 0, or -1 with errno (ESRCH: gone).
int signal_process(int pidfd, pid_t pid, int sig);

// Waits for child `pid` (through `pidfd` if >= 0) to exit, reaps it and
// returns its wait status, or kExitStatusUnknown if it was reaped already.
// Blocks until the child exits: call it once the pidfd polls readable (which
// means exited) or after SIGKILL.
int reap_child(int pidfd, pid_t pid);

// Describes how a process ended from its wait status (or kExitStatusUnknown),
// e.g. "was killed by signal 9 (SIGKILL)" or "exited with code 1".
std::string describe_exit(int wait_status);

}  // namespace shoal
