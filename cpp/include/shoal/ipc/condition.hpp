#pragma once
// A process-shared condition variable over a ProcessLock (which may live in
// another segment). Waiters sleep on a futex sequence number that every notify
// bumps; a waiter reads the number while it still holds the lock and a notifier
// must hold the lock, so a notify can never slip in unseen between "release the
// lock" and "go to sleep".
//
// Spurious wakeups are possible: notify(n) wakes at least min(n, waiters) of
// them, but a waiter that was between reading the sequence and sleeping (or
// between two wait slices) also sees the bump and returns. Callers re-check their
// predicate, as with any condition variable (wait_for does it for you).
#include <atomic>
#include <cstdint>

#include "shoal/ipc/blocker.hpp"
#include "shoal/base/deadline.hpp"
#include "shoal/ipc/lock.hpp"

namespace shoal {

class Condition {
 public:
  static constexpr uint64_t kMagic = 0x73686f616c434e44ULL;  // "shoalCND"
  static constexpr const char* kTypeName = "Condition";

  struct WaitResult {
    bool notified;        // false: the deadline passed first
    LockResult relocked;  // how the lock was taken back (previous_owner_died is possible)
  };

  Condition() = default;
  Condition(const Condition&) = delete;
  Condition& operator=(const Condition&) = delete;

  // Releases `lock` completely (the calling thread must hold it, else
  // NotOwnerError), sleeps until notified or `deadline`, then takes the lock back
  // at its former recursion depth, whatever happened, even if `block` threw.
  WaitResult wait(ProcessLock& lock, const Deadline& deadline = Deadline::never(),
                  const Blocker& block = block_directly);

  // Both require the calling thread to hold `lock` (else NotOwnerError).
  void notify(const ProcessLock& lock, uint32_t n = 1);
  void notify_all(const ProcessLock& lock);

 private:
  void bump_and_wake(int n);

  std::atomic<uint32_t> seq_{0};
  std::atomic<uint32_t> waiters_{0};  // lets notify skip the system call when nobody waits
};

}  // namespace shoal
