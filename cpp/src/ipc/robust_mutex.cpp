#include "shoal/ipc/robust_mutex.hpp"

#include <cerrno>
#include <chrono>
#include <ctime>

#include "shoal/base/errors.hpp"

namespace shoal {

RobustMutex::RobustMutex(bool recursive) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutexattr_settype(&attr, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK);
  int rc = pthread_mutex_init(&mutex_, &attr);
  pthread_mutexattr_destroy(&attr);
  if (rc != 0) throw_errno("pthread_mutex_init", rc);
}

// Other processes may still use the mutex; destroying it here would be wrong.
RobustMutex::~RobustMutex() = default;

LockResult RobustMutex::adopt(int rc) {
  switch (rc) {
    case 0:
      return LockResult::acquired;
    case EOWNERDEAD:
      // We hold it now; mark it usable again so later lockers do not see ENOTRECOVERABLE.
      pthread_mutex_consistent(&mutex_);
      return LockResult::previous_owner_died;
    case ETIMEDOUT:
    case EBUSY:
      return LockResult::timed_out;
    default:
      throw_errno("pthread_mutex_lock", rc);
  }
}

LockResult RobustMutex::try_lock() { return adopt(pthread_mutex_trylock(&mutex_)); }

LockResult RobustMutex::lock(const Deadline& deadline) {
  auto left = deadline.remaining();
  if (!left) return adopt(pthread_mutex_lock(&mutex_));
#if defined(__SANITIZE_THREAD__)
  // GCC 12's TSan runtime models trylock (with EOWNERDEAD) but not clocklock.
  for (;;) {
    LockResult r = try_lock();
    if (r != LockResult::timed_out || deadline.expired()) return r;
    timespec pause{0, 50'000};
    nanosleep(&pause, nullptr);
  }
#endif
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const long long ns = now.tv_nsec + left->count();
  timespec abs{now.tv_sec + static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  return adopt(pthread_mutex_clocklock(&mutex_, CLOCK_MONOTONIC, &abs));
}

void RobustMutex::unlock() {
  int rc = pthread_mutex_unlock(&mutex_);
  if (rc != 0) throw_errno("unlock of a lock this thread does not hold", rc);
}

}  // namespace shoal
