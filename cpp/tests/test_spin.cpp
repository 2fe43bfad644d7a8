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
    int checks = 0;
    const auto start = AdaptiveSpin::Clock::now();
    EXPECT_TRUE(AdaptiveSpin::poll([&] { return ++checks == 100; }, start, start + 1s, relax));
    EXPECT_EQ(checks, 100);
  });
}

TEST(AdaptiveSpin, APollGivesUpWhenItsBudgetOrDeadlineRunsOut) {
  on_fresh_thread([] {
    auto start = AdaptiveSpin::Clock::now();
    EXPECT_FALSE(AdaptiveSpin::poll([] { return false; }, start, start + 1s, relax));
    EXPECT_LT(AdaptiveSpin::Clock::now() - start, 5ms);  // the budget (20 µs), not the deadline
    start = AdaptiveSpin::Clock::now();
    EXPECT_FALSE(AdaptiveSpin::poll([] { return false; }, start, start, relax));
    EXPECT_LT(AdaptiveSpin::Clock::now() - start, 5ms);
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
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(n.wait_until([&] { return flag.load(); }, Deadline::after(0ns)));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5ms);

  std::thread notifier([&] {
    std::this_thread::sleep_for(20ms);  // long past any poll: the waiter sleeps on the futex
    flag.store(true, std::memory_order_seq_cst);
    n.notify_all();
  });
  EXPECT_TRUE(n.wait_until([&] { return flag.load(); }, Deadline::after(10s)));
  notifier.join();
}

TEST(Notifier, AWaiterThatDoesNotPollSleepsAndIsWoken) {
  Notifier n;
  std::atomic<bool> flag{false};
  std::thread notifier([&] {
    std::this_thread::sleep_for(5ms);
    flag.store(true, std::memory_order_seq_cst);
    n.notify_all();
  });
  EXPECT_TRUE(n.wait_until([&] { return flag.load(); }, Deadline::after(10s), /*poll=*/false));
  notifier.join();
  EXPECT_TRUE(n.wait_until([&] { return flag.load(); }, Deadline::after(0ns), /*poll=*/false));  // already true
  flag.store(false);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(n.wait_until([&] { return flag.load(); }, Deadline::after(20ms), /*poll=*/false));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 18ms);  // it slept until the deadline
}
