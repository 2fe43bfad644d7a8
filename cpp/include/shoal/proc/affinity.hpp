#pragma once
// CPU affinity of the calling process (Executor(cpu_affinity=...)): a worker
// pins itself before it runs anything of the user's, so that the threads its
// libraries start (OpenMP, BLAS) inherit the mask.
#include <span>
#include <vector>

namespace shoal {

// Restricts the calling process (every thread it starts from now on) to
// `cpus`. Throws std::invalid_argument for an empty set or a negative or
// out-of-range CPU number, std::system_error if the kernel refuses (a CPU
// outside the process's cpuset).
void set_cpu_affinity(std::span<const int> cpus);

// The CPUs the calling process may run on, in increasing order.
std::vector<int> cpu_affinity();

}  // namespace shoal
