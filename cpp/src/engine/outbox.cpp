// Worker outboxes -> completions. Whoever takes results drains the outboxes
// (a collector, a wait_for() caller, or the engine thread when neither will,
// see engine_thread.cpp); each frame is judged (frames.hpp) before any of it
// is acted on, then turned into a completion for its job.
//
// A result spilled into a segment of its own (a payload above a quarter of
// the ring: a mapping, page faults and a copy of any size) is taken from the
// ring under the lock but read without it: its job leaves the slot's
// in_flight at once (so the worker's next result is judged against the job
// after it), waits in spilled_, and is read and completed by
// finish_drains_locked(), which every draining thread calls. Whatever
// happened to the slot meanwhile (its worker died, was replaced or was
// quarantined, the pool broke) is checked again once the lock is back.
#include <sys/mman.h>

#include <algorithm>

#include "shoal/base/errors.hpp"
#include "engine/engine_impl.hpp"
#include "engine/frames.hpp"

namespace shoal {

using proto::FrameHeader;
using proto::Kind;
using proto::Status;

bool EngineImpl::any_outbox_readable() const {
  // Only live slots count: a quarantined or dead slot's outbox may hold
  // garbage that looks like frames forever.
  for (uint32_t i = 0; i < layout_.slots(); ++i)
    if (watch_[i].live.load(std::memory_order_relaxed) && !watch_[i].outbox.empty()) return true;
  return false;
}

void EngineImpl::drain_outboxes_locked() {
  for (uint32_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].state != SlotState::dead && !slots_[i].quarantined) drain_outbox_locked(i);
}

void EngineImpl::drain_outbox_locked(uint32_t slot) {
  // Everything in the outbox may be garbage (another process can write into
  // it): the ring checks its positions and frame headers, and each frame is
  // judged against protocol.hpp's rules before any of it is acted on (no
  // segment is opened or unlinked for a frame that breaks them). A frame that
  // breaks them quarantines the slot: the worker is killed and replaced, and
  // nothing more is read from its rings. Per frame that costs a few compares.
  Slot& s = slots_[slot];
  while (!s.quarantined) {
    FrameHeader h{};
    std::string payload;
    try {
      if (!s.outbox.try_pop_split(&h, sizeof h, [&](std::size_t n) {
            payload.resize(n);
            return reinterpret_cast<std::byte*>(payload.data());
          }))
        return;
    } catch (const ClosedError&) {
      corrupt_slot_locked(slot, worker_name(slot) + "'s outbox is marked closed, which neither side ever does");
      return;
    } catch (const CorruptFrameError& e) {
      corrupt_slot_locked(slot, worker_name(slot) + "'s outbox holds garbage: " + e.what());
      return;
    }
    const bool spilled = h.tag & proto::kSpilled;
    h.tag &= ~proto::kSpilled;
    const FrameVerdict verdict = judge_outbox_frame(h, spilled, payload, s, pid_);
    if (!verdict.fault.empty()) {
      corrupt_slot_locked(slot, worker_name(slot) + "'s outbox held " + verdict.fault);
      return;
    }
    if (!verdict.ours) {
      if (spilled) shm_unlink(("/" + payload).c_str());  // a well-formed name of ours: nobody else will read it
      continue;
    }
    if (spilled) {
      if (lose_next_spill_) {  // TestFault::lose_next_spilled_result: as another process's cleanup would
        lose_next_spill_ = false;
        shm_unlink(("/" + payload).c_str());
      }
      if (h.kind == Kind::result) {
        receiving_.push_back(h.id);
        spilled_.push_back(SpilledResult{slot, s.incarnation, s.pid, h, std::move(payload),
                                         std::move(s.in_flight.front()), {}, false});
        s.in_flight.pop_front();
        ++s.completed;  // the worker did finish the task
        failures_without_progress_ = 0;
        continue;
      }
      // An initializer's failure is read here, under the lock: it ends the
      // pool, and no frame after it may be acted on first. Once per pool.
      try {
        payload = take_spilled(payload, true);
      } catch (const CorruptFrameError& e) {
        corrupt_slot_locked(slot, worker_name(slot) + "'s outbox held a corrupt spilled payload: " + e.what());
        return;
      } catch (const std::exception& e) {
        // Gone (removed by another process), truncated, or too big for
        // this process's memory: the frame is consumed, its job is not lost.
        spilled_payload_lost_locked(worker_name(slot), h, std::nullopt, payload, e.what());
        return;
      }
    }
    if (h.kind == Kind::partial_result) {
      // Kept with the job (judge_outbox_frame checked it is this worker's
      // running map job): no completion yet, and the worker is not idle.
      s.in_flight.front().pieces.push_back(ResultPiece{static_cast<Status>(h.tag), h.arg, std::move(payload)});
      continue;
    }
    if (h.kind == Kind::inbox_corrupt) {
      corrupt_slot_locked(slot, valid_utf8(payload) && payload.size() <= 4096
                                    ? payload
                                    : worker_name(slot) + " found its inbox corrupt (its report is unreadable)");
      return;
    }
    if (h.kind == Kind::init_failed) {
      if (!valid_utf8(payload)) {
        corrupt_slot_locked(slot, worker_name(slot) + "'s outbox held a report of a failed initializer that is not text");
        return;
      }
      fail_everything_locked(payload);
      return;
    }
    Job job = std::move(s.in_flight.front());  // the frame's job (judge_outbox_frame checked)
    s.in_flight.pop_front();
    ++s.completed;
    failures_without_progress_ = 0;
    corruptions_without_progress_ = 0;
    run_ns_ewma_ = run_ns_ewma_ == 0 ? double(h.arg) : 0.8 * run_ns_ewma_ + 0.2 * double(h.arg);
    complete_locked(std::move(job), static_cast<Status>(h.tag), h.arg, std::move(payload));
    note_finished_job_locked(s);
  }
}

