#include "shoal/ipc/barrier.hpp"

#include <climits>
#include <exception>

#include "shoal/base/futex.hpp"

namespace shoal {

// Holds the barrier's mutex; can let go of it to sleep until the state changes.
class Barrier::Held {
 public:
  Held(Barrier& barrier, const Blocker& block) : b_(barrier), block_(block) { lock(); }
  ~Held() { b_.mutex_.unlock(); }
  Held(const Held&) = delete;
  Held& operator=(const Held&) = delete;

  // Releases the mutex, sleeps until the state changes or `deadline`, and takes
  // the mutex back (even if the sleep was interrupted). False on timeout.
  bool sleep(const Deadline& deadline) {
    const uint32_t key = b_.seq_.load(std::memory_order_seq_cst);
    b_.mutex_.unlock();
    bool changed = false;
    std::exception_ptr interrupted;
    try {
      changed = block_(deadline, [&](const Deadline& d) {
        while (b_.seq_.load(std::memory_order_seq_cst) == key) {
          if (!futex_wait(b_.seq_, key, d)) break;
        }
        return b_.seq_.load(std::memory_order_seq_cst) != key;
      });
    } catch (...) {
      interrupted = std::current_exception();
    }
    complete_despite_interrupts([&] { lock(); });
    if (interrupted) std::rethrow_exception(interrupted);
    return changed;
  }

 private:
  void lock() {
    LockResult result = b_.mutex_.try_lock();
    if (result == LockResult::timed_out) {
      block_(Deadline::never(), [&](const Deadline& d) {
        result = b_.mutex_.lock(d);
        return result != LockResult::timed_out;
      });
    }
    // Whoever died held the mutex mid-update: nothing about this generation can be trusted.
    if (result == LockResult::previous_owner_died) b_.change_state(kBroken);
  }

  Barrier& b_;
  const Blocker& block_;
};

Barrier::Barrier(uint32_t parties) : parties_(parties) {
  if (parties < 1) throw std::invalid_argument("a barrier needs at least one party");
}

void Barrier::change_state(int32_t state) {
  state_.store(state, std::memory_order_relaxed);
  seq_.fetch_add(1, std::memory_order_seq_cst);
  futex_wake_all(seq_);
}

void Barrier::leave() {
  // The last one out of a drained or reset generation reopens the barrier.
  if (count_.fetch_sub(1, std::memory_order_relaxed) == 1) {
    const int32_t state = state_.load(std::memory_order_relaxed);
    if (state == kDraining || state == kResetting) change_state(kFilling);
  }
}

uint32_t Barrier::wait(const Deadline& deadline, const std::function<void()>& action, const Blocker& block) {
  Held held(*this, block);
  // Wait for the previous generation to drain (or a reset to finish); no timeout, as in CPython.
  while (state_.load(std::memory_order_relaxed) == kDraining ||
         state_.load(std::memory_order_relaxed) == kResetting)
    held.sleep(Deadline::never());
  if (state_.load(std::memory_order_relaxed) == kBroken) throw BrokenBarrierError();

  const uint32_t index = count_.fetch_add(1, std::memory_order_relaxed);
  // Whatever happens below, this party leaves the generation with the mutex held
  // (declared after `held`, so destroyed before it).
  struct Leave {
    Barrier& b;
    ~Leave() { b.leave(); }
  } leave_on_exit{*this};

  if (index + 1 == parties_) {
    if (action) {
      try {
        action();
      } catch (...) {
        change_state(kBroken);
        throw;
      }
    }
    change_state(kDraining);
    return index;
  }
  while (state_.load(std::memory_order_relaxed) == kFilling) {
    if (!held.sleep(deadline) && state_.load(std::memory_order_relaxed) == kFilling) {
      change_state(kBroken);
      throw BrokenBarrierError();
    }
  }
  if (state_.load(std::memory_order_relaxed) < 0) throw BrokenBarrierError();  // broken or reset
  return index;
}

void Barrier::reset(const Blocker& block) {
  Held held(*this, block);
  if (count_.load(std::memory_order_relaxed) > 0) {
    // Waiters are still inside: they leave with BrokenBarrierError and the last
    // one out reopens the barrier. A draining generation finishes normally.
    if (state_.load(std::memory_order_relaxed) != kDraining) change_state(kResetting);
  } else {
    change_state(kFilling);
  }
}

void Barrier::abort(const Blocker& block) {
  Held held(*this, block);
  change_state(kBroken);
}

uint32_t Barrier::n_waiting() const {
  return state_.load(std::memory_order_relaxed) == kFilling ? count_.load(std::memory_order_relaxed) : 0;
}

}  // namespace shoal
