#include "shoal/base/pidfd.hpp"

#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

namespace shoal {

int pidfd_open(pid_t pid) {
  // A pidfd is close-on-exec by nature (see pidfd_open(2)).
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
}

int signal_process(int pidfd, pid_t pid, int sig) {
  if (pidfd >= 0) return static_cast<int>(syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
  if (pid <= 0) {
    errno = ESRCH;
    return -1;
  }
  return kill(pid, sig);
}

namespace {

int wait_status_of(const siginfo_t& info) {
  switch (info.si_code) {
    case CLD_EXITED: return W_EXITCODE(info.si_status, 0);
    case CLD_KILLED: return W_EXITCODE(0, info.si_status);
    case CLD_DUMPED: return W_EXITCODE(0, info.si_status) | WCOREFLAG;
    default: return kExitStatusUnknown;
  }
}

int waitpid_status(pid_t pid) {
  int status = 0;
  for (;;) {
    if (waitpid(pid, &status, 0) == pid) return status;
    if (errno != EINTR) return kExitStatusUnknown;  // ECHILD: reaped already
  }
}

}  // namespace

int reap_child(int pidfd, pid_t pid) {
  if (pidfd < 0) return waitpid_status(pid);
  for (;;) {
    siginfo_t info{};
    if (waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &info, WEXITED) == 0)
      return wait_status_of(info);
    if (errno == EINTR) continue;
    // Linux 5.3 has pidfds but cannot wait on them (P_PIDFD came in 5.4):
    // wait by pid then, which is safe for a child nobody has reaped yet.
    if (errno == EINVAL) return waitpid_status(pid);
    return kExitStatusUnknown;  // ECHILD: the kernel (SIGCHLD ignored) or other code reaped it
  }
}

std::string describe_exit(int wait_status) {
  if (wait_status == kExitStatusUnknown)
    return "exited with an unknown status (reaped by the system or other code before it could be read, as when "
           "SIGCHLD is ignored)";
  if (WIFSIGNALED(wait_status)) {
    int sig = WTERMSIG(wait_status);
    const char* abbrev = sigabbrev_np(sig);
    return "was killed by signal " + std::to_string(sig) + (abbrev ? std::string(" (SIG") + abbrev + ")" : "");
  }
  if (WIFEXITED(wait_status)) return "exited with code " + std::to_string(WEXITSTATUS(wait_status));
  return "ended with wait status " + std::to_string(wait_status);
}

}  // namespace shoal
