#pragma once
// A process-shared, robust mutex that lives in shared memory (glibc's robust
// futex list underneath). If a holder dies, the next locker gets the lock and
// is told so (LockResult::previous_owner_died) instead of deadlocking.
#include <pthread.h>

#include "shoal/base/deadline.hpp"

namespace shoal {

enum class LockResult {
  acquired,
  previous_owner_died,  // acquired; the state it protects may be half-updated
  timed_out,
};

class RobustMutex {
 public:
  // Formats the mutex in place (in shared memory); call once, by the creator.
  explicit RobustMutex(bool recursive = false);
  RobustMutex(const RobustMutex&) = delete;
  RobustMutex& operator=(const RobustMutex&) = delete;
  ~RobustMutex();

  // Both throw CorruptFrameError if the mutex's type word is not one this
  // class writes (another process wrote over it), before glibc reads it.
  LockResult lock(const Deadline& deadline = Deadline::never());
  LockResult try_lock();
  // Throws std::system_error(EPERM) if the calling thread does not hold it.
  void unlock();

 private:
  LockResult adopt(int rc);
  void check_intact() const;
  pthread_mutex_t mutex_;
};

// Scoped lock for C++ users; recovery is silent (the caller cannot report it).
class RobustGuard {
 public:
  explicit RobustGuard(RobustMutex& m) : m_(m) { m_.lock(); }
  ~RobustGuard() { m_.unlock(); }
  RobustGuard(const RobustGuard&) = delete;
  RobustGuard& operator=(const RobustGuard&) = delete;

 private:
  RobustMutex& m_;
};

}  // namespace shoal
