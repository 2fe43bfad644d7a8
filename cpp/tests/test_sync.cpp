// Process-shared synchronization primitives, exercised by real forked processes.
// Every wait has a deadline so a broken primitive fails a test instead of hanging it.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "returns_within.hpp"
#include "shoal/ipc/barrier.hpp"
#include "shoal/ipc/condition.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/ipc/event.hpp"
#include "shoal/ipc/lock.hpp"
#include "shoal/ipc/semaphore.hpp"
#include "shoal/ipc/shared_object.hpp"

using namespace std::chrono_literals;
using shoal::Barrier;
using shoal::BrokenBarrierError;
using shoal::Condition;
using shoal::Deadline;
using shoal::Event;
using shoal::LockResult;
using shoal::ProcessLock;
using shoal::Semaphore;
using shoal::SharedObject;
using shoal::testing::ChildProcess;
using shoal_test::eventually;

namespace {

// Plain counters in shared memory that the tests' processes report through.
struct Scratch {
  static constexpr uint64_t kMagic = 0x7465737453435241ULL;
  [[maybe_unused]] static constexpr const char* kTypeName = "test scratch";  // SharedObject asks for it
  std::atomic<uint32_t> counter{0};
  std::atomic<uint32_t> inside{0};
  std::atomic<uint32_t> max_inside{0};
  std::atomic<uint32_t> flag{0};
  std::atomic<uint32_t> seen[64][8] = {};
};

// A Blocker that counts in `*arrived` each wait that is about to block: a
// primitive calls it only once it found it must wait (a lock held, an event
// clear), and a waiter counted here gets whatever happens from then on. A
// test waits for the count instead of sleeping and hoping the waiter got there.
shoal::Blocker counting_in(std::atomic<uint32_t>* arrived) {
  return [arrived](const Deadline& deadline, const shoal::Attempt& attempt) {
    arrived->fetch_add(1);
    return attempt(deadline);
  };
}

}  // namespace

// ---------------------------------------------------------------- Lock / RLock

TEST(SyncLock, KilledHolderIsRecoveredByNextLockerAndLockKeepsWorking) {
  auto lock = SharedObject<ProcessLock>::create(false);
  ChildProcess holder([&] {
    auto mine = SharedObject<ProcessLock>::attach(lock.name());
    if (mine->acquire(Deadline::after(5s)) != LockResult::acquired) return 1;
    for (;;) pause();  // dies holding it
  });
  ASSERT_TRUE(eventually([&] { return lock->locked(); }));
  EXPECT_EQ(lock->try_acquire(), LockResult::timed_out);
  holder.kill_now(SIGKILL);
  ASSERT_NE(holder.wait(5s), -1);

  EXPECT_EQ(lock->acquire(Deadline::after(5s)), LockResult::previous_owner_died);
  EXPECT_TRUE(lock->held_by_me());
  EXPECT_EQ(lock->depth(), 1u);
  lock->release();

  // Consistent again: another process takes it normally, and so do we.
  ChildProcess next([&] {
    if (lock->acquire(Deadline::after(5s)) != LockResult::acquired) return 1;
    lock->release();
    return 0;
  });
  EXPECT_TRUE(next.succeeded(10s));
  EXPECT_EQ(lock->acquire(Deadline::after(5s)), LockResult::acquired);
  lock->release();
}

TEST(SyncLock, KilledHolderOfRecursiveLockIsRecoveredAtDepthOne) {
  auto lock = SharedObject<ProcessLock>::create(true);
  ChildProcess holder([&] {
    for (int i = 0; i < 3; ++i)
      if (lock->acquire(Deadline::after(5s)) == LockResult::timed_out) return 1;
    for (;;) pause();
  });
  ASSERT_TRUE(eventually([&] { return lock->locked(); }));
  holder.kill_now(SIGKILL);
  ASSERT_NE(holder.wait(5s), -1);
  EXPECT_EQ(lock->acquire(Deadline::after(5s)), LockResult::previous_owner_died);
  EXPECT_EQ(lock->depth(), 1u);
  lock->release();
  EXPECT_FALSE(lock->locked());
}

