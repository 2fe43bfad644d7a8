#include "shoal/proc/affinity.hpp"

#include <sched.h>

#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>

namespace shoal {

void set_cpu_affinity(std::span<const int> cpus) {
  if (cpus.empty()) throw std::invalid_argument("a CPU set needs at least one CPU");
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) {
    if (cpu < 0 || cpu >= CPU_SETSIZE)
      throw std::invalid_argument("CPU " + std::to_string(cpu) + " is not a CPU number (0.." +
                                  std::to_string(CPU_SETSIZE - 1) + ")");
    CPU_SET(cpu, &set);
  }
  if (sched_setaffinity(0, sizeof set, &set) != 0)
    throw std::system_error(errno, std::generic_category(), "sched_setaffinity");
}

std::vector<int> cpu_affinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0)
    throw std::system_error(errno, std::generic_category(), "sched_getaffinity");
  std::vector<int> out;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &set)) out.push_back(cpu);
  return out;
}

}  // namespace shoal
