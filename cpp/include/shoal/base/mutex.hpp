#pragma once
// std::mutex and the lock guards, annotated for Clang's thread-safety
// analysis (shoal/base/thread_annotations.hpp): libstdc++'s own carry no
// annotations, so code that locks them is invisible to the analysis. The
// guards are templates over the mutex type; they work for shoal::Mutex and
// shoal::SpinningMutex alike and cost exactly what std::lock_guard and
// std::unique_lock cost.
#include <mutex>

#include "shoal/base/thread_annotations.hpp"

namespace shoal {

class SHOAL_CAPABILITY("mutex") Mutex {
 public:
  void lock() SHOAL_ACQUIRE() { mu_.lock(); }
  bool try_lock() SHOAL_TRY_ACQUIRE(true) { return mu_.try_lock(); }
  void unlock() SHOAL_RELEASE() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

// std::lock_guard: holds `m` for its scope.
template <class M>
class SHOAL_SCOPED_CAPABILITY LockGuard {
 public:
  explicit LockGuard(M& m) SHOAL_ACQUIRE(m) : m_(m) { m_.lock(); }
  // Takes over a lock the caller holds already (after a successful try_lock).
  LockGuard(M& m, std::adopt_lock_t) SHOAL_REQUIRES(m) : m_(m) {}
  ~LockGuard() SHOAL_RELEASE() { m_.unlock(); }
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;

 private:
  M& m_;
};

// std::unique_lock, reduced to what the engine needs: held from construction
// (or from the first lock() with std::defer_lock), released and taken again
// around waits, released at the end of its scope if held then.
template <class M>
class SHOAL_SCOPED_CAPABILITY UniqueLock {
 public:
  explicit UniqueLock(M& m) SHOAL_ACQUIRE(m) : m_(m), owns_(true) { m_.lock(); }
  UniqueLock(M& m, std::defer_lock_t) SHOAL_EXCLUDES(m) : m_(m), owns_(false) {}
  ~UniqueLock() SHOAL_RELEASE() {
    if (owns_) m_.unlock();
  }
  UniqueLock(const UniqueLock&) = delete;
  UniqueLock& operator=(const UniqueLock&) = delete;

  void lock() SHOAL_ACQUIRE() {
    m_.lock();
    owns_ = true;
  }
  void unlock() SHOAL_RELEASE() {
    owns_ = false;
    m_.unlock();
  }
  bool owns_lock() const { return owns_; }

 private:
  M& m_;
  bool owns_;
};

// The reverse of a guard: releases a lock the caller holds for its scope and
// takes it again at the end, also when an exception leaves the scope. For a
// slow read (a file, a big copy) in the middle of work done under the lock;
// whatever was read under the lock before must be checked again after.
template <class M>
class SHOAL_SCOPED_CAPABILITY ScopedUnlock {
 public:
  explicit ScopedUnlock(M& m) SHOAL_RELEASE(m) : m_(m) { m_.unlock(); }
  ~ScopedUnlock() SHOAL_RELEASE() { m_.lock(); }
  ScopedUnlock(const ScopedUnlock&) = delete;
  ScopedUnlock& operator=(const ScopedUnlock&) = delete;

 private:
  M& m_;
};

}  // namespace shoal
