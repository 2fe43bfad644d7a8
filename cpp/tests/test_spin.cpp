// AdaptiveSpin: the poll budget that Notifier::wait_until spends before it sleeps.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "shoal/ipc/notifier.hpp"
#include "shoal/base/spin.hpp"

using shoal::AdaptiveSpin;
using shoal::Deadline;
using shoal::Notifier;
using namespace std::chrono_literals;

namespace {

// The budget is per thread: each test runs on a fresh one.
template <class Body>
void on_fresh_thread(Body body) {
  std::thread t(body);
  t.join();
}

void relax() { shoal::cpu_relax(); }

// Polls `cond` until it holds or `limit` passes; true if it held.
template <class Cond>
bool eventually(Cond cond, std::chrono::seconds limit = 30s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(100us);
  }
  return true;
}

// While in scope, a thread that sets `flag` and wakes the waiters after 30 s:
// a wait that must end on its own cannot hang the test; if it needed the
// rescue, it returns true where the test expects false.
class Rescuer {
 public:
  Rescuer(Notifier& n, std::atomic<bool>& flag)
      : thread_([this, &n, &flag] {
          if (eventually([this] { return stop_.load(); })) return;
          flag.store(true, std::memory_order_seq_cst);
          n.notify_all();
        }) {}
  ~Rescuer() {
    stop_.store(true);
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Sets `flag` and wakes the waiters once one of them counts itself among the
// sleepers: it no longer polls, it sleeps (or is about to) on the futex.
// `saw_sleeper` says whether that happened within 30 s (it notifies anyway).
std::thread notify_once_asleep(Notifier& n, std::atomic<bool>& flag, std::atomic<bool>& saw_sleeper) {
  return std::thread([&n, &flag, &saw_sleeper] {
    saw_sleeper.store(eventually([&n] { return n.sleepers.load(std::memory_order_seq_cst) != 0; }));
    flag.store(true, std::memory_order_seq_cst);
    n.notify_all();
  });
}

}  // namespace

TEST(AdaptiveSpin, LongWaitsShrinkTheBudgetAndAPollThatCatchesRestoresIt) {
  on_fresh_thread([] {
    EXPECT_EQ(AdaptiveSpin::budget(), AdaptiveSpin::kMax);
    for (int i = 0; i < 10; ++i) AdaptiveSpin::slept(1ms);  // idle waits: polling is wasted
    EXPECT_EQ(AdaptiveSpin::budget(), AdaptiveSpin::kMin);
    AdaptiveSpin::slept(10us);  // a short wait: a step back up
    EXPECT_EQ(AdaptiveSpin::budget(), 2 * AdaptiveSpin::kMin);
    AdaptiveSpin::caught_while_polling();
    EXPECT_EQ(AdaptiveSpin::budget(), AdaptiveSpin::kMax);
  });
}

TEST(AdaptiveSpin, APollReturnsAsSoonAsReadyHolds) {
  on_fresh_thread([] {
    // Ready at the 16th check, the last before the poll first reads the clock:
    // neither the budget nor a preemption (a loaded machine) can end it sooner.
    int checks = 0;
    const auto start = AdaptiveSpin::Clock::now();
    EXPECT_TRUE(AdaptiveSpin::poll([&] { return ++checks == 16; }, start, start + 1s, relax));
    EXPECT_EQ(checks, 16);
  });
}

TEST(AdaptiveSpin, APollGivesUpWhenItsBudgetOrDeadlineRunsOut) {
  on_fresh_thread([] {
    // No deadline: only the budget (20 µs), or a preemption, ends the poll. Were
    // the budget ignored, the condition would hold after 30 s: the poll true.
    auto start = AdaptiveSpin::Clock::now();
    auto never = AdaptiveSpin::Clock::time_point::max();
    auto rescue = [&start] { return AdaptiveSpin::Clock::now() - start > 30s; };
    EXPECT_FALSE(AdaptiveSpin::poll(rescue, start, never, relax));
    // A deadline already passed ends it too, whatever the budget.
    start = AdaptiveSpin::Clock::now();
    EXPECT_FALSE(AdaptiveSpin::poll(rescue, start, start, relax));
  });
}

TEST(AdaptiveSpin, APollerThatLosesItsCpuSleepsAtOnceAndPollsBrieflyAfterwards) {
  on_fresh_thread([] {
    int pauses = 0;
    auto preempted_once = [&] {
      if (++pauses == 5) std::this_thread::sleep_for(200us);  // as if another task ran here
    };
    const auto start = AdaptiveSpin::Clock::now();
    EXPECT_FALSE(AdaptiveSpin::poll([] { return false; }, start, start + 1s, preempted_once));
    EXPECT_LE(pauses, 16);  // noticed at the first clock read after the gap
    EXPECT_EQ(AdaptiveSpin::budget(), AdaptiveSpin::kMin);
  });
}

TEST(Notifier, AWaitWithAnExpiredDeadlineReturnsAtOnceAndASleeperIsWoken) {
  Notifier n;
  std::atomic<bool> flag{false};
  {
    Rescuer rescuer(n, flag);  // only if the wait ignored its deadline
    EXPECT_FALSE(n.wait_until([&] { return flag.load(); }, Deadline::after(0ns)));
  }

  std::atomic<bool> saw_sleeper{false};
  std::thread notifier = notify_once_asleep(n, flag, saw_sleeper);
  EXPECT_TRUE(n.wait_until([&] { return flag.load(); }, Deadline::after(60s)));
  notifier.join();
  EXPECT_TRUE(saw_sleeper.load());  // woken from its sleep, not caught while polling
}

TEST(Notifier, AWaiterThatDoesNotPollSleepsAndIsWoken) {
  Notifier n;
  std::atomic<bool> flag{false};
  std::atomic<bool> saw_sleeper{false};
  std::thread notifier = notify_once_asleep(n, flag, saw_sleeper);
  EXPECT_TRUE(n.wait_until([&] { return flag.load(); }, Deadline::after(60s), /*poll=*/false));
  notifier.join();
  EXPECT_TRUE(saw_sleeper.load());
  EXPECT_TRUE(n.wait_until([&] { return flag.load(); }, Deadline::after(0ns), /*poll=*/false));  // already true
  flag.store(false);
  const Deadline deadline = Deadline::after(20ms);
  {
    Rescuer rescuer(n, flag);  // only if the wait ignored its deadline
    EXPECT_FALSE(n.wait_until([&] { return flag.load(); }, deadline, /*poll=*/false));
  }
  EXPECT_TRUE(deadline.expired());  // it slept until the deadline, not less
}
