#pragma once
// How long a waiter polls before it sleeps, adapted to what the waits on this
// thread have been finding.
//
// Waking a process that sleeps in futex_wait costs 5-20 µs (more on a VM whose
// idle vCPU must be woken through the hypervisor), while handing a cache line
// to a peer that is awake costs well under a microsecond. So a waiter that
// expects an answer soon should poll for about one wake-up's worth of time:
// in a ping-pong, if either side sleeps, both keep paying the wake-up.
// Polling is wasted on long waits (a worker between bursts of work), so the
// budget shrinks while waits keep outlasting it and grows back as soon as one
// is short. And polling hurts when the CPU is oversubscribed: a poller holds a
// CPU that its peer (or anyone) may be queued for, while a sleeper that is
// woken gets the CPU back quickly. A poller notices that by a gap in its own
// clock reads (it was preempted); then it sleeps at once, its budget drops to
// the minimum and climbs back one step per short wait, or at once when a poll
// succeeds. (Yielding instead does not help: it hands the CPU to whatever else
// runs there, not to the peer.)
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace shoal {

class AdaptiveSpin {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::nanoseconds kMax{20'000};
  static constexpr std::chrono::nanoseconds kMin{1'000};
  // A wait this long would not have been caught by a longer poll either.
  static constexpr std::chrono::nanoseconds kLongWait = 4 * kMax;

  // The poll budget for the next wait on this thread.
  static std::chrono::nanoseconds budget() { return state().budget; }

  // Polls `ready` with pause instructions until it holds (true) or the budget
  // or `stop_at` runs out, or the thread is found preempted (false).
  template <class Ready, class Pause>
  static bool poll(Ready&& ready, Clock::time_point start, Clock::time_point stop_at, Pause&& pause) {
    const Clock::time_point until = std::min(stop_at, start + budget());
    Clock::time_point last = start;
    for (uint32_t i = 1;; ++i) {
      pause();
      if (ready()) return true;
      if (i % kPausesPerClockRead != 0) continue;
      const Clock::time_point now = Clock::now();
      if (now - last > kPreemptionGap) {
        state().budget = kMin;
        return false;
      }
      if (now >= until) return false;
      last = now;
    }
  }

  // Records how a wait on this thread ended: caught by the poll, or after a
  // sleep that lasted until `waited` had passed since the wait began. After a
  // preemption the budget climbs back a step per short wait (so a contended
  // CPU is not polled on again at once); long waits halve it.
  static void caught_while_polling() { state().budget = kMax; }
  static void slept(std::chrono::nanoseconds waited) {
    auto& b = state().budget;
    b = waited < kLongWait ? std::min(kMax, b + kMin) : std::max(kMin, b / 2);
  }

 private:
  static constexpr uint32_t kPausesPerClockRead = 16;  // ~0.5 µs of pauses on current x86
  // Far more than 16 pauses take: the thread lost its CPU in between.
  static constexpr std::chrono::nanoseconds kPreemptionGap{30'000};
  struct State {
    std::chrono::nanoseconds budget = kMax;
  };
  static State& state() {
    thread_local State s;
    return s;
  }
};

// 1 + the CPU this thread runs on now (0 if not known): what a waiter
// publishes so that its peer does not poll on the same CPU, where polling only
// keeps off the CPU the very process it waits for (under load, when the
// scheduler puts both on the one CPU left). A hint: either may move at once.
inline uint32_t cpu_hint() {
  const int cpu = sched_getcpu();  // the vDSO: no system call
  return cpu < 0 ? 0 : static_cast<uint32_t>(cpu) + 1;
}

// Whether to poll for an answer from a peer last seen on `peer_hint` (a
// cpu_hint()): not when it is this thread's CPU.
inline bool worth_polling_for(uint32_t peer_hint) { return peer_hint == 0 || peer_hint != cpu_hint(); }

}  // namespace shoal
