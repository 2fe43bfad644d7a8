#include "shoal/engine/engine.hpp"

#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <stdexcept>

#include "shoal/base/errors.hpp"

namespace shoal {
namespace {

using proto::FrameHeader;
using proto::Kind;
using proto::Status;
using Clock = std::chrono::steady_clock;

// Workers that die before finishing anything this many times in a row (per
// worker slot) mean the pool cannot work: a broken interpreter, a bad import.
constexpr uint32_t kStartupFailuresPerSlot = 3;
constexpr auto kStopGrace = std::chrono::seconds(3);
constexpr auto kEngineTick = std::chrono::milliseconds(100);
// With time or memory limits in force, running jobs are checked this often.
constexpr auto kLimitTick = std::chrono::milliseconds(10);
// A collector away with a batch (running its handlers) is trusted to come
// back and drain the outboxes for this long before the engine thread does it.
constexpr auto kCollectorHandOff = std::chrono::milliseconds(2);
constexpr uint64_t kCollectorHandOffNs = std::chrono::nanoseconds(kCollectorHandOff).count();
// Tiny jobs are queued in a worker's inbox up to about this much work, so
// that it keeps busy while the parent's threads are away (a collector running
// handlers for a batch drains nothing meanwhile).
constexpr double kPrefetchNs = 1e6;
constexpr std::size_t kMaxPrefetch = 64;
// A collector that finds no result while jobs this short are running naps
// this long instead of sleeping until the next result rings the doorbell.
constexpr double kNapJobNs = 100'000;
constexpr auto kCollectorNap = std::chrono::microseconds(50);
constexpr uint64_t kNapWindowNs = 1'000'000;  // naps go on this long after the last result

uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000u + uint64_t(ts.tv_nsec);
}

// Resident set size of a process, in bytes; 0 if it cannot be read.
uint64_t resident_bytes(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/statm", pid);
  FILE* f = std::fopen(path, "r");
  if (!f) return 0;
  unsigned long long size = 0, resident = 0;
  int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) : 0;
}

std::string mib(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

// Whether `s` is well-formed UTF-8 (text a worker reports, which Python decodes).
bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i <= n) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static constexpr uint32_t kMin[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

// Kills a worker through its pidfd, which cannot name another process even if
// the worker is gone and reaped; by pid only without one (no pidfd support).
void kill_worker(const SharedPidfd& pidfd, pid_t pid) { signal_process(pidfd ? pidfd->get() : -1, pid, SIGKILL); }

}  // namespace

Engine::Engine(EngineOptions options)
    : options_(std::move(options)),
      layout_(PoolLayout::create(std::max<uint32_t>(options_.workers, 1), options_.ring_bytes)),
      slots_(layout_.slots()) {
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    slots_[i].inbox = layout_.inbox(i);
    slots_[i].outbox = layout_.outbox(i);
  }
  auto argv = options_.argv;
  for (auto& a : argv)
    if (a == "{segment}") a = segment_name();
  auto launcher = options_.fork_server
                      ? make_fork_server_launcher(argv, segment_name(), options_.fork_server_handle)
                      : make_spawn_launcher(argv);
  supervisor_ = std::make_unique<Supervisor>(std::move(launcher), [this](const ProcessEvent& e) { on_process_event(e); });
  {
    std::lock_guard lk(mu_);
    for (uint32_t i = 0; i < slots_.size(); ++i) start_slot_locked(i);
  }
  thread_ = std::thread([this] { run(); });
}

Engine::~Engine() {
  shutdown(true, true);
  supervisor_.reset();
}

uint64_t Engine::define_function(std::string pickled) {
  std::lock_guard lk(mu_);
  uint64_t id = next_fn_id_++;
  functions_.emplace(id, Blob(std::move(pickled)));
  return id;
}

void Engine::drop_function(uint64_t fn_id) {
  std::lock_guard lk(mu_);
  if (!functions_.erase(fn_id)) return;
  for (auto& s : slots_)
    if (s.known_functions.erase(fn_id)) s.functions_to_drop.push_back(fn_id);
}

