#pragma once
// Clang's thread-safety annotations: which lock guards which field, which
// functions must be called with it held. `make thread-safety` builds with
// clang++ -Wthread-safety -Werror, so a field touched without its lock is a
// build error there; with other compilers (GCC) the macros expand to nothing.
// See https://clang.llvm.org/docs/ThreadSafetyAnalysis.html.
//
// libstdc++'s std::mutex and std::lock_guard carry no annotations: lock with
// shoal::Mutex / shoal::SpinningMutex and shoal::LockGuard / shoal::UniqueLock
// (shoal/base/mutex.hpp), which do.

#if defined(__clang__)
#define SHOAL_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define SHOAL_THREAD_ANNOTATION(x)
#endif

// A type that is a lock ("mutex").
#define SHOAL_CAPABILITY(x) SHOAL_THREAD_ANNOTATION(capability(x))
// An RAII type that holds a lock for its scope (lock_guard, unique_lock).
#define SHOAL_SCOPED_CAPABILITY SHOAL_THREAD_ANNOTATION(scoped_lockable)
// A field read or written only with the lock held.
#define SHOAL_GUARDED_BY(x) SHOAL_THREAD_ANNOTATION(guarded_by(x))
// A pointer whose pointee is read or written only with the lock held.
#define SHOAL_PT_GUARDED_BY(x) SHOAL_THREAD_ANNOTATION(pt_guarded_by(x))
// A function called with the lock held (it neither takes nor releases it).
#define SHOAL_REQUIRES(...) SHOAL_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
// A function called without the lock (it takes it itself).
#define SHOAL_EXCLUDES(...) SHOAL_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
// A function that takes or releases the lock.
#define SHOAL_ACQUIRE(...) SHOAL_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define SHOAL_RELEASE(...) SHOAL_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
// A function that takes the lock when it returns `b` (try_lock).
#define SHOAL_TRY_ACQUIRE(...) SHOAL_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
// A function that returns a reference to the lock `x`.
#define SHOAL_RETURN_CAPABILITY(x) SHOAL_THREAD_ANNOTATION(lock_returned(x))
// A function the analysis cannot follow; its comment must say why it is right.
#define SHOAL_NO_THREAD_SAFETY_ANALYSIS SHOAL_THREAD_ANNOTATION(no_thread_safety_analysis)
