#pragma once
// The engine's state and the operations on it, behind the public Engine
// (cpp/include/shoal/engine/engine.hpp). One idea per source file:
//
//   engine.cpp          construction, the public API's bookkeeping (functions,
//                       cancel, shutdown, terminate, stats)
//   dispatch.cpp        central queue -> worker inboxes (submit, prefetch depth)
//   outbox.cpp          worker outboxes -> completions (drains, spilled results)
//   frames.cpp          the protocol's rules for a frame from a worker
//   completions.cpp     completions -> callers (collect, wait_for, announcements)
//   slots.cpp           worker slots: start, process events, exits, retirement
//   faults.cpp          corruption, thread faults, a broken pool
//   limits.cpp          time and memory limits
//   engine_thread.cpp   the engine thread's loop and the final stop
//
// Threads: callers (submit, collect, wait_for, shutdown, ...), the engine
// thread (run), and the supervisor thread (on_process_event). One lock, mu_,
// guards every field that changes after construction except the atomics,
// whose comments say who writes them; Clang's thread-safety analysis checks
// it (make thread-safety). Functions named *_locked are called with mu_ held
// (SHOAL_REQUIRES); the public operations take it themselves (SHOAL_EXCLUDES).
// Invariants under mu_:
//  * a job is in exactly one place: pending_ (with its id in pending_ids_),
//    one slot's in_flight, spilled_ or a local list of a thread reading its
//    spilled result (its id in receiving_ in both cases), or, once ended,
//    completions_;
//  * a slot's in_flight is in the order its inbox received the jobs;
//  * SlotWatch::live == (state != dead && !quarantined), stored together.
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "shoal/base/deadline.hpp"
#include "shoal/base/mutex.hpp"
#include "shoal/base/spinning_mutex.hpp"
#include "shoal/base/thread_annotations.hpp"
#include "shoal/engine/engine.hpp"
#include "shoal/engine/pool_layout.hpp"
#include "shoal/ipc/notifier.hpp"
#include "shoal/obs/stats_block.hpp"
#include "shoal/proc/supervisor.hpp"
#include "shoal/wire/blob.hpp"
#include "shoal/wire/protocol.hpp"
#include "engine/job.hpp"
#include "engine/slot.hpp"

namespace shoal {

// A result whose frame was taken from its worker's outbox under the lock and
// whose payload, spilled into a segment of its own, is copied out of it
// without the lock (outbox.cpp). Its job has left the slot's in_flight: the
// worker did finish it, and the next result from the worker is for the job
// after it.
struct SpilledResult {
  uint32_t slot;
  uint64_t incarnation;  // the slot's when the frame was taken
  pid_t pid;             // its worker's, for messages
  proto::FrameHeader h;  // tag without proto::kSpilled
  std::string payload;   // the segment's name; once read, the payload
  Job job;
  // Set by the read: what went wrong, and whether the segment was not a
  // spilled payload at all (corruption) rather than gone or unreadable.
  std::string error;
  bool corrupt = false;
};

// Shared by several of the engine's files.
using Clock = std::chrono::steady_clock;
// Workers that die before finishing anything this many times in a row (per
// worker slot) mean the pool cannot work: a broken interpreter, a bad import.
// Corruption that keeps coming is bounded the same way.
inline constexpr uint32_t kStartupFailuresPerSlot = 3;
// With time or memory limits in force, running jobs are checked this often;
// also the safety-net slice of a wait_for() caller's sleep.
inline constexpr auto kLimitTick = std::chrono::milliseconds(10);

uint64_t monotonic_ns();

class EngineImpl {
 public:
  explicit EngineImpl(EngineOptions options);
  ~EngineImpl();
  EngineImpl(const EngineImpl&) = delete;
  EngineImpl& operator=(const EngineImpl&) = delete;

