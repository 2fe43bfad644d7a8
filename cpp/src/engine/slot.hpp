#pragma once
// A worker slot: the engine's side of one worker, across its incarnations.
// The slot (its rings in the pool segment, its place in the engine) outlives
// each worker in it; a replacement gets the same slot with freshly formatted
// rings (slots.cpp).
//
// Life of a slot: dead -> starting (a spawn was requested) -> alive (the
// spawned event came) -> stopping (inbox closed at shutdown or terminate) ->
// dead (its exit was handled). A worker found to corrupt its rings is
// quarantined on the way: killed at once, its jobs failed over, its rings left
// alone until its exit is handled.
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "shoal/base/pidfd.hpp"
#include "shoal/ipc/ring.hpp"
#include "shoal/wire/protocol.hpp"
#include "engine/job.hpp"

namespace shoal {

enum class SlotState { starting, alive, stopping, dead };

// Why the engine killed a worker, so its exit is reported as that, not as a crash.
struct KillReason {
  uint64_t job_id;
  proto::Status status;
  std::string message;
};

// Every field is guarded by the engine's lock (EngineImpl::slots_ is
// GUARDED_BY(mu_)); what other threads read without it is in SlotWatch.
struct Slot {
  SlotState state = SlotState::dead;
  pid_t pid = 0;
  // Every signal to this worker goes through its pidfd: by the time the
  // engine acts, the launcher may have reaped the worker and its pid may name
  // another process. Held from the spawned event until the exit is handled.
  SharedPidfd pidfd;
  // Views of the slot's rings in the pool segment, fixed at construction (a
  // new incarnation reformats the memory, not the view). The engine is the
  // inbox's only producer and the outbox's only consumer: both sides are
  // serialized by the engine's lock.
  SpscRing inbox, outbox;
  // The jobs this worker holds, oldest first. A worker runs its jobs in
  // order, so a result is always for in_flight.front().
  std::deque<Job> in_flight;
  std::unordered_set<uint64_t> known_functions;
  std::vector<uint64_t> functions_to_drop;
  // Counts the workers this slot has had: work done outside the engine's lock
  // for one worker (reading its spilled result, its resident size) checks on
  // return that the slot still holds that worker.
  uint64_t incarnation = 0;
  uint64_t dispatched = 0;  // this incarnation, for max_tasks_per_child
  uint64_t completed = 0;   // this incarnation
  std::optional<KillReason> kill_reason;
  bool retired = false;  // inbox closed: no more jobs for this incarnation
  // A job finished since its resident size was last compared with the soft
  // memory limit (limits.cpp reads it outside the lock).
  bool rss_check_due = false;
  // Its rings or its frames were found corrupt: the worker is being killed,
  // its jobs were failed over, and its rings are left alone until it exits.
  bool quarantined = false;
  // in_flight was emptied while the worker lived (a broken pool, terminate):
  // results for jobs it no longer holds are expected, and dropped.
  bool jobs_forgotten = false;
};

// What threads without the engine's lock may look at: whether a slot's outbox
// has results, so that a waiter knows whether to wake the engine thread, and
// the engine thread whether to wake up. Indexed like EngineImpl::slots_.
struct SlotWatch {
  SpscRing outbox;  // the same view as Slot::outbox, fixed at construction
  // Whether the outbox is drained (a worker is there or starting, and it is
  // not quarantined). Written under the engine's lock together with
  // Slot::state and Slot::quarantined; read without it as a hint (relaxed):
  // a stale value costs one needless or one late look, never a wrong frame,
  // since frames are only popped under the lock after re-checking the slot.
  // A quarantined or dead slot's outbox may hold garbage that looks like
  // frames forever, so it must not count as readable.
  std::atomic<bool> live{false};
};

// Kills a worker through its pidfd, which cannot name another process even if
// the worker is gone and reaped; by pid only without one (no pidfd support).
void kill_worker(const SharedPidfd& pidfd, pid_t pid);

}  // namespace shoal
