#pragma once
// The pool's engine, in the parent process. It keeps the pending jobs in a
// central queue and hands them to workers on demand: each worker holds only a
// few jobs in its inbox ring, so the engine always knows which jobs sit with
// which worker, and a slow job never holds back the others. The threads that
// take results (collect(), wait_for()) drain the workers' outboxes and refill
// their inboxes themselves; the engine thread reacts to worker deaths and
// limits, and drains only when no such thread will.
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "shoal/base/deadline.hpp"
#include "shoal/ipc/notifier.hpp"
#include "shoal/proc/launcher.hpp"
#include "shoal/proc/supervisor.hpp"
#include "shoal/wire/blob.hpp"
#include "shoal/engine/pool_layout.hpp"
#include "shoal/wire/protocol.hpp"
#include "shoal/base/spinning_mutex.hpp"

namespace shoal {

struct EngineOptions {
  uint32_t workers = 1;
  bool fork_server = true;
  // The fork server's argv, or each spawned worker's (the slot is appended);
  // the pool segment's name replaces any "{segment}" argument.
  std::vector<std::string> argv;
  std::size_t ring_bytes = 1 << 20;
  std::string init_payload;          // pickled (initializer, initargs); empty for none
  uint64_t max_tasks_per_child = 0;  // 0: workers live as long as the pool
  ForkServerHandle fork_server_handle;  // a fork server the caller started, to adopt
  // Resident memory per worker: past the hard limit the running job is killed
  // (memory_exceeded); past the soft limit after a job the worker is replaced.
  uint64_t memory_hard_limit = 0;  // bytes, 0 = none
  uint64_t memory_soft_limit = 0;  // bytes, 0 = none
};

// Python's logging levels, for the log records the engine emits.
enum class LogLevel : uint64_t { debug = 10, info = 20, warning = 30, error = 40 };

struct Completion {
  uint64_t job_id;
  proto::Status status;
  uint64_t run_ns;
  std::string payload;
};

// Faults a test can provoke (Engine::inject_fault_for_testing).
enum class TestFault {
  lose_next_spilled_result,  // the next spilled frame's segment is removed before the parent reads it
  engine_thread_throws,      // the engine thread's next round throws
  supervisor_thread_throws,  // the supervisor thread's next round throws
};

struct EngineStats {
  uint64_t submitted = 0, completed = 0, pending = 0, in_flight = 0;
  uint64_t workers_started = 0, workers_lost = 0, retried = 0;
};

class Engine {
 public:
  explicit Engine(EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const std::string& segment_name() const { return layout_.segment().name(); }

  // Registers a pickled callable; workers receive it once, before their first job using it.
  uint64_t define_function(std::string pickled);
  void drop_function(uint64_t fn_id);

  // Queues a job; `retries` is how often it is re-run if its worker dies under it.
  // Throws ClosedError after shutdown().
  uint64_t submit(uint64_t fn_id, uint32_t tag, std::string payload, int retries = 0);
  // The same with an id the caller chose (unique, non-zero), so it can file
  // its bookkeeping for the job before the job can possibly finish.
  // `timeout_s` > 0 limits the job's run time: past it the worker is killed
  // and replaced, and the job ends as timed_out.
  void submit_as(uint64_t job_id, uint64_t fn_id, uint32_t tag, std::string payload, int retries = 0,
                 double timeout_s = 0);
  // The same, unless the engine's lock stays taken for longer than a short
  // spin: then it returns false and leaves `payload` alone (the bindings then
  // let go of the GIL and call submit_as, which may block).
  bool try_submit_as(uint64_t job_id, uint64_t fn_id, uint32_t tag, std::string& payload, int retries = 0,
                     double timeout_s = 0);
  // Removes a job that no worker holds yet; false if it already left the queue.
  bool cancel(uint64_t job_id);
  // Whether the job still waits in the queue (no worker holds it yet): the
  // stdlib's "pending" as against "running".
  bool queued(uint64_t job_id) const;

  // Waits for finished jobs and moves them all into `out`. Returns false once
  // the engine has stopped and nothing is left to collect.
  bool collect(std::vector<Completion>& out, const Deadline& deadline);

  // Waits for job `job_id` alone and moves its completion into `out`, where
  // collect() never sees it. The calling thread drains the workers' outboxes
  // itself (polling first, see AdaptiveSpin), so a result reaches it without
  // waking the engine thread or a collector: the low-latency path of a caller
  // blocked on one result. Returns false when the job is not waiting to finish
  // (unknown, or already collected), true otherwise; `out` stays empty if the
  // deadline passed first.
  bool wait_for(uint64_t job_id, const Deadline& deadline, std::optional<Completion>& out);

  // Refuses new jobs; cancels the queued ones if asked; workers exit once the
  // rest is done. With wait, returns when every worker is gone.
  void shutdown(bool wait, bool cancel_pending);
  // Kills every worker now; queued and running jobs end as cancelled.
  void terminate();

  // The pickled exception that broke the pool (a failing initializer), if any.
  std::optional<std::string> broken() const;
  std::vector<pid_t> worker_pids() const;
  EngineStats stats() const;
  uint32_t workers() const { return static_cast<uint32_t>(slots_.size()); }
  // Test only (reached from Python as Engine._inject_fault): provokes one
  // fault, to show that it fails the jobs it concerns, or breaks the pool,
  // with a clear reason and without ending the process.
  void inject_fault_for_testing(TestFault fault);
  // The largest payload that travels inside a ring frame rather than spilled
  // into a segment of its own (which costs a mapping and page faults).
  std::size_t inline_payload_limit() const { return proto::inline_payload_limit(slots_.front().inbox.max_frame()); }

 private:
  struct Job {
    uint64_t id;
    uint64_t fn_id;
    uint32_t tag;
    int retries_left;
    Blob payload;
    uint64_t timeout_ns = 0;
  };
  // Why the engine killed a worker, so its exit is reported as that, not as a crash.
  struct KillReason {
    uint64_t job_id;
    proto::Status status;
    std::string message;
  };
  enum class SlotState { starting, alive, stopping, dead };
  struct Slot {
    SlotState state = SlotState::dead;
    pid_t pid = 0;
    // Every signal to this worker goes through its pidfd: by the time the
    // engine acts, the launcher may have reaped the worker and its pid may name
    // another process. Held from the spawned event until the exit is handled.
    SharedPidfd pidfd;
    SpscRing inbox, outbox;
    std::deque<Job> in_flight;
    std::unordered_set<uint64_t> known_functions;
    std::vector<uint64_t> functions_to_drop;
    uint64_t dispatched = 0;  // this incarnation, for max_tasks_per_child
    uint64_t completed = 0;   // this incarnation
    std::optional<KillReason> kill_reason;
    bool retired = false;  // inbox closed: no more jobs for this incarnation
    bool needs_init = true;
    // Its rings or its frames were found corrupt: the worker is being killed,
    // its jobs were failed over, and its rings are left alone until it exits.
    bool quarantined = false;
    // in_flight was emptied while the worker lived (a broken pool, terminate):
    // results for jobs it no longer holds are expected, and dropped.
    bool jobs_forgotten = false;
    // Whether its outbox is drained (a worker is there or starting, and it is
    // not quarantined); mirrors state and quarantined for readers without mu_.
    std::atomic<bool> outbox_live{false};
  };

  void run();
  void on_process_event(const ProcessEvent& e);
  void handle_events_locked();
  void drain_outboxes_locked();  // every live worker's
  void drain_outbox_locked(uint32_t slot);
  // A frame from `slot` whose spilled payload (segment `name`) could not be read.
  void spilled_payload_lost_locked(uint32_t slot, const proto::FrameHeader& h, const std::string& name,
                                   const std::string& what);
  // An unexpected error on one of the pool's own threads: logged, and the
  // pool breaks with it (every waiter is woken with the reason).
  void thread_fault_locked(const char* thread, const std::string& what) noexcept;
  // Garbage found in a slot's rings or frames (`what`): the worker is killed and
  // replaced, its jobs are retried or fail with worker_lost; the pool goes on.
  void corrupt_slot_locked(uint32_t slot, const std::string& what);
  // Compares the pool's header with what was created; a corrupt one breaks the
  // pool. Returns whether it is intact.
  bool check_header_locked();
  void handle_exit_locked(uint32_t slot, pid_t pid, int wait_status);
  void start_slot_locked(uint32_t slot);
  void dispatch_locked();
  bool send_job_locked(uint32_t slot, Job& job);
  bool push_frame_locked(uint32_t slot, proto::FrameHeader h, Blob* payload);
  std::size_t prefetch_depth() const;
  void complete_locked(uint64_t id, proto::Status status, uint64_t run_ns, std::string payload);
  void log_locked(LogLevel level, std::string message);
  void enforce_limits_locked();
  void retire_locked(Slot& s);
  std::string worker_name(uint32_t slot) const;
  void fail_everything_locked(const std::string& reason);
  bool idle_locked() const;
  bool unfinished_locked(uint64_t job_id) const;
  void submit_locked(uint64_t job_id, uint64_t fn_id, uint32_t tag, std::string payload, int retries,
                     double timeout_s);
  bool any_outbox_readable() const;
  // Rings the doorbell for completions that collect() should take (ones no
  // ring from a worker announced: cancels, deaths, another thread's drain).
  void announce_completions();
  bool collectable_locked() const;  // some completion is not awaited by a wait_for() caller
  void wake_engine_thread();

  // A thread in collect() or wait_for() (for `job`, if given), from
  // construction (lock held) to destruction.
  class ResultWaiter {
   public:
    ResultWaiter(Engine& engine, std::unique_lock<SpinningMutex>& lock, std::optional<uint64_t> job = std::nullopt);
    ~ResultWaiter();
    ResultWaiter(const ResultWaiter&) = delete;
    ResultWaiter& operator=(const ResultWaiter&) = delete;

   private:
    Engine& engine_;
    std::unique_lock<SpinningMutex>& lock_;
    std::optional<uint64_t> job_;
  };

  EngineOptions options_;
  PoolLayout layout_;
  std::vector<Slot> slots_;
  std::unique_ptr<Supervisor> supervisor_;

  mutable SpinningMutex mu_;
  std::deque<Job> pending_;
  std::unordered_set<uint64_t> pending_ids_;
  std::unordered_map<uint64_t, Blob> functions_;
  uint64_t next_job_id_ = 1;
  uint64_t next_fn_id_ = 1;
  bool closing_ = false;       // no new jobs
  bool stopping_ = false;      // workers told to exit
  bool stopped_ = false;       // engine thread finished
  std::optional<std::string> broken_;
  std::atomic<bool> is_broken_{false};  // broken_ has a value; readable without mu_
  uint32_t failures_without_progress_ = 0;
  uint32_t corruptions_without_progress_ = 0;  // slots found corrupt since the last result
  bool header_corrupt_ = false;
  const pid_t pid_ = ::getpid();  // this process: spilled payloads for it carry its pid
  // The launcher or supervisor failed: no exit will be reported any more.
  bool launcher_failed_ = false;
  bool lose_next_spill_ = false;                // TestFault::lose_next_spilled_result
  std::atomic<bool> throw_next_round_{false};  // TestFault::engine_thread_throws
  double run_ns_ewma_ = 0;
  std::atomic<bool> timeouts_used_{false};  // some job had a time limit: check running jobs often
  EngineStats stats_;

  std::vector<ProcessEvent> events_;  // guarded by mu_
  std::atomic<bool> events_pending_{false};

  // Finished jobs not yet taken. collect() and wait_for() callers sleep on
  // the doorbell: results ring it as workers publish them, and every other
  // completion (a cancel, a death, a broken pool) is announced on it.
  std::vector<Completion> completions_;  // guarded by mu_
  std::vector<uint64_t> awaited_;        // jobs a wait_for() caller waits for; guarded by mu_
  std::atomic<int> result_waiters_{0};   // threads in collect() or wait_for(): they drain the outboxes
  std::atomic<int> job_waiters_{0};      // threads in wait_for()
  std::atomic<bool> left_for_collector_{false};  // announced completions collect() has not taken yet
  std::atomic<uint64_t> collector_away_since_ns_{0};  // a collector left with a batch then (0: none away)
  uint64_t last_collected_ns_ = 0;                    // when collect() last returned results; guarded by mu_
  Notifier engine_bell_;  // wakes the engine thread when the workers' doorbell is not for it

  std::thread thread_;
};

}  // namespace shoal