  // ---- the public API (Engine forwards each call) -------------------------
  const std::string& segment_name() const { return layout_.segment().name(); }
  const std::string& stats_name() const { return stats_block_->name(); }
  const std::shared_ptr<obs::StatsBlock>& stats_block() const { return stats_block_; }
  uint32_t workers() const { return layout_.slots(); }
  std::size_t inline_payload_limit() const { return inline_payload_limit_; }
  uint64_t define_function(std::string pickled) SHOAL_EXCLUDES(mu_);
  void drop_function(uint64_t fn_id) SHOAL_EXCLUDES(mu_);
  uint64_t submit(uint64_t fn_id, uint32_t tag, std::string payload, int retries, double timeout_s, uint64_t owner)
      SHOAL_EXCLUDES(mu_);
  std::optional<uint64_t> try_submit(uint64_t fn_id, uint32_t tag, std::string& payload, int retries,
                                     double timeout_s, uint64_t owner) SHOAL_EXCLUDES(mu_);
  bool cancel(uint64_t job_id, uint64_t* owner) SHOAL_EXCLUDES(mu_);
  bool queued(uint64_t job_id) const SHOAL_EXCLUDES(mu_);
  // completions.cpp
  bool collect(std::vector<Completion>& out, const Deadline& deadline) SHOAL_EXCLUDES(mu_);
  bool wait_for(uint64_t job_id, const Deadline& deadline, std::optional<Completion>& out) SHOAL_EXCLUDES(mu_);
  void shutdown(bool wait, bool cancel_pending) SHOAL_EXCLUDES(mu_);
  void terminate() SHOAL_EXCLUDES(mu_);
  std::optional<std::string> broken() const SHOAL_EXCLUDES(mu_);
  std::vector<pid_t> worker_pids() const SHOAL_EXCLUDES(mu_);
  EngineStats stats() const SHOAL_EXCLUDES(mu_);
  void inject_fault_for_testing(TestFault fault) SHOAL_EXCLUDES(mu_);

 private:
  // ---- dispatch.cpp: central queue -> worker inboxes ------------------------
  // `blocks`: the payload's arena references, read before the lock was taken.
  uint64_t submit_locked(uint64_t fn_id, uint32_t tag, std::string payload, int retries, double timeout_s,
                         uint64_t owner, std::vector<packed::Reference> blocks) SHOAL_REQUIRES(mu_);
  void dispatch_locked() SHOAL_REQUIRES(mu_);
  bool send_job_locked(uint32_t slot, Job& job) SHOAL_REQUIRES(mu_);
  bool push_frame_locked(uint32_t slot, proto::FrameHeader h, Blob* payload) SHOAL_REQUIRES(mu_);
  // Tells the slot's worker to forget the functions dropped since its last
  // frame; false if its inbox is full (they stay queued for its next job).
  bool send_function_drops_locked(uint32_t slot) SHOAL_REQUIRES(mu_);
  // The cpu_hint() of the worker that holds `job_id` (0: none, or not known).
  uint32_t cpu_of_job_locked(uint64_t job_id) const SHOAL_REQUIRES(mu_);
  std::size_t prefetch_depth() const SHOAL_REQUIRES(mu_);

  // ---- outbox.cpp: worker outboxes -> completions -------------------------
  void drain_outboxes_locked() SHOAL_REQUIRES(mu_);  // every live worker's
  void drain_outbox_locked(uint32_t slot) SHOAL_REQUIRES(mu_);
  // A frame from `slot` whose spilled payload (segment `name`) could not be read.
  // `job`: the frame's (none for an initializer's report).
  void spilled_payload_lost_locked(const std::string& worker, const proto::FrameHeader& h, std::optional<Job> job,
                                   const std::string& name, const std::string& what) SHOAL_REQUIRES(mu_);
  // Whether some live slot's outbox holds a frame; without the lock (a hint).
  bool any_outbox_readable() const;
  // What the drains left for outside the lock: the spilled results they took
  // are read and completed, the workers that finished jobs have their
  // resident size compared with the soft memory limit. Releases mu_ while it
  // reads, and holds it again when it returns: a caller must not keep
  // anything it read under mu_ across this call. Every thread that drains
  // calls it before it lets go of mu_ for good. Costs two loads when there
  // is nothing to do.
  void finish_drains_locked() SHOAL_REQUIRES(mu_) {
    if (!spilled_.empty()) read_spilled_results_locked();
    if (rss_checks_due_) check_soft_limits_locked();
  }
  // What a thread that takes results does each round: drain the outboxes,
  // finish what the drains left (above), refill the inboxes.
  void take_results_locked() SHOAL_REQUIRES(mu_) {
    drain_outboxes_locked();
    finish_drains_locked();
    dispatch_locked();
  }
  void read_spilled_results_locked() SHOAL_REQUIRES(mu_);
  void complete_spilled_locked(SpilledResult& r) SHOAL_REQUIRES(mu_);
  // A job whose worker can no longer deliver its result (its shared memory
  // went bad) and that no slot holds: retried if it may be, else failed with `why`.
  void fail_over_locked(Job&& job, const std::string& why) SHOAL_REQUIRES(mu_);
  // A job that did not finish where it was sent: back to the front of the
  // queue, retried if it may be (not while stopping), else failed with `why`.
  // A map chunk that sent results ahead is never re-run whole: it ends with
  // them (Completion::pieces), and its submitter re-runs the rest.
  void retry_or_fail_locked(Job&& job, const std::string& why) SHOAL_REQUIRES(mu_);
  // A job back to the front of the central queue, to be dispatched again.
  void requeue_locked(Job&& job) SHOAL_REQUIRES(mu_) {
    pending_.push_front(std::move(job));
    pending_ids_.emplace(pending_.front().id, &pending_.front());
  }

