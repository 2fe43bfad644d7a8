// What breaks one slot or the whole pool, and how the engine goes on: garbage
// in a slot's shared memory quarantines that worker; a corrupt pool header,
// garbage that keeps coming, a failed initializer or an error on one of the
// pool's threads breaks the pool (every job fails with the reason, every
// waiter wakes, later submits get it). Nothing here ends the process.
#include "engine/engine_impl.hpp"

namespace shoal {

using proto::Status;

void EngineImpl::corrupt_slot_locked(uint32_t slot, const std::string& what) {
  Slot& s = slots_[slot];
  if (s.quarantined) return;
  s.quarantined = true;
  watch_[slot].live.store(false);
  kill_worker(s.pidfd, s.pid);  // one not started yet is killed once it is (handle_events_locked)
  const bool replaced = !stopping_ && !broken_;
  const std::string why = "the pool's shared memory was corrupted: " + what +
                          (replaced ? "; the worker was killed and is being replaced" : "; the worker was killed");
  log_locked(LogLevel::warning, why, static_cast<int32_t>(slot));
  // Any of its jobs may have run (a garbled frame may have been its result),
  // and none will finish now: each is retried if it may be, else it fails.
  for (auto it = s.in_flight.rbegin(); it != s.in_flight.rend(); ++it) {
    Job& job = *it;
    if (s.kill_reason && s.kill_reason->job_id == job.id) {
      // Garbage may have been written over the item word too: nothing blamed.
      complete_locked(std::move(job), s.kill_reason->status, 0, s.kill_reason->message);
    } else {
      retry_or_fail_locked(std::move(job), why);
    }
  }
  s.in_flight.clear();
  s.kill_reason.reset();
  // Garbage that keeps coming (a process scribbling on and on) must not
  // replace workers for ever.
  if (++corruptions_without_progress_ >= kStartupFailuresPerSlot * slots_.size() && !broken_)
    fail_everything_locked("the pool's shared memory was corrupted: " + what + " (" +
                           std::to_string(corruptions_without_progress_) +
                           " times in a row, with no task finishing in between); the pool is broken and cannot run tasks");
}

bool EngineImpl::check_header_locked() {
  if (header_corrupt_) return false;
  const auto fault = layout_.header_fault();
  if (!fault) return true;
  header_corrupt_ = true;
  const std::string reason =
      "the pool's shared memory was corrupted: " + *fault + "; the pool is broken and cannot run tasks";
  log_locked(LogLevel::error, reason);
  if (!broken_) fail_everything_locked(reason);
  return false;
}

void EngineImpl::thread_fault_locked(const char* thread, const std::string& what) noexcept {
  try {
    const std::string reason = std::string("internal error on the pool's ") + thread + " thread (" + what +
                               "); the pool is broken and cannot run tasks";
    log_locked(LogLevel::error, reason);
    if (!broken_) fail_everything_locked(reason);
  } catch (...) {  // out of memory even for the reason: at least take no new work
    closing_ = true;
  }
}

void EngineImpl::fail_everything_locked(const std::string& reason) {
  broken_ = reason;
  is_broken_ = true;
  closing_ = true;
  stats_block_->set_pool_state(obs::PoolState::broken);
  for (auto& job : pending_)
    if (pending_ids_.count(job.id)) complete_locked(std::move(job), Status::broken, 0, reason);
  pending_.clear();
  pending_ids_.clear();
  for (auto& s : slots_) {
    for (auto& job : s.in_flight) complete_locked(std::move(job), Status::broken, 0, reason);
    s.in_flight.clear();
    s.jobs_forgotten = true;
  }
  announce_completions();  // waiters for any of these jobs
}

}  // namespace shoal
