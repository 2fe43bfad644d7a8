// Completions -> callers. A finished job (its result, a cancel, a death, a
// broken pool) becomes a Completion in completions_; collect() takes them in
// batches for the result thread, wait_for() takes one for a caller blocked on
// it. Both drain the outboxes and refill the inboxes themselves, so a result
// needs no hop through the engine thread.
#include <algorithm>
#include <iterator>

#include "engine/engine_impl.hpp"
#include "shoal/base/spin.hpp"

namespace shoal {

using proto::Status;

namespace {

// A collector that finds no result while jobs this short are running naps
// this long instead of sleeping until the next result rings the doorbell.
constexpr double kNapJobNs = 100'000;
constexpr auto kCollectorNap = std::chrono::microseconds(50);
constexpr uint64_t kNapWindowNs = 1'000'000;  // naps go on this long after the last result

}  // namespace

void EngineImpl::complete_locked(Job&& job, Status status, uint64_t run_ns, std::string payload,
                                 uint64_t failed_item) {
  ++stats_.completed;
  switch (status) {
    case Status::ok:
    case Status::error:
      break;
    case Status::cancelled:
      ++stats_.cancelled;
      break;
    case Status::timed_out:
      ++stats_.timed_out;
      ++stats_.failed;
      break;
    default:  // worker lost, memory limit, broken pool
      ++stats_.failed;
      break;
  }
  publish_locked();
  completions_.push_back(Completion{job.id, status, run_ns, std::move(payload), job.owner, std::move(job.pieces),
                                    failed_item, job.retries_left});
  job.owner = 0;
  if (!job.blocks.empty()) ended_arguments_.push_back(std::move(job.blocks));
}

void EngineImpl::release_ended_arguments(std::vector<std::vector<packed::Reference>> ended) {
  for (const auto& refs : ended) {
    try {
      packed::release(refs, options_.arena);
    } catch (const std::exception& e) {
      // The arena's memory was overwritten, or its blocks are gone: nothing
      // to undo, and no caller to raise it to. At worst the blocks leak.
      LockGuard lk(mu_);
      log_locked(LogLevel::warning,
                 std::string("shoal could not release the shared memory of a task's arguments: ") + e.what());
    }
  }
}

// The engine's log records travel as completions with job id 0, which the
// result thread hands to Python's logging.
void EngineImpl::log_locked(LogLevel level, std::string message, int32_t worker, uint64_t job) {
  Completion record;
  record.job_id = 0;
  record.status = Status::log;
  record.run_ns = static_cast<uint64_t>(level);
  record.payload = std::move(message);
  record.log_worker = worker;
  record.log_job = job;
  completions_.push_back(std::move(record));
}

bool EngineImpl::collect(std::vector<Completion>& out, const Deadline& deadline) {
  // The collecting thread drains the outboxes and hands out work itself, as
  // wait_for() does, so a stream of results reaches it without a hop through
  // the engine thread (a wake-up and a context switch per batch). It sleeps on
  // the doorbell without polling: it serves throughput, and on a machine with
  // few cores a poll takes CPU from the workers and the submitter. Results
  // that a wait_for() caller is waiting for are left to that caller.
  auto& bell = layout_.header().doorbell;
  UniqueLock lk(mu_);
  ResultWaiter waiting(*this, lk);
  collector_away_since_ns_.store(0);
  for (;;) {
    const uint32_t seen = bell.seq.load(std::memory_order_seq_cst);
    if (!stopped_) take_results_locked();
    left_for_collector_.store(false);  // whatever is there now is taken below
    if (!completions_.empty()) {
      if (awaited_.empty()) {
        std::move(completions_.begin(), completions_.end(), std::back_inserter(out));
        completions_.clear();
      } else {
        // The bounds are taken here, where mu_ is held: the analysis checks a
        // lambda's body as a function of its own, which holds no lock.
        const uint64_t* first = awaited_.data();
        const uint64_t* last = first + awaited_.size();
        auto awaited = [first, last](const Completion& c) { return std::find(first, last, c.job_id) != last; };
        auto taken = std::stable_partition(completions_.begin(), completions_.end(), awaited);
        std::move(taken, completions_.end(), std::back_inserter(out));
        completions_.erase(taken, completions_.end());
      }
      if (!out.empty()) {
        last_collected_ns_ = monotonic_ns();
        collector_away_since_ns_.store(last_collected_ns_);
        return true;
      }
    }
    if (stopped_) return false;
    if (deadline.expired()) return true;
    // While tiny jobs stream in, results come faster than a wake-up takes:
    // nap, and take what the workers published meanwhile in one batch.
    // Napping, this thread is no sleeper on the doorbell, so a worker
    // publishes without a system call. Once results stop coming (a long job
    // among the tiny ones), sleep until the doorbell rings.
    const bool nap = run_ns_ewma_ > 0 && run_ns_ewma_ < kNapJobNs && !idle_locked() &&
                     monotonic_ns() - last_collected_ns_ < kNapWindowNs;
    lk.unlock();
    if (nap) {
      std::this_thread::sleep_for(std::min<Clock::duration>(kCollectorNap, deadline.remaining().value_or(kCollectorNap)));
    } else {
      // While a caller waits in wait_for(), it drains the outboxes and
      // announces what it leaves for this thread; waking for every result as
      // well would only take CPU and the lock from that caller.
      bell.wait_until(
          [&] {
            return bell.seq.load(std::memory_order_seq_cst) != seen &&
                   (job_waiters_.load() == 0 || left_for_collector_.load());
          },
          deadline, /*poll=*/false);
    }
    lk.lock();
  }
}

uint32_t EngineImpl::cpu_of_job_locked(uint64_t job_id) const {
  for (uint32_t i = 0; i < slots_.size(); ++i)
    for (const Job& job : slots_[i].in_flight)
      if (job.id == job_id) return layout_.status(i).cpu.load(std::memory_order_relaxed);
  return 0;  // queued: no worker has it yet
}

bool EngineImpl::wait_for(uint64_t job_id, const Deadline& deadline, std::optional<Completion>& out) {
  auto& bell = layout_.header().doorbell;
  // While a caller waits here, it drains the outboxes and the engine thread
  // leaves them alone; collect() leaves this job's result alone. The caller
  // watches the doorbell's sequence, which every published result bumps, not
  // the rings: outside the lock the engine thread may be reformatting a dead
  // worker's rings.
  UniqueLock lk(mu_);
  ResultWaiter waiting(*this, lk, job_id);
  for (;;) {
    const uint32_t seen = bell.seq.load(std::memory_order_seq_cst);
    if (!stopped_) take_results_locked();
    auto it = std::find_if(completions_.begin(), completions_.end(),
                           [&](const Completion& c) { return c.job_id == job_id; });
    if (it != completions_.end()) {
      out = std::move(*it);
      completions_.erase(it);
      return true;  // leaving: ~ResultWaiter announces what is left
    }
    if (stopped_ || !unfinished_locked(job_id)) return false;
    if (deadline.expired()) return true;
    const bool leftovers = !left_for_collector_.load() && collectable_locked();
    const bool poll = worth_polling_for(cpu_of_job_locked(job_id));
    lk.unlock();
    if (leftovers) announce_completions();
    // Every completion rings the doorbell (a worker's result, or an
    // announcement); the short slices are only a safety net.
    bell.wait_until([&] { return bell.seq.load(std::memory_order_seq_cst) != seen; }, deadline.capped(kLimitTick),
                    poll);
    lk.lock();
  }
}

EngineImpl::ResultWaiter::ResultWaiter(EngineImpl& engine, UniqueLock<SpinningMutex>& lock,
                                       std::optional<uint64_t> job)
    : engine_(engine), lock_(lock), job_(job) {
  engine_.result_waiters_.fetch_add(1);
  if (job_) {
    engine_.awaited_.push_back(*job_);
    engine_.job_waiters_.fetch_add(1);
  }
}

// Not analysed: whether the caller's lock is held here is known only at run
// time (held on every return, perhaps not when an exception unwinds), which
// owns_lock() tells; the lock is held from here to the unlock() below.
EngineImpl::ResultWaiter::~ResultWaiter() SHOAL_NO_THREAD_SAFETY_ANALYSIS {
  if (!lock_.owns_lock()) lock_.lock();
  engine_.result_waiters_.fetch_sub(1);
  if (job_) {
    engine_.awaited_.erase(std::find(engine_.awaited_.begin(), engine_.awaited_.end(), *job_));
    engine_.job_waiters_.fetch_sub(1);
  }
  // Leaving, under the lock so that no result slips between the last drain
  // and the hand-back: the engine thread drains what is left if nobody else
  // waits, and a collector takes what it skipped while this job was awaited.
  const bool results_left = engine_.any_outbox_readable();
  const bool ring = results_left || !engine_.completions_.empty();
  std::vector<std::vector<packed::Reference>> ended;
  ended.swap(engine_.ended_arguments_);
  lock_.unlock();
  if (results_left) engine_.engine_bell_.notify_all();
  if (ring) engine_.announce_completions();
  if (!ended.empty()) engine_.release_ended_arguments(std::move(ended));
}

void EngineImpl::announce_completions() {
  left_for_collector_.store(true);
  layout_.header().doorbell.notify_all();
}

bool EngineImpl::collectable_locked() const {
  // The bounds are taken here, where mu_ is held (see collect()).
  const uint64_t* first = awaited_.data();
  const uint64_t* last = first + awaited_.size();
  return std::any_of(completions_.begin(), completions_.end(),
                     [first, last](const Completion& c) { return std::find(first, last, c.job_id) == last; });
}

// The engine thread sleeps on one of two bells (see run()): ring both. Its
// callers (process events, shutdown, terminate) may have completed jobs too,
// so the doorbell's ring counts as an announcement for collectors.
void EngineImpl::wake_engine_thread() {
  engine_bell_.notify_all();
  announce_completions();
}

bool EngineImpl::unfinished_locked(uint64_t job_id) const {
  if (pending_ids_.count(job_id)) return true;
  if (std::find(receiving_.begin(), receiving_.end(), job_id) != receiving_.end()) return true;
  return std::any_of(slots_.begin(), slots_.end(), [&](const Slot& s) {
    return std::any_of(s.in_flight.begin(), s.in_flight.end(), [&](const Job& j) { return j.id == job_id; });
  });
}

bool EngineImpl::idle_locked() const {
  if (!pending_ids_.empty() || !receiving_.empty()) return false;
  return std::all_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.in_flight.empty(); });
}

}  // namespace shoal
