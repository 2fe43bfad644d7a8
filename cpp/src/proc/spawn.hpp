#pragma once
// posix_spawn of an argv, with optional descriptor to hand over as fd 3.
#include <sys/types.h>

#include <string>
#include <vector>

namespace shoal::detail {

// Starts argv[0] (searched in PATH) with the current environment; returns the pid.
// If `fd3` >= 0 it becomes the child's file descriptor 3. Throws on failure.
// `inherited`: descriptors the child keeps at the same numbers (close-on-exec
// cleared in the child only); none may be 3 when fd3 is given.
pid_t spawn_process(const std::vector<std::string>& argv, int fd3 = -1, const std::vector<int>& inherited = {});

}  // namespace shoal::detail
