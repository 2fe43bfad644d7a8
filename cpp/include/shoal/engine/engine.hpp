#pragma once
// The pool's engine, in the parent process. It keeps the pending jobs in a
// central queue and hands them to workers on demand: each worker holds only a
// few jobs in its inbox ring, so the engine always knows which jobs sit with
// which worker, and a slow job never holds back the others. The threads that
// take results (collect(), wait_for()) drain the workers' outboxes and refill
// their inboxes themselves; the engine thread reacts to worker deaths and
// limits, and drains only when no such thread will.
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shoal/base/deadline.hpp"
#include "shoal/proc/launcher.hpp"
#include "shoal/wire/protocol.hpp"

namespace shoal::obs {
class StatsBlock;
}

namespace shoal {

class EngineImpl;
class SharedArena;

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
  // Descriptors every worker (and a fork server the engine starts) keeps at
  // the same numbers: the pipes of an initializer's arguments. The caller
  // keeps them open for the engine's life.
  std::vector<int> inherited_fds;
  // Resident memory per worker: past the hard limit the running job is killed
  // (memory_exceeded); past the soft limit after a job the worker is replaced.
  uint64_t memory_hard_limit = 0;  // bytes, 0 = none
  uint64_t memory_soft_limit = 0;  // bytes, 0 = none
  // The arena that jobs' packed arguments were packed into (others are
  // attached by name): the engine drops those references when a job ends.
  std::shared_ptr<SharedArena> arena;
  // Called, in the destructor, for the owner of each job whose end nobody
  // took (its Completion was never collected): the submitter's bookkeeping
  // for it goes too. The destructor's thread calls it.
  std::function<void(uint64_t owner)> drop_owner;
  // What the pool's stats block (shoal/obs/stats_block.hpp) calls it: the
  // surface ("Executor", "Pool") and the user's name for it.
  std::string pool_kind = "Executor";
  std::string pool_label;
};

// Python's logging levels, for the log records the engine emits.
enum class LogLevel : uint64_t { debug = 10, info = 20, warning = 30, error = 40 };

// Part of a map chunk's results that its worker sent ahead of the chunk's end
// (proto::Kind::partial_result): the outcome of the next `items` items.
struct ResultPiece {
  proto::Status status;  // ok or error, as for a whole chunk's result
  uint64_t items;
  std::string payload;
};

// How a job ended. Every submitted job ends in exactly one Completion (or a
// successful cancel()), which hands back the owner it was submitted with.
struct Completion {
  uint64_t job_id;
  proto::Status status;
  uint64_t run_ns;
  std::string payload;
  uint64_t owner = 0;  // Engine::submit's `owner`; 0 for the engine's log records
  // A map chunk's results sent ahead, in item order: the payload covers the
  // items after them (ok, error), or says why the rest did not finish.
  std::vector<ResultPiece> pieces;
  // A map chunk that did not finish (its worker died, was killed for a limit):
  // 1 + the index of the item it was running, 0 if none was. Such a job is
  // never re-run whole by the engine, which would run its finished items
  // again: the submitter re-runs the items that did not finish, with
  // `retries_left` re-runs left for the one that was running.
  uint64_t failed_item = 0;
  int retries_left = 0;
  // A log record's subject (Python's logging gets them as `extra` fields):
  // the worker slot it is about (-1: none) and the job (0: none).
  int32_t log_worker = -1;
  uint64_t log_job = 0;
};

// Faults a test can provoke (Engine::inject_fault_for_testing).
enum class TestFault {
  lose_next_spilled_result,  // the next spilled frame's segment is removed before the parent reads it
  engine_thread_throws,      // the engine thread's next round throws
  supervisor_thread_throws,  // the supervisor thread's next round throws
};

// `completed` counts every end (results, exceptions, failures, cancels);
// `failed` the jobs that ended without their task's outcome (worker lost,
// timed out, memory limit, broken pool), `cancelled` those cancelled.
struct EngineStats {
  uint64_t submitted = 0, completed = 0, pending = 0, in_flight = 0;
  uint64_t workers_started = 0, workers_lost = 0, retried = 0;
  uint64_t failed = 0, cancelled = 0, timed_out = 0;
};

class Engine {
 public:
  explicit Engine(EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const std::string& segment_name() const;
  // The pool's stats block (shoal/obs/stats_block.hpp): its name under /dev/shm.
  const std::string& stats_name() const;
  const std::shared_ptr<obs::StatsBlock>& stats_block() const;

  // Registers a pickled callable; workers receive it once, before their first job using it.
  uint64_t define_function(std::string pickled);
  void drop_function(uint64_t fn_id);

  // Queues a job and returns its id (unique, non-zero). `retries` is how
  // often it is re-run if its worker dies under it; `timeout_s` > 0 limits its
  // run time (past it the worker is killed and replaced, and the job ends as
  // timed_out). `owner` is the submitter's, opaque here: whatever it files
  // for the job (a result handler) travels with the job and comes back in its
  // Completion, so no table of the submitter's maps ids to handlers. A packed
  // payload's arena references (shoal/wire/packed_payload.hpp) become the
  // job's, dropped when it ends for good. Throws ClosedError after shutdown().
  uint64_t submit(uint64_t fn_id, uint32_t tag, std::string payload, int retries = 0, double timeout_s = 0,
                  uint64_t owner = 0);
  // The same, unless the engine's lock stays taken for longer than a short
  // spin: then it returns nullopt and leaves `payload` alone (the bindings
  // then let go of the GIL and call submit, which may block).
  std::optional<uint64_t> try_submit(uint64_t fn_id, uint32_t tag, std::string& payload, int retries = 0,
                                     double timeout_s = 0, uint64_t owner = 0);
  // Removes a job that no worker holds yet; false if it already left the
  // queue. A cancelled job ends here: no Completion follows, its owner is
  // stored in `*owner` (if given) and its argument's references are dropped.
  bool cancel(uint64_t job_id, uint64_t* owner = nullptr);
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
  uint32_t workers() const;
  // Test only (reached from Python as Engine._inject_fault): provokes one
  // fault, to show that it fails the jobs it concerns, or breaks the pool,
  // with a clear reason and without ending the process.
  void inject_fault_for_testing(TestFault fault);
  // The largest payload that travels inside a ring frame rather than spilled
  // into a segment of its own (which costs a mapping and page faults).
  std::size_t inline_payload_limit() const;

 private:
  // Everything else (the queue, the worker slots, the lock, the engine
  // thread) lives in EngineImpl (cpp/src/engine/engine_impl.hpp): a C++ user
  // of the engine sees its API, not its bookkeeping. Its address never
  // changes, so the engine and supervisor threads may hold on to it.
  std::unique_ptr<EngineImpl> impl_;
};

}  // namespace shoal
