// RegionCache: freed regions are handed out again by size, up to a limit, and
// trim() frees them all through the function it is given.
#include <gtest/gtest.h>

#include <cstdlib>
#include <thread>
#include <vector>

#include "mem/region_cache.hpp"

namespace shoal {
namespace {

struct Freed {
  std::vector<std::pair<void*, std::size_t>> regions;
  static void release(void* self, void* region, std::size_t size) {
    static_cast<Freed*>(self)->regions.emplace_back(region, size);
    std::free(region);
  }
};

TEST(RegionCache, HandsBackAKeptRegionOfTheSameSizeOnly) {
  RegionCache cache(4);
  void* region = std::malloc(4096);
  ASSERT_TRUE(cache.keep(region, 4096));
  EXPECT_EQ(cache.take(8192), nullptr);
  EXPECT_EQ(cache.take(4096), region);
  EXPECT_EQ(cache.take(4096), nullptr) << "a region is handed out once";
  std::free(region);
}

TEST(RegionCache, RefusesRegionsPastItsLimitSoTheCallerFreesThem) {
  RegionCache cache(2);
  std::vector<void*> regions{std::malloc(64), std::malloc(64), std::malloc(64)};
  EXPECT_TRUE(cache.keep(regions[0], 64));
  EXPECT_TRUE(cache.keep(regions[1], 64));
  EXPECT_FALSE(cache.keep(regions[2], 64));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.bytes(), 128u);
  std::free(regions[2]);
  Freed freed;
  EXPECT_EQ(cache.trim(&Freed::release, &freed), 2u);
  EXPECT_EQ(freed.regions.size(), 2u);
}

TEST(RegionCache, TheMostRecentlyFreedRegionComesBackFirst) {
  RegionCache cache(4);
  void* older = std::malloc(128);
  void* newer = std::malloc(128);
  cache.keep(older, 128);
  cache.keep(newer, 128);
  EXPECT_EQ(cache.take(128), newer);  // likeliest still in the CPU's caches
  EXPECT_EQ(cache.take(128), older);
  std::free(older);
  std::free(newer);
}

TEST(RegionCache, TrimEmptiesTheStockAndKeepingWorksAfterwards) {
  RegionCache cache(3);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(cache.keep(std::malloc(32), 32));
  Freed freed;
  EXPECT_EQ(cache.trim(&Freed::release, &freed), 3u);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.bytes(), 0u);
  EXPECT_EQ(cache.trim(&Freed::release, &freed), 0u);
  void* again = std::malloc(32);
  EXPECT_TRUE(cache.keep(again, 32));
  EXPECT_EQ(cache.take(32), again);
  std::free(again);
}

TEST(RegionCache, TrimFromAnotherThreadWhileRegionsComeAndGo) {
  RegionCache cache(8);
  Freed freed;
  std::thread trimmer([&] {
    for (int i = 0; i < 200; ++i) cache.trim(&Freed::release, &freed);
  });
  for (int i = 0; i < 2000; ++i) {
    void* region = cache.take(256);
    if (region == nullptr) region = std::malloc(256);
    if (!cache.keep(region, 256)) std::free(region);
  }
  trimmer.join();
  cache.trim(&Freed::release, &freed);
  EXPECT_EQ(cache.size(), 0u);
}

}  // namespace
}  // namespace shoal
