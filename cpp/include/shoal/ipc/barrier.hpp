#pragma once
// A process-shared, reusable barrier with threading.Barrier semantics: `parties`
// callers of wait() meet, the last to arrive runs the optional action, and all
// are released together with distinct arrival indices 0..parties-1. A timeout,
// an action that throws, or abort() breaks the barrier: every current and future
// waiter gets BrokenBarrierError until reset().
//
// The state machine is CPython's threading.Barrier (filling -> draining ->
// filling, with resetting and broken), guarded by a robust mutex; waiters sleep
// on a futex sequence number bumped on every state change. If a process dies
// while holding the mutex the barrier is broken (its state cannot be trusted).
// A party that dies while merely waiting is not detected: use timeouts.
#include <atomic>
#include <cstdint>
#include <functional>
#include <stdexcept>

#include "shoal/ipc/blocker.hpp"
#include "shoal/base/deadline.hpp"
#include "shoal/ipc/robust_mutex.hpp"

namespace shoal {

// Maps to threading.BrokenBarrierError.
struct BrokenBarrierError : std::runtime_error {
  BrokenBarrierError() : std::runtime_error("the barrier is broken") {}
};

class Barrier {
 public:
  static constexpr uint64_t kMagic = 0x73686f616c424152ULL;  // "shoalBAR"
  static constexpr const char* kTypeName = "Barrier";

  // Throws std::invalid_argument unless parties >= 1.
  explicit Barrier(uint32_t parties);
  Barrier(const Barrier&) = delete;
  Barrier& operator=(const Barrier&) = delete;

  // Returns this caller's arrival index. The last arrival runs `action` (if any)
  // before anyone is released; the action runs with the barrier's mutex held.
  // Throws BrokenBarrierError if the barrier is or becomes broken, including by
  // this caller's own deadline passing.
  uint32_t wait(const Deadline& deadline = Deadline::never(), const std::function<void()>& action = {},
                const Blocker& block = block_directly);
  // Returns the barrier to its empty state; current waiters get BrokenBarrierError.
  void reset(const Blocker& block = block_directly);
  // Breaks the barrier: current and future waiters get BrokenBarrierError.
  void abort(const Blocker& block = block_directly);

  uint32_t parties() const { return parties_; }
  // Parties currently waiting (0 while a generation drains).
  uint32_t n_waiting() const;
  bool broken() const { return state_.load(std::memory_order_relaxed) == kBroken; }

 private:
  enum : int32_t { kFilling = 0, kDraining = 1, kResetting = -1, kBroken = -2 };
  class Held;

  void change_state(int32_t state);  // mutex held
  void leave();                      // mutex held

  RobustMutex mutex_;
  std::atomic<uint32_t> seq_{0};  // bumped on every state change; waiters sleep on it
  const uint32_t parties_;
  // Changed only with the mutex held; atomic so the properties can peek without it.
  std::atomic<uint32_t> count_{0};
  std::atomic<int32_t> state_{kFilling};
};

}  // namespace shoal
