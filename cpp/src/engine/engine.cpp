// The public Engine and the bookkeeping parts of its API: construction,
// functions, cancel, shutdown, terminate, stats. Jobs' paths through the pool
// are in dispatch.cpp, outbox.cpp and completions.cpp (see engine_impl.hpp).
#include "shoal/engine/engine.hpp"

#include <signal.h>

#include <algorithm>
#include <ctime>

#include "engine/engine_impl.hpp"
#include "shoal/mem/arena.hpp"

namespace shoal {

using proto::Status;

uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000u + uint64_t(ts.tv_nsec);
}

void kill_worker(const SharedPidfd& pidfd, pid_t pid) { signal_process(pidfd ? pidfd->get() : -1, pid, SIGKILL); }

// ---- Engine: the API, forwarded ---------------------------------------------

Engine::Engine(EngineOptions options) : impl_(std::make_unique<EngineImpl>(std::move(options))) {}
Engine::~Engine() = default;

const std::string& Engine::segment_name() const { return impl_->segment_name(); }
const std::string& Engine::stats_name() const { return impl_->stats_name(); }
const std::shared_ptr<obs::StatsBlock>& Engine::stats_block() const { return impl_->stats_block(); }
uint32_t Engine::workers() const { return impl_->workers(); }
std::size_t Engine::inline_payload_limit() const { return impl_->inline_payload_limit(); }
uint64_t Engine::define_function(std::string pickled) { return impl_->define_function(std::move(pickled)); }
void Engine::drop_function(uint64_t fn_id) { impl_->drop_function(fn_id); }
uint64_t Engine::submit(uint64_t fn_id, uint32_t tag, std::string payload, int retries, double timeout_s,
                        uint64_t owner) {
  return impl_->submit(fn_id, tag, std::move(payload), retries, timeout_s, owner);
}
std::optional<uint64_t> Engine::try_submit(uint64_t fn_id, uint32_t tag, std::string& payload, int retries,
                                           double timeout_s, uint64_t owner) {
  return impl_->try_submit(fn_id, tag, payload, retries, timeout_s, owner);
}
bool Engine::cancel(uint64_t job_id, uint64_t* owner) { return impl_->cancel(job_id, owner); }
bool Engine::queued(uint64_t job_id) const { return impl_->queued(job_id); }
bool Engine::collect(std::vector<Completion>& out, const Deadline& deadline) { return impl_->collect(out, deadline); }
bool Engine::wait_for(uint64_t job_id, const Deadline& deadline, std::optional<Completion>& out) {
  return impl_->wait_for(job_id, deadline, out);
}
void Engine::shutdown(bool wait, bool cancel_pending) { impl_->shutdown(wait, cancel_pending); }
void Engine::terminate() { impl_->terminate(); }
std::optional<std::string> Engine::broken() const { return impl_->broken(); }
std::vector<pid_t> Engine::worker_pids() const { return impl_->worker_pids(); }
EngineStats Engine::stats() const { return impl_->stats(); }
void Engine::inject_fault_for_testing(TestFault fault) { impl_->inject_fault_for_testing(fault); }

// ---- EngineImpl ------------------------------------------------------------------

EngineImpl::EngineImpl(EngineOptions options)
    : options_(std::move(options)),
      stats_block_(obs::StatsBlock::create(std::max<uint32_t>(options_.workers, 1), options_.pool_kind,
                                           options_.pool_label)),
      layout_(PoolLayout::create(std::max<uint32_t>(options_.workers, 1), options_.ring_bytes, stats_block_->name())),
      inline_payload_limit_(proto::inline_payload_limit(layout_.inbox(0).max_frame())),
      watch_(std::make_unique<SlotWatch[]>(layout_.slots())),
      slots_(layout_.slots()),
      inbox_full_(slots_.size(), 0) {
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    slots_[i].inbox = layout_.inbox(i);
    slots_[i].outbox = layout_.outbox(i);
    watch_[i].outbox = slots_[i].outbox;
  }
  auto argv = options_.argv;
  for (auto& a : argv)
    if (a == "{segment}") a = segment_name();
  auto launcher = options_.fork_server
                      ? make_fork_server_launcher(argv, segment_name(), options_.fork_server_handle,
                                                  options_.inherited_fds)
                      : make_spawn_launcher(argv, options_.inherited_fds);
  supervisor_ = std::make_unique<Supervisor>(std::move(launcher), [this](const ProcessEvent& e) { on_process_event(e); });
  {
    LockGuard lk(mu_);
    for (uint32_t i = 0; i < slots_.size(); ++i) start_slot_locked(i);
  }
  thread_ = std::thread([this] { run(); });
}

