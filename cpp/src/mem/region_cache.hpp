#pragma once
// A small stock of freed memory regions, handed out again instead of going
// back to the system and being faulted in anew.
//
// A pool worker runs chunk after chunk of a map: each builds tens of
// thousands of Python objects and frees them all a few milliseconds later.
// CPython's object allocator gets its memory in 1 MiB arenas and returns an
// arena to the system as soon as it is empty, so every chunk maps fresh
// arenas and takes a page fault on each of their pages (a quarter of the
// worker's CPU time on a small VM). Keeping a few freed arenas in stock while
// the worker is busy, and giving them back when it goes idle, removes that.
//
// The cache does not allocate: the caller passes the functions that really
// get and free memory, and gets back regions they made.
#include <cstddef>
#include <mutex>
#include <utility>
#include <vector>

namespace shoal {

class RegionCache {
 public:
  using Release = void (*)(void* context, void* region, std::size_t size);

  explicit RegionCache(std::size_t max_regions) : max_regions_(max_regions) { stock_.reserve(max_regions); }
  RegionCache(const RegionCache&) = delete;
  RegionCache& operator=(const RegionCache&) = delete;

  // A cached region of exactly `size` bytes, or nullptr.
  void* take(std::size_t size) {
    std::lock_guard lock(mu_);
    for (auto it = stock_.rbegin(); it != stock_.rend(); ++it) {
      if (it->second == size) {
        void* region = it->first;
        stock_.erase(std::next(it).base());
        return region;
      }
    }
    return nullptr;
  }

  // Keeps `region` for a later take(); false (the caller frees it) when full.
  bool keep(void* region, std::size_t size) {
    std::lock_guard lock(mu_);
    if (stock_.size() >= max_regions_) return false;
    stock_.emplace_back(region, size);
    return true;
  }

  // Frees every cached region through `release`; returns how many.
  std::size_t trim(Release release, void* context) {
    std::vector<std::pair<void*, std::size_t>> freed;
    {
      std::lock_guard lock(mu_);
      freed.swap(stock_);
      stock_.reserve(max_regions_);
    }
    for (auto [region, size] : freed) release(context, region, size);
    return freed.size();
  }

  std::size_t size() const {
    std::lock_guard lock(mu_);
    return stock_.size();
  }
  std::size_t bytes() const {
    std::lock_guard lock(mu_);
    std::size_t total = 0;
    for (const auto& entry : stock_) total += entry.second;
    return total;
  }

 private:
  const std::size_t max_regions_;
  mutable std::mutex mu_;
  std::vector<std::pair<void*, std::size_t>> stock_;  // most recently freed last: warmest in cache
};

}  // namespace shoal
