// The engine thread: the one thread that handles process events (and so the
// only one that starts or reformats a slot), enforces time and memory limits,
// stops the workers at shutdown, and drains the outboxes when no collector or
// waiter will. It never polls: it serves throughput, and on a machine with few
// cores a poll takes CPU from the workers and the caller.
#include <algorithm>
#include <stdexcept>

#include "engine/engine_impl.hpp"

namespace shoal {

using proto::Status;

namespace {

constexpr auto kStopGrace = std::chrono::seconds(3);
constexpr auto kEngineTick = std::chrono::milliseconds(100);
// A collector away with a batch (running its handlers) is trusted to come
// back and drain the outboxes for this long before the engine thread does it.
constexpr auto kCollectorHandOff = std::chrono::milliseconds(2);
constexpr uint64_t kCollectorHandOffNs = std::chrono::nanoseconds(kCollectorHandOff).count();

}  // namespace

bool EngineImpl::results_are_mine() const {
  if (result_waiters_.load() != 0) return false;
  const uint64_t away_since = collector_away_since_ns_.load();
  return away_since == 0 || monotonic_ns() - away_since > kCollectorHandOffNs;
}

// A round holds mu_ from its wake-up to its end (or, on a break, on into the
// final stop). The catch blocks, which the thread-safety analysis does not
// follow, take mu_ again where the error left it released.
void EngineImpl::run() {
  auto& bell = layout_.header().doorbell;
  std::optional<Clock::time_point> stop_deadline;
  UniqueLock lk(mu_, std::defer_lock);
  bool busy = false;  // jobs queued or running, as of the last round
  // Nothing may escape this thread (it would end the process). An error in
  // a round breaks the pool with its reason (every job fails, every waiter
  // wakes) and the pool stops; a second one ends the loop at once.
  bool faulted = false;
  for (;;) {
    try {
      const bool limits = timeouts_used_ || options_.memory_hard_limit || options_.memory_soft_limit;
      Clock::duration tick = limits ? kLimitTick : kEngineTick;
      if (results_are_mine()) {
        // The workers' doorbell wakes this thread for results.
        bell.wait_until([&] { return events_pending_.load() || any_outbox_readable() || !results_are_mine(); },
                        Deadline::after(tick), /*poll=*/false);
      } else {
        // Other threads take the results; sleeping on the doorbell would wake
        // this thread for every one of them. Its own bell rings for process
        // events and when the last result waiter leaves results behind; while
        // work is under way it also looks every hand-off period, in case a
        // collector stays away (a slow callback) and workers run dry.
        if (busy) tick = std::min<Clock::duration>(tick, kCollectorHandOff);
        engine_bell_.wait_until([&] { return events_pending_.load() || (results_are_mine() && any_outbox_readable()); },
                                Deadline::after(tick), /*poll=*/false);
      }
      lk.lock();
      if (throw_next_round_.exchange(false)) throw std::runtime_error("fault injected by a test");
      const uint64_t completed_before = stats_.completed;
      events_pending_ = false;
      check_header_locked();
      handle_events_locked();
      if (results_are_mine()) drain_outboxes_locked();
      finish_drains_locked();  // also what handle_events_locked() drained from dead workers
      if (limits) enforce_limits_locked();
      dispatch_locked();
      sample_arena_locked();
      busy = !idle_locked();

      if (closing_ && !stopping_ && idle_locked()) {
        stopping_ = true;
        for (auto& s : slots_) {
          if (s.state == SlotState::dead) continue;
          s.inbox.close();  // the worker drains its inbox, then exits
          s.state = SlotState::stopping;
        }
      }
      if (stopping_) {
        if (!stop_deadline) stop_deadline = Clock::now() + kStopGrace;
        bool all_dead = std::all_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.state == SlotState::dead; });
        if (all_dead) break;
        // Nobody reports exits any more (the launcher gave up, or the
        // supervisor failed): what is left is killed now.
        if (launcher_failed_) break;
        if (Clock::now() > *stop_deadline) break;  // the launcher kills what is left
      }
      const bool announce = stats_.completed != completed_before;
      lk.unlock();
      if (announce) announce_completions();
    } catch (const std::exception& e) {
      if (!lk.owns_lock()) lk.lock();
      thread_fault_locked("engine", e.what());
      if (faulted) break;
      faulted = true;
      lk.unlock();
    } catch (...) {
      if (!lk.owns_lock()) lk.lock();
      thread_fault_locked("engine", "unknown exception");
      if (faulted) break;
      faulted = true;
      lk.unlock();
    }
  }
  // Leftover workers (stuck past the grace period) are killed by the launcher.
  try {
    for (auto& s : slots_)
      if (s.state != SlotState::dead) kill_worker(s.pidfd, s.pid);
    lk.unlock();
    supervisor_->stop();
    lk.lock();
    layout_.unlink();
    // A closed pool is no longer listed (its stats stay readable to this process).
    if (!broken_) stats_block_->set_pool_state(obs::PoolState::closed);
    stats_block_->unlink();
    // Spilled results taken from the rings are delivered: read here, or by
    // the thread that is reading them now (a copy, bounded by its size).
    finish_drains_locked();
    while (!receiving_.empty()) {
      ScopedUnlock unlocked(mu_);
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    for (uint32_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      for (auto& job : s.in_flight) complete_locked(std::move(job), Status::cancelled, 0, {});
      s.in_flight.clear();
      s.state = SlotState::dead;
      watch_[i].live.store(false);
      s.pid = 0;
      s.pidfd.reset();
    }
  } catch (const std::exception& e) {
    if (!lk.owns_lock()) lk.lock();
    thread_fault_locked("engine", e.what());
  }
  // Whatever happened, collectors and waiters learn that the engine stopped.
  stopped_ = true;
  lk.unlock();
  announce_completions();
}

}  // namespace shoal
