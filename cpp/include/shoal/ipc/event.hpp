#pragma once
// A process-shared event flag (threading.Event semantics): set() wakes every
// waiter, clear() resets the flag, wait() sleeps until it is set.
#include <atomic>
#include <cstdint>

#include "shoal/ipc/blocker.hpp"
#include "shoal/base/deadline.hpp"
#include "shoal/ipc/notifier.hpp"

namespace shoal {

class Event {
 public:
  static constexpr uint64_t kMagic = 0x73686f616c45564eULL;  // "shoalEVN"
  static constexpr const char* kTypeName = "Event";

  Event() = default;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  bool is_set() const { return (state_.load(std::memory_order_seq_cst) & kFlag) != 0; }
  void set();
  void clear() { state_.fetch_and(~kFlag, std::memory_order_seq_cst); }
  // True once the flag is set, or was set at any moment during the wait (a set()
  // quickly followed by clear() still releases everyone waiting at the time, as
  // in threading.Event); false on timeout.
  bool wait(const Deadline& deadline = Deadline::never(), const Blocker& block = block_directly);

 private:
  // Bit 0 is the flag; the bits above count the set() calls that raised it, so a
  // waiter can tell that a set happened even if the flag is already clear again.
  static constexpr uint32_t kFlag = 1;
  static constexpr uint32_t kOneSet = 2;

  std::atomic<uint32_t> state_{0};
  Notifier changed_;
};

inline void Event::set() {
  uint32_t s = state_.load(std::memory_order_relaxed);
  do {
    // Setting a set flag wakes nobody: nobody can be waiting for it.
    if (s & kFlag) return;
  } while (!state_.compare_exchange_weak(s, (s + kOneSet) | kFlag, std::memory_order_seq_cst,
                                         std::memory_order_relaxed));
  changed_.notify_all();
}

inline bool Event::wait(const Deadline& deadline, const Blocker& block) {
  const uint32_t start = state_.load(std::memory_order_seq_cst);
  if (start & kFlag) return true;
  auto happened = [&] {
    const uint32_t now = state_.load(std::memory_order_seq_cst);
    return (now & kFlag) || now != start;  // set now, or set (and cleared) since we started
  };
  return block(deadline, [&](const Deadline& d) { return changed_.wait_until(happened, d); });
}

}  // namespace shoal
