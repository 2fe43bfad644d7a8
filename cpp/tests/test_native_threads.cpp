// A worker limits the native thread pools it inherited already loaded: here
// the OpenMP runtime of GCC (libgomp, installed with the compiler), loaded
// as numpy's BLAS would be, reports the limit afterwards.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "shoal/proc/native_threads.hpp"

TEST(NativeThreads, ALoadedOpenMpRuntimeTakesTheLimit) {
  // Never unloaded (RTLD_NODELETE): the per-thread state libgomp allocates
  // must stay reachable for LeakSanitizer, as in a process that loaded numpy.
  void* gomp = dlopen("libgomp.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (gomp == nullptr) GTEST_SKIP() << "libgomp.so.1 is not installed: " << dlerror();
  auto max_threads = reinterpret_cast<int (*)()>(dlsym(gomp, "omp_get_max_threads"));
  ASSERT_NE(max_threads, nullptr);
  for (int limit : {3, 1}) {
    const std::vector<std::string> limited = shoal::limit_native_threads(limit);
    EXPECT_TRUE(std::any_of(limited.begin(), limited.end(),
                            [](const std::string& p) { return p.find("libgomp") != std::string::npos; }));
    EXPECT_EQ(max_threads(), limit);
  }
}

TEST(NativeThreads, ALimitUnderOneIsRefused) {
  EXPECT_THROW(shoal::limit_native_threads(0), std::invalid_argument);
}