uint64_t Engine::submit(uint64_t fn_id, uint32_t tag, std::string payload, int retries) {
  uint64_t id;
  {
    std::lock_guard lk(mu_);
    id = next_job_id_++;
  }
  submit_as(id, fn_id, tag, std::move(payload), retries);
  return id;
}

void Engine::submit_as(uint64_t id, uint64_t fn_id, uint32_t tag, std::string payload, int retries,
                       double timeout_s) {
  std::lock_guard lk(mu_);
  submit_locked(id, fn_id, tag, std::move(payload), retries, timeout_s);
}

bool Engine::try_submit_as(uint64_t id, uint64_t fn_id, uint32_t tag, std::string& payload, int retries,
                           double timeout_s) {
  if (!mu_.try_lock_spinning()) return false;
  std::lock_guard adopted(mu_, std::adopt_lock);
  submit_locked(id, fn_id, tag, std::move(payload), retries, timeout_s);
  return true;
}

void Engine::submit_locked(uint64_t id, uint64_t fn_id, uint32_t tag, std::string payload, int retries,
                           double timeout_s) {
  // A broken pool (it also counts as closing) answers with the reason it broke.
  if (broken_) {
    ++stats_.submitted;
    complete_locked(id, Status::broken, 0, *broken_);
    announce_completions();
    return;
  }
  if (closing_) throw ClosedError("cannot schedule new work after shutdown");
  ++stats_.submitted;
  const uint64_t timeout_ns = timeout_s > 0 ? std::max<uint64_t>(1, uint64_t(timeout_s * 1e9)) : 0;
  if (timeout_ns && !timeouts_used_) {
    timeouts_used_ = true;
    wake_engine_thread();  // to switch to the short tick
  }
  pending_.push_back(Job{id, fn_id, tag, std::max(retries, 0), Blob(std::move(payload)), timeout_ns});
  pending_ids_.insert(id);
  dispatch_locked();
}

bool Engine::cancel(uint64_t job_id) {
  std::lock_guard lk(mu_);
  return pending_ids_.erase(job_id) > 0;
}

bool Engine::queued(uint64_t job_id) const {
  std::lock_guard lk(mu_);
  return pending_ids_.count(job_id) > 0;
}

