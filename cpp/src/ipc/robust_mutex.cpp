#include "shoal/ipc/robust_mutex.hpp"

#include <cerrno>
#include <chrono>
#include <ctime>
#include <string>

#include "shoal/base/errors.hpp"

namespace shoal {

namespace {

void init_mutex(pthread_mutex_t* m, bool recursive) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutexattr_settype(&attr, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK);
  int rc = pthread_mutex_init(m, &attr);
  pthread_mutexattr_destroy(&attr);
  if (rc != 0) throw_errno("pthread_mutex_init", rc);
}

#if defined(__GLIBC__)
// The type word glibc keeps in a mutex (robust, process-shared, error-checking
// or recursive): written by pthread_mutex_init, never changed afterwards.
int kind_of(const pthread_mutex_t& m) { return m.__data.__kind; }
int expected_kind(bool recursive) {
  pthread_mutex_t m;
  init_mutex(&m, recursive);
  const int kind = kind_of(m);
  pthread_mutex_destroy(&m);
  return kind;
}
#endif

}  // namespace

RobustMutex::RobustMutex(bool recursive) { init_mutex(&mutex_, recursive); }

void RobustMutex::check_intact() const {
#if defined(__GLIBC__)
  // Another process may have written over the mutex (it lives in shared
  // memory). A type word of anything else sends glibc down paths (priority
  // inheritance, priority protection) whose assertions abort the process
  // when the owner it reads is garbage: refuse it first. One load, two compares.
  static const int errorcheck = expected_kind(false), recursive = expected_kind(true);
  const int kind = __atomic_load_n(&mutex_.__data.__kind, __ATOMIC_RELAXED);
  if (kind != errorcheck && kind != recursive)
    throw CorruptFrameError("the process-shared mutex was overwritten (its type word is " + std::to_string(kind) +
                            ", not one pthread_mutex_init writes)");
#endif
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

LockResult RobustMutex::try_lock() {
  check_intact();
  return adopt(pthread_mutex_trylock(&mutex_));
}

LockResult RobustMutex::lock(const Deadline& deadline) {
  check_intact();
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
