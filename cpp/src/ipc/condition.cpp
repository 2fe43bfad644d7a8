#include "shoal/ipc/condition.hpp"

#include <climits>
#include <exception>

#include "shoal/base/futex.hpp"

namespace shoal {

Condition::WaitResult Condition::wait(ProcessLock& lock, const Deadline& deadline, const Blocker& block) {
  if (!lock.held_by_me()) throw NotOwnerError("cannot wait on un-acquired lock");
  // Registered and keyed while the lock is still held: any later notify changes seq_.
  waiters_.fetch_add(1, std::memory_order_seq_cst);
  const uint32_t key = seq_.load(std::memory_order_seq_cst);
  const uint32_t depth = lock.release_all();

  bool notified = false;
  std::exception_ptr interrupted;
  try {
    notified = block(deadline, [&](const Deadline& d) {
      while (seq_.load(std::memory_order_seq_cst) == key) {
        if (!futex_wait(seq_, key, d)) break;
      }
      return seq_.load(std::memory_order_seq_cst) != key;
    });
  } catch (...) {
    interrupted = std::current_exception();
  }
  waiters_.fetch_sub(1, std::memory_order_seq_cst);

  // The caller expects to hold the lock again on return, exception or not.
  LockResult relocked = LockResult::acquired;
  complete_despite_interrupts([&] { relocked = lock.restore(depth, block); });
  if (interrupted) std::rethrow_exception(interrupted);
  return {notified, relocked};
}

void Condition::notify(const ProcessLock& lock, uint32_t n) {
  if (!lock.held_by_me()) throw NotOwnerError("cannot notify on un-acquired lock");
  if (n > 0) bump_and_wake(n > INT_MAX ? INT_MAX : static_cast<int>(n));
}

void Condition::notify_all(const ProcessLock& lock) {
  if (!lock.held_by_me()) throw NotOwnerError("cannot notify on un-acquired lock");
  bump_and_wake(INT_MAX);
}

void Condition::bump_and_wake(int n) {
  seq_.fetch_add(1, std::memory_order_seq_cst);
  // A waiter registers before it reads seq_, so "no waiters" here means nobody
  // could be asleep on the old value.
  if (waiters_.load(std::memory_order_seq_cst) != 0) futex_wake(seq_, n);
}

}  // namespace shoal
