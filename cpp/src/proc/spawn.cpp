#include "spawn.hpp"

#include <spawn.h>
#include <signal.h>

#include <cerrno>

#include "shoal/base/errors.hpp"

extern char** environ;

namespace shoal::detail {

pid_t spawn_process(const std::vector<std::string>& argv, int fd3, const std::vector<int>& inherited) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (fd3 >= 0) posix_spawn_file_actions_adddup2(&actions, fd3, 3);
  // dup2 onto itself clears FD_CLOEXEC in the child (POSIX.1-2024, glibc 2.29+):
  // the parent's copy stays close-on-exec, so no other child of the caller gets it.
  for (int fd : inherited) posix_spawn_file_actions_adddup2(&actions, fd, fd);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // The engine's threads may block signals; a new process starts with none blocked.
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);

  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw_errno("cannot start worker process '" + argv[0] + "'", rc);
  return pid;
}

}  // namespace shoal::detail