  // ---- completions.cpp: completions -> callers -----------------------------
  // The end of `job`: its Completion (with its owner and the results it sent
  // ahead) for the callers; its argument's arena references are left for
  // release_ended_arguments(). `failed_item`: see Completion.
  void complete_locked(Job&& job, proto::Status status, uint64_t run_ns, std::string payload,
                       uint64_t failed_item = 0) SHOAL_REQUIRES(mu_);
  // Drops the arena references of ended jobs' arguments (taken under mu_ by
  // the caller); an error is logged, the jobs' outcomes stand.
  void release_ended_arguments(std::vector<std::vector<packed::Reference>> ended) SHOAL_EXCLUDES(mu_);
  // `worker` (a slot, -1: none) and `job` (0: none) are what the record is about.
  void log_locked(LogLevel level, std::string message, int32_t worker = -1, uint64_t job = 0) SHOAL_REQUIRES(mu_);
  // Rings the doorbell for completions that collect() should take (ones no
  // ring from a worker announced: cancels, deaths, another thread's drain).
  void announce_completions();
  bool collectable_locked() const SHOAL_REQUIRES(mu_);  // some completion is not awaited by a wait_for() caller
  void wake_engine_thread();
  bool idle_locked() const SHOAL_REQUIRES(mu_);
  bool unfinished_locked(uint64_t job_id) const SHOAL_REQUIRES(mu_);

  // ---- slots.cpp: worker slots ------------------------------------------------
  void on_process_event(const ProcessEvent& e) SHOAL_EXCLUDES(mu_);  // the supervisor thread
  void handle_events_locked() SHOAL_REQUIRES(mu_);
  void start_slot_locked(uint32_t slot) SHOAL_REQUIRES(mu_);
  void handle_exit_locked(uint32_t slot, pid_t pid, int wait_status) SHOAL_REQUIRES(mu_);
  void retire_locked(Slot& s) SHOAL_REQUIRES(mu_);
  std::string worker_name(uint32_t slot) const SHOAL_REQUIRES(mu_);
  static std::string worker_name(uint32_t slot, pid_t pid);

  // ---- faults.cpp: what breaks a slot or the pool ----------------------------
  // An unexpected error on one of the pool's own threads: logged, and the
  // pool breaks with it (every waiter is woken with the reason).
  void thread_fault_locked(const char* thread, const std::string& what) noexcept SHOAL_REQUIRES(mu_);
  // Garbage found in a slot's rings or frames (`what`): the worker is killed and
  // replaced, its jobs are retried or fail with worker_lost; the pool goes on.
  void corrupt_slot_locked(uint32_t slot, const std::string& what) SHOAL_REQUIRES(mu_);
  // Compares the pool's header with what was created; a corrupt one breaks the
  // pool. Returns whether it is intact.
  bool check_header_locked() SHOAL_REQUIRES(mu_);
  void fail_everything_locked(const std::string& reason) SHOAL_REQUIRES(mu_);

