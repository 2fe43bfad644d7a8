#pragma once
// A counting semaphore in shared memory: a 32-bit counter taken with a
// compare-and-swap and a Notifier to sleep on while it is zero. Acquire and
// release make no system call unless someone has to sleep or be woken.
#include <atomic>
#include <climits>
#include <cstdint>
#include <stdexcept>

#include "shoal/base/deadline.hpp"
#include "shoal/ipc/notifier.hpp"

namespace shoal {

// A bounded semaphore released above its bound, or any semaphore above kMaxValue
// (maps to ValueError, as in multiprocessing).
struct SemaphoreOverflowError : std::range_error {
  using std::range_error::range_error;
};

class Semaphore {
 public:
  static constexpr uint64_t kMagic = 0x73686f616c53454dULL;  // "shoalSEM"
  static constexpr const char* kTypeName = "Semaphore";
  // The largest value a semaphore may hold (SEM_VALUE_MAX on Linux).
  static constexpr uint32_t kMaxValue = INT_MAX;

  // `bound`: the value release() may not exceed (BoundedSemaphore), or kMaxValue.
  // Throws std::invalid_argument if `initial` > `bound` or `bound` > kMaxValue.
  explicit Semaphore(uint32_t initial, uint32_t bound = kMaxValue);
  Semaphore(const Semaphore&) = delete;
  Semaphore& operator=(const Semaphore&) = delete;

  bool try_acquire();
  // Returns false if the count stayed at zero until the deadline.
  bool acquire(const Deadline& deadline = Deadline::never());
  // Throws SemaphoreOverflowError if the value would pass the bound.
  void release();

  uint32_t value() const { return value_.load(std::memory_order_relaxed); }
  uint32_t bound() const { return bound_; }

 private:
  std::atomic<uint32_t> value_;
  const uint32_t bound_;
  Notifier released_;
};

}  // namespace shoal