bool Engine::collect(std::vector<Completion>& out, const Deadline& deadline) {
  // The collecting thread drains the outboxes and hands out work itself, as
  // wait_for() does, so a stream of results reaches it without a hop through
  // the engine thread (a wake-up and a context switch per batch). It sleeps on
  // the doorbell without polling: it serves throughput, and on a machine with
  // few cores a poll takes CPU from the workers and the submitter. Results
  // that a wait_for() caller is waiting for are left to that caller.
  auto& bell = layout_.header().doorbell;
  std::unique_lock lk(mu_);
  ResultWaiter waiting(*this, lk);
  collector_away_since_ns_.store(0);
  for (;;) {
    const uint32_t seen = bell.seq.load(std::memory_order_seq_cst);
    if (!stopped_) {
      drain_outboxes_locked();
      dispatch_locked();
    }
    left_for_collector_.store(false);  // whatever is there now is taken below
    if (!completions_.empty()) {
      if (awaited_.empty()) {
        std::move(completions_.begin(), completions_.end(), std::back_inserter(out));
        completions_.clear();
      } else {
        auto awaited = [&](const Completion& c) {
          return std::find(awaited_.begin(), awaited_.end(), c.job_id) != awaited_.end();
        };
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

bool Engine::wait_for(uint64_t job_id, const Deadline& deadline, std::optional<Completion>& out) {
  auto& bell = layout_.header().doorbell;
  // While a caller waits here, it drains the outboxes and the engine thread
  // leaves them alone; collect() leaves this job's result alone. The caller
  // watches the doorbell's sequence, which every published result bumps, not
  // the rings: outside the lock the engine thread may be reformatting a dead
  // worker's rings.
  std::unique_lock lk(mu_);
  ResultWaiter waiting(*this, lk, job_id);
  for (;;) {
    const uint32_t seen = bell.seq.load(std::memory_order_seq_cst);
    if (!stopped_) {
      drain_outboxes_locked();
      dispatch_locked();
    }
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
    lk.unlock();
    if (leftovers) announce_completions();
    // Every completion rings the doorbell (a worker's result, or an
    // announcement); the short slices are only a safety net.
    bell.wait_until([&] { return bell.seq.load(std::memory_order_seq_cst) != seen; }, deadline.capped(kLimitTick));
    lk.lock();
  }
}

Engine::ResultWaiter::ResultWaiter(Engine& engine, std::unique_lock<SpinningMutex>& lock, std::optional<uint64_t> job)
    : engine_(engine), lock_(lock), job_(job) {
  engine_.result_waiters_.fetch_add(1);
  if (job_) {
    engine_.awaited_.push_back(*job_);
    engine_.job_waiters_.fetch_add(1);
  }
}

Engine::ResultWaiter::~ResultWaiter() {
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
  lock_.unlock();
  if (results_left) engine_.engine_bell_.notify_all();
  if (ring) engine_.announce_completions();
}

void Engine::announce_completions() {
  left_for_collector_.store(true);
  layout_.header().doorbell.notify_all();
}

bool Engine::collectable_locked() const {
  return std::any_of(completions_.begin(), completions_.end(), [&](const Completion& c) {
    return std::find(awaited_.begin(), awaited_.end(), c.job_id) == awaited_.end();
  });
}

// The engine thread sleeps on one of two bells (see run()): ring both. Its
// callers (process events, shutdown, terminate) may have completed jobs too,
// so the doorbell's ring counts as an announcement for collectors.
void Engine::wake_engine_thread() {
  engine_bell_.notify_all();
  announce_completions();
}

void Engine::shutdown(bool wait, bool cancel_pending) {
  {
    std::lock_guard lk(mu_);
    closing_ = true;
    if (cancel_pending) {
      for (auto& job : pending_)
        if (pending_ids_.count(job.id)) complete_locked(job.id, Status::cancelled, 0, {});
      pending_.clear();
      pending_ids_.clear();
    }
    events_pending_ = true;
  }
  wake_engine_thread();
  if (wait && thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void Engine::terminate() {
  {
    std::lock_guard lk(mu_);
    closing_ = true;
    for (auto& job : pending_)
      if (pending_ids_.count(job.id)) complete_locked(job.id, Status::cancelled, 0, {});
    pending_.clear();
    pending_ids_.clear();
    stopping_ = true;
    for (auto& s : slots_) {
      for (auto& job : s.in_flight) complete_locked(job.id, Status::cancelled, 0, {});
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

std::optional<std::string> Engine::broken() const {
  if (!is_broken_.load(std::memory_order_acquire)) return std::nullopt;
  std::lock_guard lk(mu_);
  return broken_;
}

std::vector<pid_t> Engine::worker_pids() const {
  std::lock_guard lk(mu_);
  std::vector<pid_t> pids;
  for (const auto& s : slots_)
    if (s.pid > 0 && s.state != SlotState::dead) pids.push_back(s.pid);
  return pids;
}

EngineStats Engine::stats() const {
  std::lock_guard lk(mu_);
  EngineStats st = stats_;
  st.pending = pending_ids_.size();
  st.in_flight = 0;
  for (const auto& s : slots_) st.in_flight += s.in_flight.size();
  return st;
}

// ---- engine thread -------------------------------------------------------

void Engine::on_process_event(const ProcessEvent& e) {
  {
    std::lock_guard lk(mu_);
    events_.push_back(e);
    events_pending_ = true;
  }
  wake_engine_thread();
}

bool Engine::any_outbox_readable() const {
  // Only live slots count: a quarantined or dead slot's outbox may hold
  // garbage that looks like frames forever.
  for (const auto& s : slots_)
    if (s.outbox_live.load(std::memory_order_relaxed) && !s.outbox.empty()) return true;
  return false;
}

void Engine::run() {
  auto& bell = layout_.header().doorbell;
  std::optional<Clock::time_point> stop_deadline;
  std::unique_lock lk(mu_, std::defer_lock);
  // Results are drained here only when no other thread will: nobody waits in
  // collect() or wait_for(), and no collector is away with a batch (or it
  // has been away longer than the hand-off time).
  auto results_are_mine = [&] {
    if (result_waiters_.load() != 0) return false;
    const uint64_t away_since = collector_away_since_ns_.load();
    return away_since == 0 || monotonic_ns() - away_since > kCollectorHandOffNs;
  };
  bool busy = false;  // jobs queued or running, as of the last round
  // Nothing may escape this thread (it would end the process). An error in
  // a round breaks the pool with its reason (every job fails, every waiter
  // wakes) and the pool stops; a second one ends the loop at once.
  bool faulted = false;
  for (;;) {
    try {
      const bool limits = timeouts_used_ || options_.memory_hard_limit || options_.memory_soft_limit;
      Clock::duration tick = limits ? kLimitTick : kEngineTick;
      // No polling here: this thread serves throughput (a caller waiting for
      // one result drains the outboxes itself, in wait_for), and on a machine
      // with few cores a poll takes CPU from the workers and the caller.
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
      if (limits) enforce_limits_locked();
      dispatch_locked();
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
    for (auto& s : slots_) {
      for (auto& job : s.in_flight) complete_locked(job.id, Status::cancelled, 0, {});
      s.in_flight.clear();
      s.state = SlotState::dead;
      s.outbox_live.store(false);
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

bool Engine::unfinished_locked(uint64_t job_id) const {
  if (pending_ids_.count(job_id)) return true;
  return std::any_of(slots_.begin(), slots_.end(), [&](const Slot& s) {
    return std::any_of(s.in_flight.begin(), s.in_flight.end(), [&](const Job& j) { return j.id == job_id; });
  });
}

bool Engine::idle_locked() const {
  if (!pending_ids_.empty()) return false;
  return std::all_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.in_flight.empty(); });
}

void Engine::handle_events_locked() {
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
        log_locked(LogLevel::debug, worker_name(e.slot) + " started");
        if (s.quarantined) kill_worker(s.pidfd, s.pid);  // its rings went bad before it started
        break;
      case ProcessEvent::Type::spawn_failed:
        // A launcher that gave up says why (its failed event broke the pool
        // already); on a broken pool the slot just stays empty.
        if (!e.reason.empty() && !broken_) fail_everything_locked(e.reason);
        if (broken_) {
          s.state = SlotState::dead;
          s.outbox_live.store(false);
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

void Engine::start_slot_locked(uint32_t slot) {
  Slot& s = slots_[slot];
  if (!check_header_locked()) {  // no new worker could attach: the pool broke
    s.state = SlotState::dead;
    s.outbox_live.store(false);
    return;
  }
  layout_.reset_slot(slot);
  s.quarantined = false;
  s.jobs_forgotten = false;
  s.outbox_live.store(true);
  s.state = SlotState::starting;
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
      s.outbox_live.store(false);
      const std::string reason =
          std::string("the pool's initializer could not be handed to a new worker: ") + e.what();
      log_locked(LogLevel::error, reason);
      if (!broken_) fail_everything_locked(reason);
      return;
    }
  }
  supervisor_->request_spawn(slot);
}

void Engine::handle_exit_locked(uint32_t slot, pid_t pid, int wait_status) {
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
  // An exit nobody could see (SIGCHLD ignored) was clean if the worker had been told to exit.
  const bool clean = wait_status == kExitStatusUnknown
                         ? s.retired || s.state == SlotState::stopping
                         : WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
  for (auto it = s.in_flight.rbegin(); it != s.in_flight.rend(); ++it) {
    Job& job = *it;
    // Only the job that was running is to blame; the ones queued behind it go
    // back to the front of the queue untouched.
    if (job.id == running && s.kill_reason && s.kill_reason->job_id == job.id) {
      complete_locked(job.id, s.kill_reason->status, 0, s.kill_reason->message);
      continue;
    }
    if (job.id == running) {
      if (job.retries_left == 0) {
        complete_locked(job.id, Status::worker_lost, 0,
                        "worker " + std::to_string(slot) + " (pid " + std::to_string(pid) + ") " +
                            describe_exit(wait_status) + " while running this task");
        continue;
      }
      --job.retries_left;
      ++stats_.retried;
    }
    pending_ids_.insert(job.id);
    pending_.push_front(std::move(job));
  }
  s.in_flight.clear();
  if (!clean) {
    ++stats_.workers_lost;
    if (!quarantined && running == 0 && s.completed == 0) ++failures_without_progress_;
    if (!s.kill_reason && !stopping_ && !quarantined)
      log_locked(LogLevel::warning, "worker " + std::to_string(slot) + " (pid " + std::to_string(pid) + ") " +
                                        describe_exit(wait_status) + "; starting a replacement");
  } else {
    log_locked(LogLevel::debug, "worker " + std::to_string(slot) + " (pid " + std::to_string(pid) + ") exited");
  }
  s.kill_reason.reset();
  s.state = SlotState::dead;
  s.outbox_live.store(false);
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

void Engine::drain_outboxes_locked() {
  for (uint32_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].state != SlotState::dead && !slots_[i].quarantined) drain_outbox_locked(i);
}

void Engine::drain_outbox_locked(uint32_t slot) {
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
    std::string fault;
    bool ours = true;  // a result for the job this worker runs
    switch (h.kind) {
      case Kind::result:
        if (!proto::is_worker_status(h.tag)) {
          fault = "a result with status " + std::to_string(h.tag);
        } else if (s.in_flight.empty() || s.in_flight.front().id != h.id) {
          // A worker runs its jobs in order: a result is always for the oldest it holds.
          if (s.jobs_forgotten)
            ours = false;  // failed over already (a broken pool): drop, never deliver twice
          else
            fault = "a result for job " + std::to_string(h.id) +
                    (s.in_flight.empty() ? std::string(" while it holds no job")
                                         : ", whose oldest job is " + std::to_string(s.in_flight.front().id));
        }
        break;
      case Kind::init_failed:
      case Kind::inbox_corrupt:
        if (h.tag != 0 || h.id != 0 || h.arg != 0 || (spilled && h.kind == Kind::inbox_corrupt))
          fault = "a report (kind " + std::to_string(static_cast<uint32_t>(h.kind)) + ") with stray header fields";
        else if (h.kind == Kind::init_failed && s.completed != 0)
          fault = "a report of a failed initializer after it finished tasks";
        break;
      default:
        fault = "a frame of unknown kind " + std::to_string(static_cast<uint32_t>(h.kind));
    }
    if (fault.empty() && spilled && !is_spill_name(payload, pid_))
      fault = "a spilled payload whose " + std::to_string(payload.size()) +
              "-byte name is not one of this pool's (shoal-" + std::to_string(pid_) + "-<16 hex digits>)";
    if (!fault.empty()) {
      corrupt_slot_locked(slot, worker_name(slot) + "'s outbox held " + fault);
      return;
    }
    if (!ours) {
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
    if (options_.memory_soft_limit && s.state == SlotState::alive && s.pid > 0) {
      const uint64_t rss = resident_bytes(s.pid);
      if (rss > options_.memory_soft_limit) {
        log_locked(LogLevel::info, worker_name(slot) + " uses " + mib(rss) + ", over the soft limit of " +
                                       mib(options_.memory_soft_limit) + "; replacing it after its current work");
        retire_locked(s);
      }
    }
  }
}

void Engine::corrupt_slot_locked(uint32_t slot, const std::string& what) {
  Slot& s = slots_[slot];
  if (s.quarantined) return;
  s.quarantined = true;
  s.outbox_live.store(false);
  kill_worker(s.pidfd, s.pid);  // one not started yet is killed once it is (handle_events_locked)
  const bool replaced = !stopping_ && !broken_;
  const std::string why = "the pool's shared memory was corrupted: " + what +
                          (replaced ? "; the worker was killed and is being replaced" : "; the worker was killed");
  log_locked(LogLevel::warning, why);
  // Any of its jobs may have run (a garbled frame may have been its result),
  // and none will finish now: each is retried if it may be, else it fails.
  for (auto it = s.in_flight.rbegin(); it != s.in_flight.rend(); ++it) {
    Job& job = *it;
    if (s.kill_reason && s.kill_reason->job_id == job.id) {
      complete_locked(job.id, s.kill_reason->status, 0, s.kill_reason->message);
    } else if (job.retries_left > 0 && !stopping_) {
      --job.retries_left;
      ++stats_.retried;
      pending_ids_.insert(job.id);
      pending_.push_front(std::move(job));
    } else {
      complete_locked(job.id, Status::worker_lost, 0, why);
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

bool Engine::check_header_locked() {
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

void Engine::spilled_payload_lost_locked(uint32_t slot, const FrameHeader& h, const std::string& name,
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

void Engine::thread_fault_locked(const char* thread, const std::string& what) noexcept {
  try {
    const std::string reason = std::string("internal error on the pool's ") + thread + " thread (" + what +
                               "); the pool is broken and cannot run tasks";
    log_locked(LogLevel::error, reason);
    if (!broken_) fail_everything_locked(reason);
  } catch (...) {  // out of memory even for the reason: at least take no new work
    closing_ = true;
  }
}

void Engine::inject_fault_for_testing(TestFault fault) {
  switch (fault) {
    case TestFault::lose_next_spilled_result: {
      std::lock_guard lk(mu_);
      lose_next_spill_ = true;
      return;
    }
    case TestFault::engine_thread_throws:
      throw_next_round_.store(true);
      {
        std::lock_guard lk(mu_);
        events_pending_ = true;  // so the engine thread wakes now, whatever it sleeps on
      }
      wake_engine_thread();
      return;
    case TestFault::supervisor_thread_throws:
      supervisor_->inject_fault_for_testing();
      return;
  }
}

void Engine::retire_locked(Slot& s) {
  s.inbox.close();  // it finishes what it holds, exits, and the slot is refilled
  s.retired = true;
}

std::string Engine::worker_name(uint32_t slot) const {
  return "worker " + std::to_string(slot) + " (pid " + std::to_string(slots_[slot].pid) + ")";
}

void Engine::log_locked(LogLevel level, std::string message) {
  completions_.push_back(Completion{0, Status::log, static_cast<uint64_t>(level), std::move(message)});
}

void Engine::enforce_limits_locked() {
  const uint64_t now = monotonic_ns();
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    if (s.state != SlotState::alive || s.pid <= 0 || s.kill_reason || s.in_flight.empty()) continue;
    const uint64_t running = layout_.status(i).running_job.load();
    if (running == 0) continue;
    auto job = std::find_if(s.in_flight.begin(), s.in_flight.end(), [&](const Job& j) { return j.id == running; });
    if (job == s.in_flight.end()) continue;
    const uint64_t started = layout_.status(i).started_ns.load();
    if (job->timeout_ns && started && now > started && now - started > job->timeout_ns) {
      char limit[32];
      std::snprintf(limit, sizeof limit, "%.3g s", double(job->timeout_ns) / 1e9);
      std::string why = "the task ran longer than its time limit of " + std::string(limit) + "; " + worker_name(i) +
                        " was stopped and replaced";
      log_locked(LogLevel::warning, why);
      s.kill_reason = KillReason{running, Status::timed_out, why};
      kill_worker(s.pidfd, s.pid);
      continue;
    }
    if (options_.memory_hard_limit) {
      const uint64_t rss = resident_bytes(s.pid);
      if (rss > options_.memory_hard_limit) {
        std::string why = "the task drove " + worker_name(i) + " to " + mib(rss) + " of resident memory, over the limit of " +
                          mib(options_.memory_hard_limit) + " (max_memory_per_worker); the worker was killed and replaced";
        log_locked(LogLevel::warning, why);
        s.kill_reason = KillReason{running, Status::memory_exceeded, why};
        kill_worker(s.pidfd, s.pid);
      }
    }
  }
}

std::size_t Engine::prefetch_depth() const {
  // Long jobs go one at a time (a queued job behind a long one could have run
  // elsewhere); tiny jobs are queued deeper, up to about kPrefetchNs of work,
  // so a worker never waits for the parent.
  if (run_ns_ewma_ == 0) return 2;  // nothing measured yet: assume jobs may be long
  if (run_ns_ewma_ >= kPrefetchNs) return 1;
  return std::clamp<std::size_t>(static_cast<std::size_t>(kPrefetchNs / run_ns_ewma_), 2, kMaxPrefetch);
}

void Engine::dispatch_locked() {
  if (pending_.empty()) return;  // the common case after a drain: nothing to hand out
  const std::size_t depth = prefetch_depth();
  std::vector<bool> full(slots_.size(), false);
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
      complete_locked(pending_.front().id, Status::broken, 0, message);
      sent = true;
    }
    if (!sent) {
      full[best] = true;
      continue;
    }
    pending_ids_.erase(pending_.front().id);
    pending_.pop_front();
  }
}

bool Engine::send_job_locked(uint32_t slot, Job& job) {
  Slot& s = slots_[slot];
  while (!s.functions_to_drop.empty()) {
    if (!push_frame_locked(slot, FrameHeader{Kind::drop_function, 0, s.functions_to_drop.back(), 0}, nullptr))
      return false;
    s.functions_to_drop.pop_back();
  }
  if (!s.known_functions.count(job.fn_id)) {
    auto fn = functions_.find(job.fn_id);
    if (fn == functions_.end()) {
      complete_locked(job.id, Status::broken, 0, "the task's function was dropped before it ran");
      return true;  // handled: the caller removes it from the queue
    }
    if (!push_frame_locked(slot, FrameHeader{Kind::define_function, 0, job.fn_id, 0}, &fn->second)) return false;
    s.known_functions.insert(job.fn_id);
  }
  if (!push_frame_locked(slot, FrameHeader{Kind::job, job.tag, job.id, job.fn_id}, &job.payload)) return false;
  ++s.dispatched;
  s.in_flight.push_back(std::move(job));
  // A worker past its budget is retired by closing its inbox: it finishes what
  // it holds, then exits, and the slot gets a fresh worker.
  if (options_.max_tasks_per_child && s.dispatched >= options_.max_tasks_per_child) retire_locked(s);
  return true;
}

bool Engine::push_frame_locked(uint32_t slot, FrameHeader h, Blob* payload) {
  Slot& s = slots_[slot];
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

void Engine::complete_locked(uint64_t id, Status status, uint64_t run_ns, std::string payload) {
  ++stats_.completed;
  completions_.push_back(Completion{id, status, run_ns, std::move(payload)});
}

void Engine::fail_everything_locked(const std::string& reason) {
  broken_ = reason;
  is_broken_ = true;
  closing_ = true;
  for (auto& job : pending_)
    if (pending_ids_.count(job.id)) complete_locked(job.id, Status::broken, 0, reason);
  pending_.clear();
  pending_ids_.clear();
  for (auto& s : slots_) {
    for (auto& job : s.in_flight) complete_locked(job.id, Status::broken, 0, reason);
    s.in_flight.clear();
    s.jobs_forgotten = true;
  }
  announce_completions();  // waiters for any of these jobs
}

}  // namespace shoal
