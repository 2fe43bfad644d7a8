// A worker pins itself to the CPUs cpu_affinity= gives it; what it asked for
// is what the kernel then reports, and a CPU it may not have is refused.
#include <gtest/gtest.h>

#include <stdexcept>
#include <system_error>
#include <vector>

#include "shoal/proc/affinity.hpp"

namespace {

// Restores the calling thread's mask, whatever the test did to it.
struct SavedAffinity {
  std::vector<int> cpus = shoal::cpu_affinity();
  ~SavedAffinity() { shoal::set_cpu_affinity(cpus); }
};

}  // namespace

TEST(Affinity, TheCpusSetAreTheCpusReported) {
  SavedAffinity saved;
  ASSERT_FALSE(saved.cpus.empty());
  const std::vector<int> one{saved.cpus.back()};
  shoal::set_cpu_affinity(one);
  EXPECT_EQ(shoal::cpu_affinity(), one);
  shoal::set_cpu_affinity(saved.cpus);
  EXPECT_EQ(shoal::cpu_affinity(), saved.cpus);
}

TEST(Affinity, NoCpusOrNoSuchCpuIsRefusedAndTheMaskStays) {
  SavedAffinity saved;
  EXPECT_THROW(shoal::set_cpu_affinity(std::vector<int>{}), std::invalid_argument);
  EXPECT_THROW(shoal::set_cpu_affinity(std::vector<int>{-1}), std::invalid_argument);
  EXPECT_THROW(shoal::set_cpu_affinity(std::vector<int>{1 << 20}), std::invalid_argument);
  EXPECT_EQ(shoal::cpu_affinity(), saved.cpus);
}