TEST(SyncLock, TimedAcquireTimesOutWhileAnotherProcessHoldsIt) {
  auto lock = SharedObject<ProcessLock>::create(false);
  ASSERT_EQ(lock->acquire(), LockResult::acquired);
  ChildProcess contender([&] {
    auto mine = SharedObject<ProcessLock>::attach(lock.name());
    const Deadline deadline = Deadline::after(50ms);
    if (mine->acquire(deadline) != LockResult::timed_out) return 1;
    if (!deadline.expired()) return 2;  // it gave up before its deadline
    return mine->try_acquire() == LockResult::timed_out ? 0 : 3;
  });
  EXPECT_TRUE(contender.succeeded(10s));
  lock->release();
}

TEST(SyncLock, WaiterInAnotherProcessGetsTheLockWhenReleased) {
  auto lock = SharedObject<ProcessLock>::create(false);
  auto scratch = SharedObject<Scratch>::create();
  ASSERT_EQ(lock->acquire(), LockResult::acquired);
  ChildProcess waiter([&] {
    if (lock->acquire(Deadline::after(10s), counting_in(&scratch->inside)) != LockResult::acquired) return 1;
    lock->release();
    return 0;
  });
  ASSERT_TRUE(eventually([&] { return scratch->inside.load() == 1; }));  // it found the lock held and waits
  lock->release();
  EXPECT_TRUE(waiter.succeeded(10s));
}

TEST(SyncLock, OnlyTheHoldingThreadMayRelease) {
  auto lock = SharedObject<ProcessLock>::create(false);
  EXPECT_THROW(lock->release(), shoal::NotOwnerError);
  ASSERT_EQ(lock->acquire(), LockResult::acquired);
  bool threw = false;
  std::thread other([&] {
    try {
      lock->release();
    } catch (const shoal::NotOwnerError&) {
      threw = true;
    }
  });
  other.join();
  EXPECT_TRUE(threw);
  lock->release();
  EXPECT_FALSE(lock->locked());
}

TEST(SyncLock, NonRecursiveSelfAcquireTimesOutOrRefusesToHang) {
  auto lock = SharedObject<ProcessLock>::create(false);
  ASSERT_EQ(lock->acquire(), LockResult::acquired);
  EXPECT_EQ(lock->try_acquire(), LockResult::timed_out);
  const Deadline deadline = Deadline::after(30ms);
  EXPECT_EQ(lock->acquire(deadline), LockResult::timed_out);
  EXPECT_TRUE(deadline.expired());  // it waited out its deadline, not less
  EXPECT_THROW(lock->acquire(), shoal::SelfDeadlockError);
  lock->release();
}

TEST(SyncLock, RecursiveLockCountsDepthAndReleasesAtZero) {
  auto lock = SharedObject<ProcessLock>::create(true);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(lock->acquire(), LockResult::acquired);
  EXPECT_EQ(lock->depth(), 3u);
  lock->release();
  lock->release();
  ChildProcess contender([&] { return lock->try_acquire() == LockResult::timed_out ? 0 : 1; });
  EXPECT_TRUE(contender.succeeded(10s));
  lock->release();
  EXPECT_FALSE(lock->locked());
  EXPECT_THROW(lock->release(), shoal::NotOwnerError);
}

TEST(SyncLock, AttachChecksTheNameAndTheKind) {
  auto sem = SharedObject<Semaphore>::create(1u);
  EXPECT_THROW(SharedObject<ProcessLock>::attach(sem.name()), std::invalid_argument);
  EXPECT_THROW(SharedObject<ProcessLock>::attach("shoal-1-missing"), shoal::NotFoundError);
}

// ---------------------------------------------------------------- Semaphore