void EngineImpl::read_spilled_results_locked() {
  std::vector<SpilledResult> results;
  results.swap(spilled_);  // this thread's now; their ids stay in receiving_
  {
    ScopedUnlock unlocked(mu_);
    for (auto& r : results) {
      try {
        r.payload = take_spilled(r.payload, true);
      } catch (const CorruptFrameError& e) {
        r.corrupt = true;
        r.error = e.what();
      } catch (const std::exception& e) {
        // Gone (removed by another process), truncated, or too big for
        // this process's memory: the frame is consumed, its job is not lost.
        r.error = e.what();
      }
    }
  }
  for (auto& r : results) {
    complete_spilled_locked(r);
    receiving_.erase(std::find(receiving_.begin(), receiving_.end(), r.h.id));
  }
  // Completions no worker's ring announced (the ring rang before the read):
  // a wait_for() caller for one of these jobs sleeps on the doorbell.
  announce_completions();
}

void EngineImpl::complete_spilled_locked(SpilledResult& r) {
  Slot& s = slots_[r.slot];
  const bool same_worker = s.incarnation == r.incarnation && s.state != SlotState::dead;
  if (r.corrupt) {
    const std::string what =
        worker_name(r.slot, r.pid) + "'s outbox held a corrupt spilled payload: " + r.error;
    if (same_worker && !s.quarantined) {
      // Its worker's again, as before its frame was taken: failed over with
      // the rest of what the worker holds.
      s.in_flight.push_front(std::move(r.job));
      corrupt_slot_locked(r.slot, what);
    } else {
      log_locked(LogLevel::warning, "the pool's shared memory was corrupted: " + what, static_cast<int32_t>(r.slot),
                 r.job.id);
      fail_over_locked(std::move(r.job), "the pool's shared memory was corrupted: " + what);
    }
    return;
  }
  if (!r.error.empty()) {
    spilled_payload_lost_locked(worker_name(r.slot, r.pid), r.h, std::move(r.job), r.payload,
                                r.error);  // payload: still the name
    return;
  }
  corruptions_without_progress_ = 0;
  run_ns_ewma_ = run_ns_ewma_ == 0 ? double(r.h.arg) : 0.8 * run_ns_ewma_ + 0.2 * double(r.h.arg);
  complete_locked(std::move(r.job), static_cast<Status>(r.h.tag), r.h.arg, std::move(r.payload));
  if (same_worker) note_finished_job_locked(s);
}

void EngineImpl::fail_over_locked(Job&& job, const std::string& why) {
  if (broken_) {
    complete_locked(std::move(job), Status::broken, 0, *broken_);
  } else {
    retry_or_fail_locked(std::move(job), why);
  }
}

void EngineImpl::retry_or_fail_locked(Job&& job, const std::string& why) {
  if (job.retries_left > 0 && !stopping_ && !job.finishes_in_parts(0)) {
    --job.retries_left;
    ++stats_.retried;
    requeue_locked(std::move(job));
  } else {
    complete_locked(std::move(job), Status::worker_lost, 0, why);
  }
}

// For an initializer's failure, or a job's result (the job left its slot when
// the frame was taken, and was counted as done by its worker then).
void EngineImpl::spilled_payload_lost_locked(const std::string& worker, const FrameHeader& h, std::optional<Job> job,
                                             const std::string& name, const std::string& what) {
  const std::string why = worker + " passed it in shared-memory segment '" + name +
                          "', which could not be read: " + what;
  if (h.kind == Kind::init_failed) {
    fail_everything_locked("the pool's initializer failed in a worker, but its report was lost: " + why);
    return;
  }
  const std::string message = "the task ran, but its result was lost: " + why + ". The pool goes on.";
  log_locked(LogLevel::warning, message, -1, job->id);
  job->retries_left = 0;  // it did run: a map chunk's submitter runs none of it again
  complete_locked(std::move(*job), Status::worker_lost, h.arg, message);
}

}  // namespace shoal
