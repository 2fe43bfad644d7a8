// Worker outboxes -> completions. Whoever takes results drains the outboxes
// (a collector, a wait_for() caller, or the engine thread when neither will,
// see engine_thread.cpp); each frame is judged (frames.hpp) before any of it
// is acted on, then turned into a completion for its job.
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
      try {
        payload = take_spilled(payload, true);
      } catch (const CorruptFrameError& e) {
        corrupt_slot_locked(slot, worker_name(slot) + "'s outbox held a corrupt spilled payload: " + e.what());
        return;
      } catch (const std::exception& e) {
        // Gone (removed by another process), truncated, or too big for
        // this process's memory: the frame is consumed, its job is not lost.
        spilled_payload_lost_locked(slot, h, payload, e.what());
        if (h.kind == Kind::init_failed) return;
        continue;
      }
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
    s.in_flight.pop_front();
    ++s.completed;
    failures_without_progress_ = 0;
    corruptions_without_progress_ = 0;
    run_ns_ewma_ = run_ns_ewma_ == 0 ? double(h.arg) : 0.8 * run_ns_ewma_ + 0.2 * double(h.arg);
    complete_locked(h.id, static_cast<Status>(h.tag), h.arg, std::move(payload));
    if (options_.memory_soft_limit) check_soft_limit_locked(slot);
  }
}

void EngineImpl::spilled_payload_lost_locked(uint32_t slot, const FrameHeader& h, const std::string& name,
                                             const std::string& what) {
  const std::string why = worker_name(slot) + " passed it in shared-memory segment '" + name +
                          "', which could not be read: " + what;
  if (h.kind == Kind::init_failed) {
    fail_everything_locked("the pool's initializer failed in a worker, but its report was lost: " + why);
    return;
  }
  Slot& s = slots_[slot];
  auto it = h.kind == Kind::result
                ? std::find_if(s.in_flight.begin(), s.in_flight.end(), [&](const Job& j) { return j.id == h.id; })
                : s.in_flight.end();
  if (it == s.in_flight.end()) {  // not a job's result, or not ours (already failed over)
    log_locked(LogLevel::warning, "a frame from " + why + "; it was dropped");
    return;
  }
  s.in_flight.erase(it);
  ++s.completed;  // the worker did finish the task
  failures_without_progress_ = 0;
  const std::string message = "the task ran, but its result was lost: " + why + ". The pool goes on.";
  log_locked(LogLevel::warning, message);
  complete_locked(h.id, Status::worker_lost, h.arg, message);
}

}  // namespace shoal
