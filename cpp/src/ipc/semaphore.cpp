#include "shoal/ipc/semaphore.hpp"

#include <string>

namespace shoal {

Semaphore::Semaphore(uint32_t initial, uint32_t bound) : value_(initial), bound_(bound) {
  if (bound > kMaxValue) throw std::invalid_argument("semaphore bound " + std::to_string(bound) + " is too large");
  if (initial > bound)
    throw std::invalid_argument("semaphore initial value " + std::to_string(initial) + " exceeds its bound " +
                                std::to_string(bound));
}

bool Semaphore::try_acquire() {
  uint32_t v = value_.load(std::memory_order_relaxed);
  while (v != 0) {
    // seq_cst pairs with the Notifier's sleeper count, as for every state a Notifier guards.
    if (value_.compare_exchange_weak(v, v - 1, std::memory_order_seq_cst, std::memory_order_relaxed)) return true;
  }
  return false;
}

bool Semaphore::acquire(const Deadline& deadline) {
  if (try_acquire()) return true;
  // The readiness check *is* the acquisition, so a wake-up that finds the count
  // already taken by someone else just goes back to sleep.
  return released_.wait_until([this] { return try_acquire(); }, deadline);
}

void Semaphore::release() {
  uint32_t v = value_.load(std::memory_order_relaxed);
  do {
    if (v >= bound_) throw SemaphoreOverflowError("semaphore or lock released too many times");
  } while (!value_.compare_exchange_weak(v, v + 1, std::memory_order_seq_cst, std::memory_order_relaxed));
  // One unit released wakes one sleeper; it retries, so no unit goes unclaimed.
  released_.notify_one();
}

}  // namespace shoal