TEST(SyncSemaphore, NeverAdmitsMoreThanItsValueAcrossProcesses) {
  auto sem = SharedObject<Semaphore>::create(2u);
  auto scratch = SharedObject<Scratch>::create();
  std::vector<std::unique_ptr<ChildProcess>> workers;
  for (int w = 0; w < 4; ++w) {
    workers.push_back(std::make_unique<ChildProcess>([&] {
      auto s = SharedObject<Semaphore>::attach(sem.name());
      for (int i = 0; i < 300; ++i) {
        if (!s->acquire(Deadline::after(10s))) return 1;
        const uint32_t now = scratch->inside.fetch_add(1) + 1;
        uint32_t seen = scratch->max_inside.load();
        while (now > seen && !scratch->max_inside.compare_exchange_weak(seen, now)) {
        }
        std::this_thread::yield();
        scratch->inside.fetch_sub(1);
        scratch->counter.fetch_add(1);
        s->release();
      }
      return 0;
    }));
  }
  for (auto& w : workers) EXPECT_TRUE(w->succeeded(20s));
  EXPECT_EQ(scratch->counter.load(), 4u * 300u);
  EXPECT_LE(scratch->max_inside.load(), 2u);
  EXPECT_EQ(sem->value(), 2u);
}

TEST(SyncSemaphore, ReleasesFromAnotherProcessAreEachCounted) {
  auto sem = SharedObject<Semaphore>::create(0u);
  ChildProcess producer([&] {
    for (int i = 0; i < 1000; ++i) sem->release();
    return 0;
  });
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(sem->acquire(Deadline::after(10s))) << "unit " << i;
  EXPECT_TRUE(producer.succeeded(10s));
  EXPECT_FALSE(sem->try_acquire());
  const Deadline deadline = Deadline::after(30ms);
  EXPECT_FALSE(sem->acquire(deadline));
  EXPECT_TRUE(deadline.expired());  // it waited out its deadline, not less
}

TEST(SyncSemaphore, BoundedSemaphoreRefusesToPassItsBound) {
  auto sem = SharedObject<Semaphore>::create(1u, 1u);
  EXPECT_THROW(sem->release(), shoal::SemaphoreOverflowError);
  ASSERT_TRUE(sem->try_acquire());
  sem->release();
  EXPECT_EQ(sem->value(), 1u);
  EXPECT_THROW(Semaphore(3, 2), std::invalid_argument);
}

// ---------------------------------------------------------------- Event

TEST(SyncEvent, SetWakesWaitersInOtherProcesses) {
  auto event = SharedObject<Event>::create();
  auto scratch = SharedObject<Scratch>::create();
  std::vector<std::unique_ptr<ChildProcess>> waiters;
  for (int w = 0; w < 3; ++w)
    waiters.push_back(std::make_unique<ChildProcess>([&] {
      auto e = SharedObject<Event>::attach(event.name());
      return e->wait(Deadline::after(10s), counting_in(&scratch->inside)) ? 0 : 1;
    }));
  ASSERT_TRUE(eventually([&] { return scratch->inside.load() == 3; }));  // each found it clear and waits
  event->set();
  for (auto& w : waiters) EXPECT_TRUE(w->succeeded(10s));  // woken, before their own 10 s deadline
  EXPECT_TRUE(event->is_set());
  EXPECT_TRUE(event->wait(Deadline::after(0ms)));
}

TEST(SyncEvent, WaitTimesOutWhileClearAndSeesASetClearPulse) {
  auto event = SharedObject<Event>::create();
  const Deadline deadline = Deadline::after(30ms);
  EXPECT_FALSE(event->wait(deadline));
  EXPECT_TRUE(deadline.expired());  // it waited out its deadline, not less

  // The pulse must come while the waiter waits: once counted, it waits.
  auto scratch = SharedObject<Scratch>::create();
  ChildProcess waiter([&] { return event->wait(Deadline::after(10s), counting_in(&scratch->inside)) ? 0 : 1; });
  ASSERT_TRUE(eventually([&] { return scratch->inside.load() == 1; }));
  event->set();
  event->clear();
  EXPECT_TRUE(waiter.succeeded(10s));
  EXPECT_FALSE(event->is_set());
}

// ---------------------------------------------------------------- Condition

