#pragma once
// A pool's stats block: one small shared-memory segment per pool that its
// engine and its workers keep up to date as they go, and that any process of
// the same user can read (read-only, without the pool's cooperation): so
// `shoal top`, the dashboard and /metrics see a pool whose Python thread is
// stuck in user code.
//
// Who writes what. Every field has exactly one writer at a time, which stores
// with relaxed atomics (a load and a store, no read-modify-write: nobody else
// writes the field); readers load relaxed and may see fields of one moment
// next to fields of the next (a task counted, its time not yet added), never
// a torn word. Variable-length text (a slow task's arguments, an error's
// traceback) is guarded by a per-entry sequence counter (seqlock: odd while
// written), so a reader never takes half of one text and half of another.
//   * the engine (under its lock): PoolCounters, and per slot the pid, the
//     states starting and dead, restarts and how the last worker ended;
//   * the worker in a slot: everything else in its WorkerStats, and its
//     trace ring's producer side.
// A slot's counters add up across the workers the slot has had.
//
// Hostile writers. Any process of the user can write into the block. Nothing
// read from it is ever used as an index, a size or a pointer by the pool:
// the geometry is fixed at creation and kept in each process's memory
// (like PoolLayout), texts are bounded by their arrays, and the pool never
// reads back what it wrote except its own trace rings' positions, which are
// clamped.
//
// Versions. The block starts, like the pool segment, with a magic word
// (offset 0) and a layout version (offset 8) whose places never change; a
// reader refuses a block of another version (StatsVersionError) before it
// reads anything else.
//
// Discovery. The block is an ordinary `shoal-<pid>-<hex>` segment (so a
// killed pool's block is reclaimed like its other names) that stays named for
// the pool's life; readers find blocks by listing /dev/shm and reading the
// magic of each name of that form (list_stats_blocks()).
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shoal/base/errors.hpp"
#include "shoal/ipc/segment.hpp"

