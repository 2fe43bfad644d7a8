// Central queue -> worker inboxes. Dispatch is pull-based: a job waits in the
// central queue (pending_) until some worker holds fewer than its prefetch
// depth, then goes into that worker's inbox ring and onto its in_flight list,
// so the engine always knows which jobs sit with which worker.
#include <algorithm>
#include <span>
#include <utility>

#include "shoal/base/errors.hpp"
#include "shoal/base/spin.hpp"
#include "engine/engine_impl.hpp"

namespace shoal {

using proto::FrameHeader;
using proto::Kind;
using proto::Status;

namespace {

// Tiny jobs are queued in a worker's inbox up to about this much work, so
// that it keeps busy while the parent's threads are away (a collector running
// handlers for a batch drains nothing meanwhile).
constexpr double kPrefetchNs = 1e6;
constexpr std::size_t kMaxPrefetch = 64;

}  // namespace

uint64_t EngineImpl::submit_locked(uint64_t fn_id, uint32_t tag, std::string payload, int retries, double timeout_s,
                                   uint64_t owner, std::vector<packed::Reference> blocks) {
  if (closing_ && !broken_) throw ClosedError("cannot schedule new work after shutdown");
  ++stats_.submitted;
  const uint64_t id = next_job_id_++;
  const uint64_t timeout_ns = timeout_s > 0 ? std::max<uint64_t>(1, uint64_t(timeout_s * 1e9)) : 0;
  Job job{id, fn_id, tag, std::max(retries, 0), Blob(std::move(payload)), timeout_ns, owner, std::move(blocks), {},
          stats_block_->tracing() ? obs::monotonic_ns() : 0};
  // A broken pool (it also counts as closing) answers with the reason it broke.
  if (broken_) {
    complete_locked(std::move(job), Status::broken, 0, *broken_);
    announce_completions();
    return id;
  }
  if (timeout_ns && !timeouts_used_) {
    timeouts_used_ = true;
    wake_engine_thread();  // to switch to the short tick
  }
  pending_.push_back(std::move(job));
  pending_ids_.emplace(id, &pending_.back());
  dispatch_locked();
  publish_locked();
  return id;
}

std::size_t EngineImpl::prefetch_depth() const {
  // Long jobs go one at a time (a queued job behind a long one could have run
  // elsewhere); tiny jobs are queued deeper, up to about kPrefetchNs of work,
  // so a worker never waits for the parent.
  if (run_ns_ewma_ == 0) return 2;  // nothing measured yet: assume jobs may be long
  if (run_ns_ewma_ >= kPrefetchNs) return 1;
  return std::clamp<std::size_t>(static_cast<std::size_t>(kPrefetchNs / run_ns_ewma_), 2, kMaxPrefetch);
}

void EngineImpl::dispatch_locked() {
  if (pending_.empty()) return;  // the common case after a drain: nothing to hand out
  const std::size_t depth = prefetch_depth();
  std::vector<uint8_t>& full = inbox_full_;
  std::fill(full.begin(), full.end(), uint8_t{0});
  while (!pending_.empty()) {
    if (!pending_ids_.count(pending_.front().id)) {  // cancelled while queued
      pending_.pop_front();
      continue;
    }
    // The least loaded worker; among equals, one that is awake (running or
    // polling for work) rather than asleep, so that while one worker keeps up
    // with the submitter the others stay asleep, and a submit pays no wake-up
    // (a system call and a context switch) that it can avoid. Never a busy
    // worker while another is idle: tasks that wait for each other, or long
    // ones, must run side by side.
    int best = -1;
    std::pair<std::size_t, bool> best_rank{};
    for (uint32_t i = 0; i < slots_.size(); ++i) {
      const Slot& s = slots_[i];
      if (full[i] || s.quarantined || (s.state != SlotState::alive && s.state != SlotState::starting)) continue;
      if (s.in_flight.size() >= depth) continue;
      if (s.retired || (options_.max_tasks_per_child && s.dispatched >= options_.max_tasks_per_child)) continue;
      const std::pair<std::size_t, bool> rank{s.in_flight.size(), s.inbox.consumer_sleeping()};
      if (best < 0 || rank < best_rank) {
        best = static_cast<int>(i);
        best_rank = rank;
      }
    }
    if (best < 0) return;
    bool sent;
    try {
      sent = send_job_locked(static_cast<uint32_t>(best), pending_.front());
    } catch (const std::exception& e) {
      // A payload that cannot be spilled (no descriptor or memory left for
      // its segment): this job fails, the pool goes on.
      const std::string message = std::string("the task could not be handed to a worker: ") + e.what();
      log_locked(LogLevel::warning, message);
      complete_locked(std::move(pending_.front()), Status::broken, 0, message);
      sent = true;
    }
    if (!sent) {
      full[best] = 1;
      continue;
    }
    pending_ids_.erase(pending_.front().id);  // the id outlives a move: complete_locked() leaves it
    pending_.pop_front();
  }
}

bool EngineImpl::send_function_drops_locked(uint32_t slot) {
  Slot& s = slots_[slot];
  while (!s.functions_to_drop.empty()) {
    if (!push_frame_locked(slot, FrameHeader{Kind::drop_function, 0, s.functions_to_drop.back(), 0}, nullptr))
      return false;
    s.functions_to_drop.pop_back();
  }
  return true;
}

bool EngineImpl::send_job_locked(uint32_t slot, Job& job) {
  Slot& s = slots_[slot];
  if (!send_function_drops_locked(slot)) return false;
  if (!s.known_functions.count(job.fn_id)) {
    auto fn = functions_.find(job.fn_id);
    if (fn == functions_.end()) {
      complete_locked(std::move(job), Status::broken, 0, "the task's function was dropped before it ran");
      return true;  // handled: the caller removes it from the queue
    }
    if (!push_frame_locked(slot, FrameHeader{Kind::define_function, 0, job.fn_id, 0}, &fn->second)) return false;
    s.known_functions.insert(job.fn_id);
  }
  if (!push_frame_locked(slot, FrameHeader{Kind::job, job.tag, job.id, job.fn_id}, &job.payload)) return false;
  ++s.dispatched;
  if (job.submitted_ns) trace_dispatch_locked(job, slot);
  s.in_flight.push_back(std::move(job));
  // A worker past its budget is retired by closing its inbox: it finishes what
  // it holds, then exits, and the slot gets a fresh worker.
  if (options_.max_tasks_per_child && s.dispatched >= options_.max_tasks_per_child) retire_locked(s);
  return true;
}

bool EngineImpl::push_frame_locked(uint32_t slot, FrameHeader h, Blob* payload) {
  Slot& s = slots_[slot];
  layout_.status(slot).parent_cpu.store(cpu_hint(), std::memory_order_relaxed);
  std::string_view body;
  if (payload) {
    body = payload->wire(proto::inline_payload_limit(s.inbox.max_frame()));
    if (payload->spilled()) h.tag |= proto::kSpilled;
  }
  try {
    return s.inbox.try_push({std::as_bytes(std::span(&h, 1)), std::as_bytes(std::span(body.data(), body.size()))});
  } catch (const ClosedError&) {
    // Only ever pushed to while open (dispatch skips retired and stopping
    // workers): the closed word was overwritten.
    corrupt_slot_locked(slot, worker_name(slot) + "'s inbox is marked closed, which the pool did not do");
  } catch (const CorruptFrameError& e) {
    corrupt_slot_locked(slot, worker_name(slot) + "'s inbox holds garbage: " + e.what());
  }
  return false;  // not sent: the job stays queued for another worker
}

}  // namespace shoal