TEST(SyncCondition, NotifyWakesAWaiterInAnotherProcess) {
  auto lock = SharedObject<ProcessLock>::create(true);
  auto cond = SharedObject<Condition>::create();
  auto scratch = SharedObject<Scratch>::create();
  ChildProcess waiter([&] {
    auto l = SharedObject<ProcessLock>::attach(lock.name());
    auto c = SharedObject<Condition>::attach(cond.name());
    const Deadline deadline = Deadline::after(10s);
    l->acquire();
    l->acquire();  // waits at depth two, comes back at depth two
    scratch->inside.store(1);
    while (scratch->flag.load() == 0) {
      if (!c->wait(*l, deadline).notified && deadline.expired()) return 1;
    }
    if (!l->held_by_me() || l->depth() != 2) return 2;
    l->release();
    l->release();
    return 0;
  });
  ASSERT_TRUE(eventually([&] { return scratch->inside.load() == 1; }));
  // The waiter holds the lock until its wait lets go of it: once we have it,
  // the waiter waits (a notify before it sleeps still reaches it).
  ASSERT_NE(lock->acquire(Deadline::after(5s)), LockResult::timed_out);  // the waiter let go of it
  scratch->flag.store(1);
  cond->notify(*lock);
  lock->release();
  EXPECT_TRUE(waiter.succeeded(10s));
}

TEST(SyncCondition, NotifyAllWakesEveryWaiter) {
  auto lock = SharedObject<ProcessLock>::create(false);
  auto cond = SharedObject<Condition>::create();
  auto scratch = SharedObject<Scratch>::create();
  std::vector<std::unique_ptr<ChildProcess>> waiters;
  for (int w = 0; w < 3; ++w)
    waiters.push_back(std::make_unique<ChildProcess>([&] {
      const Deadline deadline = Deadline::after(10s);
      lock->acquire();
      scratch->inside.fetch_add(1);
      while (scratch->flag.load() == 0)
        if (!cond->wait(*lock, deadline).notified && deadline.expired()) return 1;
      lock->release();
      return 0;
    }));
  ASSERT_TRUE(eventually([&] { return scratch->inside.load() == 3; }));
  lock->acquire(Deadline::after(5s));
  scratch->flag.store(1);
  cond->notify_all(*lock);
  lock->release();
  for (auto& w : waiters) EXPECT_TRUE(w->succeeded(10s));
}

TEST(SyncCondition, TimedWaitReturnsUnnotifiedWithTheLockHeld) {
  auto lock = SharedObject<ProcessLock>::create(true);
  auto cond = SharedObject<Condition>::create();
  EXPECT_THROW(cond->wait(*lock, Deadline::after(1ms)), shoal::NotOwnerError);
  EXPECT_THROW(cond->notify(*lock), shoal::NotOwnerError);
  lock->acquire();
  lock->acquire();
  const Deadline deadline = Deadline::after(30ms);
  auto result = cond->wait(*lock, deadline);
  EXPECT_FALSE(result.notified);
  EXPECT_EQ(result.relocked, LockResult::acquired);
  EXPECT_TRUE(deadline.expired());  // it waited out its deadline, not less
  EXPECT_TRUE(lock->held_by_me());
  EXPECT_EQ(lock->depth(), 2u);
  lock->release();
  lock->release();
}

// ---------------------------------------------------------------- Barrier

