#pragma once
// A process-shared lock that knows its holder: a robust mutex plus the holding
// thread's id and recursion depth. Knowing the holder lets release() refuse a
// thread that does not hold the lock, and lets a Condition release the lock
// completely while it waits and restore the recursion depth afterwards.
//
// Lives in shared memory (see SharedObject). Ownership is per thread, like
// threading.RLock: the thread that acquired the lock is the one that releases it.
// If the holder dies (process killed, thread exited), the next acquirer gets the
// lock with LockResult::previous_owner_died.
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <sys/types.h>

#include "shoal/ipc/blocker.hpp"
#include "shoal/base/deadline.hpp"
#include "shoal/ipc/robust_mutex.hpp"

namespace shoal {

// Releasing (or waiting on, or notifying through) a lock this thread does not hold.
struct NotOwnerError : std::logic_error {
  using std::logic_error::logic_error;
};

// A blocking acquire of a non-recursive lock the calling thread already holds,
// with no timeout: it could never succeed.
struct SelfDeadlockError : std::logic_error {
  using std::logic_error::logic_error;
};

namespace detail {
// `__thread` rather than thread_local: no initialization guard on every access.
extern __thread pid_t cached_thread_id;
pid_t fetch_thread_id();
}  // namespace detail

// The kernel id of the calling thread. gettid() is a system call and a lock's
// fast path needs the id on every acquire and release, so each thread caches it
// (a fork handler clears the cache in the child, whose thread has a new id).
inline pid_t current_thread_id() {
  const pid_t cached = detail::cached_thread_id;
  return cached != 0 ? cached : detail::fetch_thread_id();
}

class ProcessLock {
 public:
  static constexpr uint64_t kMagic = 0x73686f616c4c434bULL;  // "shoalLCK"
  static constexpr const char* kTypeName = "Lock";

  explicit ProcessLock(bool recursive) : mutex_(recursive), recursive_(recursive) {}
  ProcessLock(const ProcessLock&) = delete;
  ProcessLock& operator=(const ProcessLock&) = delete;

  bool recursive() const { return recursive_; }

  // Never blocks. timed_out means "held by someone else" (or by this thread, for
  // a non-recursive lock).
  LockResult try_acquire();
  // Blocks through `block` until acquired or `deadline`. A non-recursive lock
  // already held by this thread waits out the deadline (as multiprocessing.Lock
  // does) or, with no deadline, throws SelfDeadlockError instead of hanging.
  LockResult acquire(const Deadline& deadline = Deadline::never(), const Blocker& block = block_directly);
  // Throws NotOwnerError if the calling thread does not hold the lock.
  void release();

  bool held_by_me() const { return owner_.load(std::memory_order_relaxed) == current_thread_id(); }
  // Any thread of any process; a snapshot.
  bool locked() const { return owner_.load(std::memory_order_relaxed) != 0; }
  // The holder's recursion depth; meaningful only to the holder.
  uint32_t depth() const { return depth_; }

  // For Condition: releases every level of the calling thread's hold and returns
  // how many there were (throws NotOwnerError if it holds none). restore() takes
  // the lock back (blocking through `block`, no deadline) to that depth.
  uint32_t release_all();
  LockResult restore(uint32_t depth, const Blocker& block = block_directly);

 private:
  void note_acquired(LockResult result, pid_t me);
  LockResult wait_out_self_deadlock(const Deadline& deadline, const Blocker& block);

  RobustMutex mutex_;
  // Kernel thread id of the holder, 0 when free. Written only by the holder; read
  // by anyone to ask "do I hold it?", which only the holder can answer yes to.
  std::atomic<int32_t> owner_{0};
  uint32_t depth_ = 0;  // touched only while holding mutex_
  bool recursive_;
};

}  // namespace shoal