  // ---- limits.cpp ----------------------------------------------------------------
  // The engine thread's: kills workers past a time limit, and past the hard
  // memory limit (their sizes read without mu_, which it releases meanwhile).
  void enforce_limits_locked() SHOAL_REQUIRES(mu_);
  // After a job of `slot` finished: its resident size is due for a look.
  void note_finished_job_locked(Slot& s) SHOAL_REQUIRES(mu_) {
    if (options_.memory_soft_limit && s.state == SlotState::alive && s.pid > 0) {
      s.rss_check_due = true;
      rss_checks_due_ = true;
    }
  }
  // Workers past the soft memory limit after a job are retired (sizes read without mu_).
  void check_soft_limits_locked() SHOAL_REQUIRES(mu_);

  // ---- the stats block (engine.cpp) --------------------------------------------
  // Copies the counters into the pool's stats block, for readers in other
  // processes: after every change to them (a few relaxed stores).
  void publish_locked() SHOAL_REQUIRES(mu_);
  // The arena's use, sampled into the stats block (each engine round, each stats()).
  void sample_arena_locked() const SHOAL_REQUIRES(mu_);
  // Trace events of the parent: a job's submit and its dispatch to `slot`.
  void trace_dispatch_locked(const Job& job, uint32_t slot) SHOAL_REQUIRES(mu_);

  // ---- engine_thread.cpp ---------------------------------------------------------
  void run() SHOAL_EXCLUDES(mu_);
  // Results are drained on the engine thread only when no other thread will:
  // nobody waits in collect() or wait_for(), and no collector is away with a
  // batch (or it has been away longer than the hand-off time). Atomics only.
  bool results_are_mine() const;

  // A thread in collect() or wait_for() (for `job`, if given), from
  // construction (lock held) to destruction (completions.cpp).
  class ResultWaiter {
   public:
    ResultWaiter(EngineImpl& engine, UniqueLock<SpinningMutex>& lock, std::optional<uint64_t> job = std::nullopt)
        SHOAL_REQUIRES(engine.mu_);
    ~ResultWaiter();
    ResultWaiter(const ResultWaiter&) = delete;
    ResultWaiter& operator=(const ResultWaiter&) = delete;

   private:
    EngineImpl& engine_;
    UniqueLock<SpinningMutex>& lock_;
    std::optional<uint64_t> job_;
  };

  // ---- fixed at construction ------------------------------------------------------
  const EngineOptions options_;
  // Written by this engine and its workers, read by any process (`shoal top`);
  // its name goes in the pool header, for the workers. Unlinked at the final stop.
  const std::shared_ptr<obs::StatsBlock> stats_block_;
  // SHOAL_STATS=0: the counters are not published (to measure what publishing costs).
  const bool publish_stats_ = !std::getenv("SHOAL_STATS") || std::string_view(std::getenv("SHOAL_STATS")) != "0";
  PoolLayout layout_;  // the engine thread unlinks its name at the end; nothing else changes
  const std::size_t inline_payload_limit_;
  const pid_t pid_ = ::getpid();  // this process: spilled payloads for it carry its pid
  std::unique_ptr<SlotWatch[]> watch_;  // one per slot; see SlotWatch
  std::unique_ptr<Supervisor> supervisor_;