TEST(SyncBarrier, FourProcessesMeetOverManyGenerationsWithOneActionEach) {
  constexpr uint32_t kParties = 4, kGenerations = 40;
  auto barrier = SharedObject<Barrier>::create(kParties);
  auto scratch = SharedObject<Scratch>::create();
  auto party = [&] {
    auto b = SharedObject<Barrier>::attach(barrier.name());
    for (uint32_t g = 0; g < kGenerations; ++g) {
      // The action runs before anyone is released, so each party sees it counted.
      const uint32_t index = b->wait(Deadline::after(10s), [&] { scratch->counter.fetch_add(1); });
      if (index >= kParties) return 1;
      if (scratch->counter.load() != g + 1) return 2;
      scratch->seen[g][index].fetch_add(1);
    }
    return 0;
  };
  std::vector<std::unique_ptr<ChildProcess>> parties;
  for (uint32_t p = 0; p < kParties; ++p) parties.push_back(std::make_unique<ChildProcess>(party));
  for (auto& p : parties) EXPECT_TRUE(p->succeeded(30s));
  EXPECT_EQ(scratch->counter.load(), kGenerations);
  for (uint32_t g = 0; g < kGenerations; ++g)
    for (uint32_t i = 0; i < kParties; ++i) EXPECT_EQ(scratch->seen[g][i].load(), 1u) << "gen " << g << " index " << i;
  EXPECT_EQ(barrier->n_waiting(), 0u);
  EXPECT_FALSE(barrier->broken());
}

TEST(SyncBarrier, TimeoutBreaksItForEveryoneUntilReset) {
  auto barrier = SharedObject<Barrier>::create(3u);
  auto scratch = SharedObject<Scratch>::create();
  ChildProcess patient([&] {
    try {
      barrier->wait(Deadline::after(10s));
    } catch (const BrokenBarrierError&) {
      return 0;
    }
    return 1;
  });
  ASSERT_TRUE(eventually([&] { return barrier->n_waiting() == 1; }));
  const Deadline deadline = Deadline::after(50ms);
  EXPECT_THROW(barrier->wait(deadline), BrokenBarrierError);
  EXPECT_TRUE(deadline.expired());  // it broke the barrier at its deadline, not before
  EXPECT_TRUE(patient.succeeded(10s));
  EXPECT_TRUE(barrier->broken());
  EXPECT_THROW(barrier->wait(Deadline::after(10s)), BrokenBarrierError);  // broken stays broken

  barrier->reset();
  EXPECT_FALSE(barrier->broken());
  ChildProcess a([&] { return barrier->wait(Deadline::after(10s)) < 3 ? 0 : 1; });
  ChildProcess b([&] { return barrier->wait(Deadline::after(10s)) < 3 ? 0 : 1; });
  EXPECT_LT(barrier->wait(Deadline::after(10s)), 3u);
  EXPECT_TRUE(a.succeeded(10s));
  EXPECT_TRUE(b.succeeded(10s));
}

TEST(SyncBarrier, AbortAndThrowingActionBreakIt) {
  auto barrier = SharedObject<Barrier>::create(2u);
  ChildProcess waiter([&] {
    try {
      barrier->wait(Deadline::after(10s));
    } catch (const BrokenBarrierError&) {
      return 0;
    }
    return 1;
  });
  ASSERT_TRUE(eventually([&] { return barrier->n_waiting() == 1; }));
  barrier->abort();
  EXPECT_TRUE(waiter.succeeded(10s));
  barrier->reset();

  ChildProcess other([&] {
    try {
      barrier->wait(Deadline::after(10s), [] { throw std::runtime_error("action failed"); });
    } catch (const BrokenBarrierError&) {
      return 0;
    } catch (const std::runtime_error&) {
      return 0;  // this process ran the action
    }
    return 1;
  });
  bool failed = false;
  try {
    barrier->wait(Deadline::after(10s), [] { throw std::runtime_error("action failed"); });
  } catch (const std::runtime_error&) {
    failed = true;  // BrokenBarrierError, or the action's own error
  }
  EXPECT_TRUE(failed);
  EXPECT_TRUE(other.succeeded(10s));
  EXPECT_TRUE(barrier->broken());
}

TEST(SyncBarrier, SinglePartyNeverWaitsAndZeroPartiesIsRefused) {
  auto barrier = SharedObject<Barrier>::create(1u);
  int actions = 0;
  for (int i = 0; i < 3; ++i) EXPECT_EQ(barrier->wait(Deadline::after(0ms), [&] { ++actions; }), 0u);
  EXPECT_EQ(actions, 3);
  EXPECT_THROW(Barrier(0), std::invalid_argument);
}