EngineImpl::~EngineImpl() {
  shutdown(true, true);
  supervisor_.reset();
  std::vector<std::vector<packed::Reference>> ended;
  std::vector<Completion> untaken;
  {
    LockGuard lk(mu_);
    ended.swap(ended_arguments_);
    untaken.swap(completions_);
    for (auto& entry : function_blocks_) ended.push_back(std::move(entry.second));
    function_blocks_.clear();
  }
  release_ended_arguments(std::move(ended));
  if (options_.drop_owner)
    for (const auto& c : untaken)
      if (c.owner) options_.drop_owner(c.owner);
}

uint64_t EngineImpl::define_function(std::string pickled) {
  auto blocks = packed::references(pickled);
  LockGuard lk(mu_);
  uint64_t id = next_fn_id_++;
  functions_.emplace(id, Blob(std::move(pickled)));
  if (!blocks.empty()) function_blocks_.emplace(id, std::move(blocks));
  return id;
}

void EngineImpl::drop_function(uint64_t fn_id) {
  std::vector<std::vector<packed::Reference>> ended(1);
  {
    LockGuard lk(mu_);
    if (!functions_.erase(fn_id)) return;
    if (auto blocks = function_blocks_.find(fn_id); blocks != function_blocks_.end()) {
      ended[0].swap(blocks->second);
      function_blocks_.erase(blocks);
    }
    for (uint32_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      if (!s.known_functions.erase(fn_id)) continue;
      s.functions_to_drop.push_back(fn_id);
      // Now, not with the worker's next job: an idle worker lets go of what
      // the function holds (a partial's array in the arena) at once.
      if (!s.quarantined && !s.retired && s.state == SlotState::alive) (void)send_function_drops_locked(i);
    }
  }
  // A worker that was sent the definition but has not read it yet finds its
  // blocks gone and fails that function's jobs (TransferError), as for any
  // payload whose blocks went; the runtime drops only its least recently used.
  if (!ended[0].empty()) release_ended_arguments(std::move(ended));
}

uint64_t EngineImpl::submit(uint64_t fn_id, uint32_t tag, std::string payload, int retries, double timeout_s,
                            uint64_t owner) {
  auto blocks = packed::references(payload);
  LockGuard lk(mu_);
  return submit_locked(fn_id, tag, std::move(payload), retries, timeout_s, owner, std::move(blocks));
}

std::optional<uint64_t> EngineImpl::try_submit(uint64_t fn_id, uint32_t tag, std::string& payload, int retries,
                                               double timeout_s, uint64_t owner) {
  auto blocks = packed::references(payload);
  if (!mu_.try_lock_spinning()) return std::nullopt;
  LockGuard adopted(mu_, std::adopt_lock);
  return submit_locked(fn_id, tag, std::move(payload), retries, timeout_s, owner, std::move(blocks));
}

bool EngineImpl::cancel(uint64_t job_id, uint64_t* owner) {
  std::vector<std::vector<packed::Reference>> ended(1);
  {
    LockGuard lk(mu_);
    auto it = pending_ids_.find(job_id);
    if (it == pending_ids_.end()) return false;
    Job& job = *it->second;  // stays in pending_, emptied, until dispatch reaches it
    ++stats_.cancelled;
    ++stats_.completed;
    if (owner) *owner = job.owner;
    job.owner = 0;
    ended[0].swap(job.blocks);
    pending_ids_.erase(it);
    publish_locked();
  }
  if (!ended[0].empty()) release_ended_arguments(std::move(ended));
  return true;
}

bool EngineImpl::queued(uint64_t job_id) const {
  LockGuard lk(mu_);
  return pending_ids_.count(job_id) > 0;
}