namespace shoal::obs {

enum class WorkerState : uint32_t { empty = 0, starting, idle, running, exiting, dead };
enum class PoolState : uint32_t { running = 0, closing, closed, broken };
// How a slot's worker ended, for restarts and their causes.
enum class ExitCause : uint32_t { none = 0, exit_code, signal, timeout, memory, retired, corrupt, count };

// CLOCK_MONOTONIC (the same clock in every process of the machine) and CLOCK_REALTIME, in ns.
uint64_t monotonic_ns();
uint64_t realtime_ns();

// Task durations: bucket i counts durations up to 2^i µs; the last bucket is the rest.
inline constexpr std::size_t kDurationBuckets = 32;
std::size_t duration_bucket(uint64_t ns);

inline constexpr std::size_t kSlowest = 5;        // slowest tasks kept per worker
inline constexpr std::size_t kArgsText = 112;     // bytes of a slow task's argument repr
inline constexpr std::size_t kRecentErrors = 4;   // recent errors kept per worker
inline constexpr std::size_t kErrorText = 2040;   // bytes of an error's traceback text
inline constexpr std::size_t kTraceEvents = 4096;  // per worker trace ring (a power of two)
// The parent's ring takes every job's submit and dispatch, of all workers.
inline constexpr std::size_t kParentTraceEvents = 65536;

using Counter = std::atomic<uint64_t>;

// Stores `v + add` into a field this thread alone writes (no locked instruction).
inline void bump(Counter& c, uint64_t add = 1) {
  c.store(c.load(std::memory_order_relaxed) + add, std::memory_order_relaxed);
}

struct PoolCounters {
  alignas(64) Counter submitted;  // jobs (a map chunk is one job)
  Counter completed;              // ended with a result or the task's exception
  Counter failed;                 // ended otherwise: worker lost, timeout, memory limit, broken
  Counter cancelled;
  Counter retried;
  Counter timed_out;
  Counter workers_started;
  Counter workers_lost;
  Counter pending;    // gauge: jobs in the central queue
  Counter in_flight;  // gauge: jobs with workers
  Counter arena_used, arena_peak, arena_limit;  // bytes (sampled by the engine thread)
};

struct SlowTask {
  Counter seq;  // odd while being written
  Counter ns;
  Counter job;
  Counter items;
  char args[kArgsText];
};

struct ErrorRecord {
  Counter seq;  // odd while being written
  Counter job;
  Counter at_unix_ns;
  char text[kErrorText];
};

// One task as the trace sees it (monotonic ns): `recv` when its worker took
// it, `call` when its arguments were loaded, `ret` when the call returned,
// `end` when the result was sent. A parent event (PoolTrace) has recv = the
// submit time and call = the dispatch time, in the slot `items` names.
struct TraceEvent {
  uint64_t job;
  uint64_t recv, call, ret, end;
  uint32_t items;
  uint32_t status;
};

// Single producer (the writer named above), single consumer (the tracing
// process). `head` is written by the producer, `tail` by the consumer; an
// event that finds the ring full is dropped and counted.
template <std::size_t N>
struct TraceRingOf {
  static_assert((N & (N - 1)) == 0, "a power of two");
  static constexpr std::size_t capacity = N;
  alignas(64) Counter head;
  alignas(64) Counter tail;
  Counter dropped;
  TraceEvent events[N];
};
using TraceRing = TraceRingOf<kTraceEvents>;
using ParentTraceRing = TraceRingOf<kParentTraceEvents>;

struct WorkerStats {
  alignas(64) std::atomic<uint32_t> pid;
  std::atomic<uint32_t> state;  // WorkerState
  Counter job;                  // running now; 0 when none
  Counter job_since_ns;         // monotonic
  Counter tasks_completed, tasks_failed, jobs_completed;
  Counter busy_ns, deserialize_ns, serialize_ns;
  Counter bytes_in, bytes_out;              // job and result payloads (pickles, inline or spilled)
  Counter arena_bytes_in, arena_bytes_out;  // their out-of-band buffers, through the arena
  Counter started_ns;  // monotonic, this worker's start (set by the engine at spawn)
  Counter ready_ns;    // monotonic, when it was ready to take jobs
  Counter initializer_ns;
  Counter restarts;
  Counter restart_causes[static_cast<std::size_t>(ExitCause::count)];
  std::atomic<uint32_t> last_exit_cause;
  std::atomic<int32_t> last_exit_value;  // exit code or signal number
  Counter slowest_floor_ns;              // the fastest of the kept slow tasks (0: room left)
  Counter errors_written;                // errors recorded so far (the ring's head)
  Counter duration_buckets[kDurationBuckets];
  SlowTask slowest[kSlowest];  // unordered; readers sort
  ErrorRecord errors[kRecentErrors];
  TraceRing trace;
};

struct StatsHeader {
  static constexpr uint64_t kMagic = 0x73686f616c535441ULL;  // "shoalSTA"
  static constexpr uint32_t kVersion = 1;
  uint64_t magic;
  uint32_t version;
  uint32_t slots;
  uint64_t block_bytes;
  uint32_t owner_pid;
  uint32_t workers;
  uint64_t created_unix_ns;
  uint64_t created_mono_ns;
  char kind[16];   // "Executor", "Pool"
  char label[48];  // the user's name for the pool
  std::atomic<uint32_t> state;     // PoolState
  std::atomic<uint32_t> trace_on;  // workers and engine record trace events while non-zero
  PoolCounters pool;
  ParentTraceRing parent_trace;  // submit and dispatch times, written by the engine under its lock
};

static_assert(offsetof(StatsHeader, magic) == 0 && offsetof(StatsHeader, version) == 8);
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free);

// A block that holds the stats of another layout version.
struct StatsVersionError : CorruptFrameError {
  StatsVersionError(const std::string& what, uint32_t found) : CorruptFrameError(what), found(found) {}
  uint32_t found;
};

class StatsBlock {
 public:
  // A new block, named for the pool's life (the creator unlinks it when destroyed).
  static std::shared_ptr<StatsBlock> create(uint32_t slots, std::string_view kind, std::string_view label);
  // A worker's view, read-write. Throws NotFoundError, CorruptFrameError, StatsVersionError.
  static std::shared_ptr<StatsBlock> attach(const std::string& name);
  // A reader's view: mapped read-only (a reader can never disturb the pool).
  static std::shared_ptr<const StatsBlock> open_readonly(const std::string& name);
  // A block in this process's private memory: where a worker that could not
  // attach its pool's block writes (nobody reads it).
  static std::shared_ptr<StatsBlock> private_block(uint32_t slots);

  StatsHeader& header() const { return *static_cast<StatsHeader*>(base_); }
  uint32_t slots() const { return slots_; }
  WorkerStats& worker(uint32_t slot) const;
  const std::string& name() const { return name_; }
  bool tracing() const { return header().trace_on.load(std::memory_order_relaxed) != 0; }

  // The engine's side.
  void worker_starting(uint32_t slot) const;
  void worker_spawned(uint32_t slot, pid_t pid) const;
  void worker_ended(uint32_t slot, ExitCause cause, int value, bool restarted) const;
  void set_pool_state(PoolState s) const { header().state.store(static_cast<uint32_t>(s), std::memory_order_relaxed); }
  // Removes the name now (a closed pool is not listed any more).
  void unlink();