  // ---- guarded by mu_ ---------------------------------------------------------------
  mutable SpinningMutex mu_;
  // The vector is sized at construction and never resized; its elements (every
  // field of every Slot) change only under mu_.
  std::vector<Slot> slots_ SHOAL_GUARDED_BY(mu_);
  // dispatch_locked()'s scratch: the slots whose inbox filled up this round.
  // A member, sized once with slots_: dispatch runs on every submit.
  std::vector<uint8_t> inbox_full_ SHOAL_GUARDED_BY(mu_);
  // The central queue. A job is queued while its id is in pending_ids_,
  // which points at it (pushing and popping at the ends of a deque moves no
  // element); a cancelled one stays in pending_, emptied, until dispatch
  // reaches it.
  std::deque<Job> pending_ SHOAL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, Job*> pending_ids_ SHOAL_GUARDED_BY(mu_);
  // The arena references of jobs that ended (complete_locked), until a thread
  // that takes results drops them outside mu_ (~ResultWaiter).
  std::vector<std::vector<packed::Reference>> ended_arguments_ SHOAL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, Blob> functions_ SHOAL_GUARDED_BY(mu_);
  // The arena references a function's packed pickle holds (a partial's bound
  // array): the engine owns them from define_function() until the function is
  // dropped or the engine ends, as it owns a job's from submit to its end.
  std::unordered_map<uint64_t, std::vector<packed::Reference>> function_blocks_ SHOAL_GUARDED_BY(mu_);
  uint64_t next_job_id_ SHOAL_GUARDED_BY(mu_) = 1;
  uint64_t next_fn_id_ SHOAL_GUARDED_BY(mu_) = 1;
  bool closing_ SHOAL_GUARDED_BY(mu_) = false;   // no new jobs
  bool stopping_ SHOAL_GUARDED_BY(mu_) = false;  // workers told to exit
  bool stopped_ SHOAL_GUARDED_BY(mu_) = false;   // engine thread finished
  std::optional<std::string> broken_ SHOAL_GUARDED_BY(mu_);
  uint32_t failures_without_progress_ SHOAL_GUARDED_BY(mu_) = 0;
  uint32_t corruptions_without_progress_ SHOAL_GUARDED_BY(mu_) = 0;  // slots found corrupt since the last result
  bool header_corrupt_ SHOAL_GUARDED_BY(mu_) = false;
  // The launcher or supervisor failed: no exit will be reported any more.
  bool launcher_failed_ SHOAL_GUARDED_BY(mu_) = false;
  bool lose_next_spill_ SHOAL_GUARDED_BY(mu_) = false;  // TestFault::lose_next_spilled_result
  double run_ns_ewma_ SHOAL_GUARDED_BY(mu_) = 0;
  EngineStats stats_ SHOAL_GUARDED_BY(mu_);
  // From the supervisor thread, for the engine thread.
  std::vector<ProcessEvent> events_ SHOAL_GUARDED_BY(mu_);
  // Finished jobs not yet taken. collect() and wait_for() callers sleep on
  // the doorbell: results ring it as workers publish them, and every other
  // completion (a cancel, a death, a broken pool) is announced on it.
  std::vector<Completion> completions_ SHOAL_GUARDED_BY(mu_);
  std::vector<uint64_t> awaited_ SHOAL_GUARDED_BY(mu_);  // jobs a wait_for() caller waits for
  uint64_t last_collected_ns_ SHOAL_GUARDED_BY(mu_) = 0;  // when collect() last returned results
  // Spilled results taken from the outboxes and not yet read (outbox.cpp).
  std::vector<SpilledResult> spilled_ SHOAL_GUARDED_BY(mu_);
  // The jobs of spilled results not yet completed: in spilled_, or being read
  // by some thread without mu_. The engine does not stop while any is left.
  std::vector<uint64_t> receiving_ SHOAL_GUARDED_BY(mu_);
  bool rss_checks_due_ SHOAL_GUARDED_BY(mu_) = false;  // some Slot::rss_check_due is set

  // ---- the engine thread's alone ----------------------------------------------------
  // Workers whose resident size enforce_limits_locked() reads without mu_;
  // kept to reuse its memory round after round.
  struct MemoryCheck {
    uint32_t slot;
    uint64_t incarnation;
    pid_t pid;
    uint64_t running;  // the job it ran when listed
    uint64_t rss = 0;
  };
  std::vector<MemoryCheck> memory_checks_;

  // ---- atomics, read without mu_ -------------------------------------------------------
  std::atomic<bool> is_broken_{false};         // broken_ has a value (set under mu_)
  std::atomic<bool> throw_next_round_{false};  // TestFault::engine_thread_throws
  std::atomic<bool> timeouts_used_{false};     // some job had a time limit: check running jobs often
  std::atomic<bool> events_pending_{false};    // the engine thread has work besides results
  std::atomic<int> result_waiters_{0};         // threads in collect() or wait_for(): they drain the outboxes
  std::atomic<int> job_waiters_{0};            // threads in wait_for()
  std::atomic<bool> left_for_collector_{false};       // announced completions collect() has not taken yet
  std::atomic<uint64_t> collector_away_since_ns_{0};  // a collector left with a batch then (0: none away)
  Notifier engine_bell_;  // wakes the engine thread when the workers' doorbell is not for it

  std::thread thread_;  // the engine thread, started last in the constructor
};

}  // namespace shoal
