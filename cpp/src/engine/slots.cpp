// Worker slots across their workers' lives: a start is requested from the
// supervisor, its spawned/exited events come back through on_process_event()
// and are handled on the engine thread. A death charges only the job that was
// running; the jobs queued behind it go back to the front of the queue.
#include <sys/wait.h>

#include "engine/engine_impl.hpp"

namespace shoal {

using proto::FrameHeader;
using proto::Kind;
using proto::Status;

namespace {

// How a slot's worker ended, as the stats block counts restarts.
obs::ExitCause exit_cause(const Slot& s, bool quarantined, bool clean, int wait_status) {
  if (s.kill_reason) return s.kill_reason->status == Status::memory_exceeded ? obs::ExitCause::memory : obs::ExitCause::timeout;
  if (quarantined) return obs::ExitCause::corrupt;
  if (clean) return s.retired ? obs::ExitCause::retired : obs::ExitCause::none;
  if (wait_status != kExitStatusUnknown && WIFSIGNALED(wait_status)) return obs::ExitCause::signal;
  return obs::ExitCause::exit_code;
}

int exit_value(int wait_status) {
  if (wait_status == kExitStatusUnknown) return 0;
  if (WIFSIGNALED(wait_status)) return WTERMSIG(wait_status);
  return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 0;
}

}  // namespace

// The supervisor thread: events are only queued here, and handled on the
// engine thread (handle_events_locked), the one thread that starts slots.
void EngineImpl::on_process_event(const ProcessEvent& e) {
  {
    LockGuard lk(mu_);
    events_.push_back(e);
    events_pending_ = true;
  }
  wake_engine_thread();
}

void EngineImpl::handle_events_locked() {
  std::vector<ProcessEvent> events;
  events.swap(events_);
  for (const auto& e : events) {
    if (e.type == ProcessEvent::Type::failed) {
      // The launcher gave up (a fork server that keeps dying) or the
      // supervisor thread failed: no worker can be started or watched.
      launcher_failed_ = true;
      log_locked(LogLevel::error, e.reason);
      if (!broken_) fail_everything_locked(e.reason);
      continue;
    }
    if (e.slot >= slots_.size()) {
      log_locked(LogLevel::warning, "ignored a process event for slot " + std::to_string(e.slot) +
                                        ", which this pool does not have");
      continue;
    }
    Slot& s = slots_[e.slot];
    switch (e.type) {
      case ProcessEvent::Type::spawned:
        s.pid = e.pid;
        s.pidfd = e.pidfd;
        if (s.state == SlotState::starting) s.state = SlotState::alive;
        ++stats_.workers_started;
        stats_block_->worker_spawned(e.slot, e.pid);
        publish_locked();
        log_locked(LogLevel::debug, worker_name(e.slot) + " started", static_cast<int32_t>(e.slot));
        if (s.quarantined) kill_worker(s.pidfd, s.pid);  // its rings went bad before it started
        break;
      case ProcessEvent::Type::spawn_failed:
        // A launcher that gave up says why (its failed event broke the pool
        // already); on a broken pool the slot just stays empty.
        if (!e.reason.empty() && !broken_) fail_everything_locked(e.reason);
        if (broken_) {
          s.state = SlotState::dead;
          watch_[e.slot].live.store(false);
          break;
        }
        handle_exit_locked(e.slot, -1, W_EXITCODE(127, 0));
        break;
      case ProcessEvent::Type::exited:
        if (s.pid == e.pid) handle_exit_locked(e.slot, e.pid, e.wait_status);
        break;
      case ProcessEvent::Type::failed:
        break;
    }
  }
}

void EngineImpl::start_slot_locked(uint32_t slot) {
  Slot& s = slots_[slot];
  if (!check_header_locked()) {  // no new worker could attach: the pool broke
    s.state = SlotState::dead;
    watch_[slot].live.store(false);
    return;
  }
  layout_.reset_slot(slot);
  ++s.incarnation;
  s.rss_check_due = false;
  s.quarantined = false;
  s.jobs_forgotten = false;
  watch_[slot].live.store(true);
  s.state = SlotState::starting;
  stats_block_->worker_starting(slot);
  s.pid = 0;
  s.pidfd.reset();
  s.known_functions.clear();
  s.functions_to_drop.clear();
  s.dispatched = 0;
  s.completed = 0;
  s.retired = false;
  if (!options_.init_payload.empty()) {
    try {
      Blob init(options_.init_payload);
      // The worker reads a spilled one once at start-up, then unlinks it.
      if (push_frame_locked(slot, FrameHeader{Kind::initialize, 0, 0, 0}, &init)) init.hand_over_spill();
    } catch (const std::exception& e) {
      // Every worker needs it (a spill segment that cannot be made: out of
      // descriptors or memory): no worker can start.
      s.state = SlotState::dead;
      watch_[slot].live.store(false);
      const std::string reason =
          std::string("the pool's initializer could not be handed to a new worker: ") + e.what();
      log_locked(LogLevel::error, reason);
      if (!broken_) fail_everything_locked(reason);
      return;
    }
  }
  supervisor_->request_spawn(slot);
}

void EngineImpl::handle_exit_locked(uint32_t slot, pid_t pid, int wait_status) {
  Slot& s = slots_[slot];
  drain_outbox_locked(slot);  // results published before the death still count (not a quarantined slot's)
  // A worker leaves on its own when its inbox is closed: if the pool did not
  // close it, the closed word was overwritten, and the worker left its jobs.
  if (!s.quarantined && !s.retired && s.state != SlotState::stopping && s.inbox.is_closed())
    corrupt_slot_locked(slot, worker_name(slot) + "'s inbox is marked closed, which the pool did not do");
  // A worker that attaches to a ring with a garbage header refuses it and exits:
  // that is corruption, not a worker that cannot start.
  if (!s.quarantined) {
    if (auto fault = s.inbox.header_fault()) corrupt_slot_locked(slot, worker_name(slot) + "'s inbox header: " + *fault);
  }
  if (!s.quarantined) {
    if (auto fault = s.outbox.header_fault()) corrupt_slot_locked(slot, worker_name(slot) + "'s outbox header: " + *fault);
  }
  // Its jobs went elsewhere when its shared memory was found corrupt, and that was logged.
  const bool quarantined = s.quarantined;
  // Only compared with the ids of jobs this worker held: garbage blames no job.
  const uint64_t running = layout_.status(slot).running_job.load();
  // Only believed for a map chunk and up to its size (the submitter checks).
  const uint64_t running_item = layout_.status(slot).running_item.load(std::memory_order_relaxed);
  // An exit nobody could see (SIGCHLD ignored) was clean if the worker had been told to exit.
  const bool clean = wait_status == kExitStatusUnknown
                         ? s.retired || s.state == SlotState::stopping
                         : WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
  for (auto it = s.in_flight.rbegin(); it != s.in_flight.rend(); ++it) {
    Job& job = *it;
    // Only the job that was running is to blame; the ones queued behind it go
    // back to the front of the queue untouched.
    if (job.id == running && s.kill_reason && s.kill_reason->job_id == job.id) {
      complete_locked(std::move(job), s.kill_reason->status, 0, s.kill_reason->message,
                      job.is_map() ? running_item : 0);
      continue;
    }
    if (job.id == running) {
      if (job.retries_left == 0 || job.finishes_in_parts(running_item)) {
        // A map chunk ends here with the item that was running to blame (the
        // submitter re-runs the others and, if it may, that one).
        const uint64_t item = job.is_map() ? running_item : 0;
        complete_locked(std::move(job), Status::worker_lost, 0,
                        "worker " + std::to_string(slot) + " (pid " + std::to_string(pid) + ") " +
                            describe_exit(wait_status) + " while running this task",
                        item);
        continue;
      }
      --job.retries_left;
      ++stats_.retried;
    }
    requeue_locked(std::move(job));
  }
  s.in_flight.clear();
  if (!clean) {
    ++stats_.workers_lost;
    if (!quarantined && running == 0 && s.completed == 0) ++failures_without_progress_;
    if (!s.kill_reason && !stopping_ && !quarantined)
      log_locked(LogLevel::warning,
                 "worker " + std::to_string(slot) + " (pid " + std::to_string(pid) + ") " +
                     describe_exit(wait_status) + "; starting a replacement",
                 static_cast<int32_t>(slot), running);
  } else {
    log_locked(LogLevel::debug, "worker " + std::to_string(slot) + " (pid " + std::to_string(pid) + ") exited",
               static_cast<int32_t>(slot));
  }
  const bool restarting = !(stopping_ || broken_);
  stats_block_->worker_ended(slot, exit_cause(s, quarantined, clean, wait_status), exit_value(wait_status), restarting);
  publish_locked();
  s.kill_reason.reset();
  s.state = SlotState::dead;
  watch_[slot].live.store(false);
  s.pid = 0;
  s.pidfd.reset();
  if (stopping_ || broken_) return;
  if (failures_without_progress_ >= kStartupFailuresPerSlot * slots_.size()) {
    fail_everything_locked("worker processes keep dying before doing any work; the last one " +
                           describe_exit(wait_status) + ". Check that the interpreter can start and import shoal.");
    return;
  }
  start_slot_locked(slot);
}

void EngineImpl::retire_locked(Slot& s) {
  s.inbox.close();  // it finishes what it holds, exits, and the slot is refilled
  s.retired = true;
}

std::string EngineImpl::worker_name(uint32_t slot) const { return worker_name(slot, slots_[slot].pid); }

std::string EngineImpl::worker_name(uint32_t slot, pid_t pid) {
  return "worker " + std::to_string(slot) + " (pid " + std::to_string(pid) + ")";
}

}  // namespace shoal