  ~StatsBlock();
  StatsBlock(const StatsBlock&) = delete;
  StatsBlock& operator=(const StatsBlock&) = delete;

 private:
  StatsBlock() = default;
  static std::shared_ptr<StatsBlock> map_existing(const std::string& name, bool writable);
  std::string name_;
  void* base_ = nullptr;
  std::size_t size_ = 0;
  uint32_t slots_ = 0;
  SharedSegment owned_;  // the creator's segment (unlinks the name)
  bool mapped_by_hand_ = false;  // attach/open_readonly/private_block: base_ is ours to munmap
};

std::size_t stats_block_bytes(uint32_t slots);

// The worker's writer: what the Python worker loop reports, in C++. Writes
// go to a private block when the pool's could not be attached, so the worker
// never branches on it.
class WorkerStatsWriter {
 public:
  // `block` null or `slot` out of its range: a private block instead, and
  // per-job bookkeeping is skipped (nobody reads it).
  WorkerStatsWriter(std::shared_ptr<StatsBlock> block, uint32_t slot);
  WorkerStatsWriter(WorkerStatsWriter&&) = default;
  // Ready for jobs, `initializer_ns` after the pool's initializer started (0: none).
  void ready(uint64_t initializer_ns);
  void job_taken(uint64_t job, uint64_t now_ns, std::size_t payload_bytes, uint64_t arena_bytes = 0);
  void args_loaded() {
    if (on_) call_ns_ = monotonic_ns();
  }
  void call_returned() {
    if (on_) ret_ns_ = monotonic_ns();
  }
  // A job's result is about to be sent: `items` of it done, `failed` of them
  // raised; `run_ns` as the worker measured it (the duration, where it made
  // no args_loaded/call_returned marks).
  void job_done(uint64_t job, uint32_t status, uint64_t run_ns, uint64_t items, uint64_t failed,
                std::size_t payload_bytes, uint64_t arena_bytes = 0);
  void exiting();
  // A job longer than this would be among the slowest kept (then call note_slow).
  uint64_t slow_floor() const { return on_ ? w_->slowest_floor_ns.load(std::memory_order_relaxed) : UINT64_MAX; }
  void note_slow(uint64_t job, uint64_t ns, uint64_t items, std::string_view args);
  // Whether an error's text is wanted now: the first few, then a few a second
  // (formatting a traceback per failing item of a big map would cost more than it tells).
  bool wants_error() const;
  void note_error(uint64_t job, std::string_view text);

 private:
  std::shared_ptr<StatsBlock> block_;
  WorkerStats* w_ = nullptr;
  bool on_ = true;
  uint64_t recv_ns_ = 0, call_ns_ = 0, ret_ns_ = 0;
  uint64_t last_error_ns_ = 0;
  uint64_t last_done_job_ = 0;
};

// Readers' copies of the seqlock-guarded entries: only whole ones (an entry
// its writer kept busy through every attempt, or never wrote, is left out).
struct SlowTaskCopy {
  uint64_t ns, job, items;
  std::string args;
};
struct ErrorCopy {
  uint64_t job, at_unix_ns;
  std::string text;
};
std::vector<SlowTaskCopy> read_slowest(const WorkerStats& w);  // unordered
std::vector<ErrorCopy> read_errors(const WorkerStats& w);      // newest first

// Appends an event to a ring whose producer this thread is; false (and
// counted as dropped) if full.
template <std::size_t N>
bool trace_push(TraceRingOf<N>& ring, const TraceEvent& e) {
  const uint64_t head = ring.head.load(std::memory_order_relaxed);
  const uint64_t tail = ring.tail.load(std::memory_order_acquire);
  if (head - tail >= N) {
    bump(ring.dropped);
    return false;
  }
  ring.events[head & (N - 1)] = e;
  ring.head.store(head + 1, std::memory_order_release);
  return true;
}

// Appends to `out` every event the producer published since the last drain
// (consumer side); returns how many.
template <std::size_t N>
std::size_t trace_drain(TraceRingOf<N>& ring, std::vector<TraceEvent>& out) {
  const uint64_t head = ring.head.load(std::memory_order_acquire);
  uint64_t tail = ring.tail.load(std::memory_order_relaxed);
  // Another process may have written garbage positions: never read more than the ring holds.
  if (head - tail > N) tail = head - N;
  const std::size_t n = static_cast<std::size_t>(head - tail);
  for (; tail != head; ++tail) out.push_back(ring.events[tail & (N - 1)]);
  ring.tail.store(head, std::memory_order_release);
  return n;
}

// Names under /dev/shm of this user's stats blocks (of `pid` only, if > 0).
std::vector<std::string> list_stats_blocks(pid_t pid = 0);

}  // namespace shoal::obs
