#include "shoal/ipc/lock.hpp"

#include <pthread.h>
#include <unistd.h>

#include <ctime>

namespace shoal {
namespace detail {

__thread pid_t cached_thread_id = 0;

namespace {
// A forked child's only thread inherits the forking thread's cache but has a new id.
const int forget_thread_id_in_child = pthread_atfork(nullptr, nullptr, [] { cached_thread_id = 0; });
}  // namespace

pid_t fetch_thread_id() {
  (void)forget_thread_id_in_child;
  cached_thread_id = gettid();
  return cached_thread_id;
}

}  // namespace detail

void ProcessLock::note_acquired(LockResult result, pid_t me) {
  // After a holder died its depth is stale; the pthread mutex restarts at one level.
  if (result == LockResult::previous_owner_died) depth_ = 0;
  owner_.store(me, std::memory_order_relaxed);
  ++depth_;
}

LockResult ProcessLock::try_acquire() {
  const pid_t me = current_thread_id();
  // An error-checking mutex reports EDEADLK rather than "busy" to its own holder.
  if (!recursive_ && owner_.load(std::memory_order_relaxed) == me) return LockResult::timed_out;
  const LockResult result = mutex_.try_lock();
  if (result != LockResult::timed_out) note_acquired(result, me);
  return result;
}

LockResult ProcessLock::acquire(const Deadline& deadline, const Blocker& block) {
  LockResult result = try_acquire();
  if (result != LockResult::timed_out) return result;
  if (!recursive_ && held_by_me()) return wait_out_self_deadlock(deadline, block);
  const bool acquired = block(deadline, [&](const Deadline& d) {
    result = mutex_.lock(d);
    return result != LockResult::timed_out;
  });
  if (!acquired) return LockResult::timed_out;
  note_acquired(result, current_thread_id());
  return result;
}

LockResult ProcessLock::wait_out_self_deadlock(const Deadline& deadline, const Blocker& block) {
  if (deadline.is_never())
    throw SelfDeadlockError("acquiring a Lock this thread already holds would wait forever (use RLock to re-enter)");
  // Nothing can release the lock while its holder waits here, so the wait can only time out.
  block(deadline, [](const Deadline& d) {
    while (auto left = d.remaining()) {
      if (left->count() == 0) break;
      timespec ts{static_cast<time_t>(left->count() / 1'000'000'000), static_cast<long>(left->count() % 1'000'000'000)};
      nanosleep(&ts, nullptr);
    }
    return false;
  });
  return LockResult::timed_out;
}

void ProcessLock::release() {
  if (!held_by_me()) throw NotOwnerError("cannot release un-acquired lock");
  // Clear ownership before the unlock: afterwards the lock may already be someone else's.
  if (--depth_ == 0) owner_.store(0, std::memory_order_relaxed);
  mutex_.unlock();
}

uint32_t ProcessLock::release_all() {
  if (!held_by_me()) throw NotOwnerError("cannot wait on un-acquired lock");
  const uint32_t depth = depth_;
  depth_ = 0;
  owner_.store(0, std::memory_order_relaxed);
  for (uint32_t i = 0; i < depth; ++i) mutex_.unlock();
  return depth;
}

LockResult ProcessLock::restore(uint32_t depth, const Blocker& block) {
  const LockResult result = acquire(Deadline::never(), block);
  // The remaining levels cannot block: this thread holds the (recursive) mutex.
  for (uint32_t i = 1; i < depth; ++i) mutex_.try_lock();
  depth_ = depth;
  return result;
}

}  // namespace shoal