void EngineImpl::shutdown(bool wait, bool cancel_pending) {
  {
    LockGuard lk(mu_);
    closing_ = true;
    if (!broken_) stats_block_->set_pool_state(obs::PoolState::closing);
    if (cancel_pending) {
      for (auto& job : pending_)
        if (pending_ids_.count(job.id)) complete_locked(std::move(job), Status::cancelled, 0, {});
      pending_.clear();
      pending_ids_.clear();
      publish_locked();
    }
    events_pending_ = true;
  }
  wake_engine_thread();
  if (wait && thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void EngineImpl::terminate() {
  {
    LockGuard lk(mu_);
    closing_ = true;
    for (auto& job : pending_)
      if (pending_ids_.count(job.id)) complete_locked(std::move(job), Status::cancelled, 0, {});
    pending_.clear();
    pending_ids_.clear();
    stopping_ = true;
    for (auto& s : slots_) {
      for (auto& job : s.in_flight) complete_locked(std::move(job), Status::cancelled, 0, {});
      s.in_flight.clear();
      s.jobs_forgotten = true;
      if (s.state != SlotState::dead) {
        s.inbox.close();
        s.state = SlotState::stopping;
        kill_worker(s.pidfd, s.pid);
      }
    }
    events_pending_ = true;
  }
  wake_engine_thread();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

std::optional<std::string> EngineImpl::broken() const {
  if (!is_broken_.load(std::memory_order_acquire)) return std::nullopt;
  LockGuard lk(mu_);
  return broken_;
}

std::vector<pid_t> EngineImpl::worker_pids() const {
  LockGuard lk(mu_);
  std::vector<pid_t> pids;
  for (const auto& s : slots_)
    if (s.pid > 0 && s.state != SlotState::dead) pids.push_back(s.pid);
  return pids;
}

EngineStats EngineImpl::stats() const {
  LockGuard lk(mu_);
  sample_arena_locked();
  EngineStats st = stats_;
  st.pending = pending_ids_.size();
  st.in_flight = 0;
  for (const auto& s : slots_) st.in_flight += s.in_flight.size();
  return st;
}

void EngineImpl::publish_locked() {
  if (!publish_stats_) return;
  obs::PoolCounters& c = stats_block_->header().pool;
  const auto put = [](obs::Counter& field, uint64_t v) { field.store(v, std::memory_order_relaxed); };
  put(c.submitted, stats_.submitted);
  // The block counts results and exceptions as completed, the other ends apart.
  put(c.completed, stats_.completed - stats_.failed - stats_.cancelled);
  put(c.failed, stats_.failed);
  put(c.cancelled, stats_.cancelled);
  put(c.retried, stats_.retried);
  put(c.timed_out, stats_.timed_out);
  put(c.workers_started, stats_.workers_started);
  put(c.workers_lost, stats_.workers_lost);
  // Every job submitted has ended, waits in the queue, or is with a worker.
  put(c.pending, pending_ids_.size());
  put(c.in_flight, stats_.submitted - stats_.completed - pending_ids_.size());
}

void EngineImpl::sample_arena_locked() const {
  if (!options_.arena) return;
  obs::PoolCounters& c = stats_block_->header().pool;
  const uint64_t used = options_.arena->used_bytes();
  c.arena_used.store(used, std::memory_order_relaxed);
  if (used > c.arena_peak.load(std::memory_order_relaxed)) c.arena_peak.store(used, std::memory_order_relaxed);
  c.arena_limit.store(options_.arena->limit_bytes(), std::memory_order_relaxed);
}

void EngineImpl::trace_dispatch_locked(const Job& job, uint32_t slot) {
  // The parent's ring has one producer: this engine, under mu_.
  obs::trace_push(stats_block_->header().parent_trace,
                  obs::TraceEvent{job.id, job.submitted_ns, obs::monotonic_ns(), 0, 0, slot, 0});
}

void EngineImpl::inject_fault_for_testing(TestFault fault) {
  switch (fault) {
    case TestFault::lose_next_spilled_result: {
      LockGuard lk(mu_);
      lose_next_spill_ = true;
      return;
    }
    case TestFault::engine_thread_throws:
      throw_next_round_.store(true);
      {
        LockGuard lk(mu_);
        events_pending_ = true;  // so the engine thread wakes now, whatever it sleeps on
      }
      wake_engine_thread();
      return;
    case TestFault::supervisor_thread_throws:
      supervisor_->inject_fault_for_testing();
      return;
  }
}

}  // namespace shoal
