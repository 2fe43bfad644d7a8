#pragma once
// An event count in shared memory: waiters sleep until a notifier bumps the
// sequence. Notify costs no system call while nobody sleeps, which keeps the
// uncontended paths of rings, queues and locks free of syscalls.
#include <atomic>
#include <climits>
#include <cstdint>

#include "shoal/base/deadline.hpp"
#include "shoal/base/futex.hpp"
#include "shoal/base/spin.hpp"

namespace shoal {

struct Notifier {
  std::atomic<uint32_t> seq{0};
  std::atomic<uint32_t> sleepers{0};

  void notify_all() {
    seq.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) != 0) futex_wake_all(seq);
  }
  void notify_one() {
    seq.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) != 0) futex_wake(seq, 1);
  }

  // Waits until ready() holds or the deadline passes; returns ready()'s last value.
  // ready() must read state that notifiers publish before calling notify_*().
  // It polls first, for as long as AdaptiveSpin allows, then sleeps on the
  // futex; with `poll` false it sleeps at once.
  template <class Ready>
  bool wait_until(Ready&& ready, const Deadline& deadline, bool poll = true) {
    if (ready()) return true;
    const auto start = AdaptiveSpin::Clock::now();
    const auto stop_at = deadline.is_never() ? AdaptiveSpin::Clock::time_point::max() : start + *deadline.remaining();
    if (poll && AdaptiveSpin::poll(ready, start, stop_at, cpu_relax)) {
      AdaptiveSpin::caught_while_polling();
      return true;
    }
    for (;;) {
      sleepers.fetch_add(1, std::memory_order_seq_cst);
      const uint32_t key = seq.load(std::memory_order_seq_cst);
      if (ready()) {
        sleepers.fetch_sub(1, std::memory_order_seq_cst);
        return true;
      }
      const bool in_time = futex_wait(seq, key, deadline);
      sleepers.fetch_sub(1, std::memory_order_seq_cst);
      if (ready()) {
        if (poll) AdaptiveSpin::slept(AdaptiveSpin::Clock::now() - start);
        return true;
      }
      if (!in_time || deadline.expired()) {
        if (poll) AdaptiveSpin::slept(AdaptiveSpin::Clock::now() - start);
        return false;
      }
    }
  }
};

}  // namespace shoal
