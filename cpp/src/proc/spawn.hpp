#pragma once
// posix_spawn of an argv, with optional descriptor to hand over as fd 3.
#include <sys/types.h>

#include <string>
#include <vector>

namespace shoal::detail {

// Starts argv[0] (searched in PATH) with the current environment; returns the pid.
// If `fd3` >= 0 it becomes the child's file descriptor 3. Throws on failure.
pid_t spawn_process(const std::vector<std::string>& argv, int fd3 = -1);

}  // namespace shoal::detail
