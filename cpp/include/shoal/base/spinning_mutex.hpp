#pragma once
// A std::mutex that spins briefly before it blocks.
//
// The engine's lock is held for a few microseconds at a time (queue a job,
// drain an outbox), but the thread that submits and the engine thread take it
// constantly; with a plain std::mutex every collision puts the loser to sleep
// in the kernel and costs a wake-up (5-20 µs on a VM) to get it back. Waiting
// out a short critical section is far cheaper.
#include <chrono>
#include <mutex>

#include "shoal/base/futex.hpp"
#include "shoal/base/thread_annotations.hpp"

namespace shoal {

// Lock it with shoal::LockGuard or shoal::UniqueLock (shoal/base/mutex.hpp),
// which the thread-safety analysis follows.
class SHOAL_CAPABILITY("mutex") SpinningMutex {
 public:
  void lock() SHOAL_ACQUIRE() {
    if (!try_lock_spinning()) mu_.lock();
  }
  // Takes the lock if it comes free within the spin; false (not held) if not.
  bool try_lock_spinning() SHOAL_TRY_ACQUIRE(true) {
    if (mu_.try_lock()) return true;
    const auto give_up = std::chrono::steady_clock::now() + kSpin;
    do {
      for (int i = 0; i < kPausesPerTry; ++i) cpu_relax();
      if (mu_.try_lock()) return true;
    } while (std::chrono::steady_clock::now() < give_up);
    return false;
  }
  bool try_lock() SHOAL_TRY_ACQUIRE(true) { return mu_.try_lock(); }
  void unlock() SHOAL_RELEASE() { mu_.unlock(); }

 private:
  static constexpr std::chrono::microseconds kSpin{20};
  static constexpr int kPausesPerTry = 32;
  std::mutex mu_;
};

}  // namespace shoal
