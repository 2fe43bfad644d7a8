#pragma once
// The frames that travel between the pool's parent and its workers. Each frame
// starts with a FrameHeader; the payload after it is opaque to the engine
// (pickles made by the Python front).
#include <cstddef>
#include <cstdint>

namespace shoal::proto {

enum class Kind : uint32_t {
  // parent -> worker
  define_function = 1,  // id = function id, payload = pickled callable
  drop_function = 2,    // id = function id
  initialize = 3,       // payload = pickled (initializer, initargs)
  job = 4,              // id = job id, arg = function id, tag = call mode, payload = pickled args
  // worker -> parent
  result = 16,          // id = job id, tag = Status, arg = run time in ns, payload = pickled outcome
  init_failed = 17,     // payload = UTF-8 text: why the worker cannot run tasks
  inbox_corrupt = 18,   // payload = UTF-8 text: what the worker found wrong in its inbox; it exits next
  // Part of a map chunk's results, sent ahead of the chunk's end so that they
  // outlive the worker if it dies before the end: id = job id, tag = Status
  // (ok or error), arg = how many of the chunk's items it covers (the next ones
  // after the parts before it), payload = those items' pickled outcome. Never
  // spilled. The result frame that ends the job covers the items after them.
  partial_result = 19,
};

// How a job ended; the Python front turns each into a value or an exception.
enum class Status : uint32_t {
  ok = 0,            // payload: the pickled result
  error = 1,         // payload: the pickled exception (with its remote traceback)
  worker_lost = 2,   // payload: UTF-8 text naming the worker, its exit and the job
  cancelled = 3,     // payload: empty
  broken = 4,        // payload: UTF-8 text saying why the pool cannot run tasks
  timed_out = 5,     // payload: UTF-8 text; the job ran past its time limit and its worker was stopped
  memory_exceeded = 6,  // payload: UTF-8 text; the job drove its worker past the memory limit
  log = 7,           // not a job: a log record (job id 0, run_ns = logging level, payload = text)
};

// What a job's payload holds (FrameHeader::tag of a job, below kSpilled): the
// worker calls its function once, or once per item of a map chunk.
enum class CallMode : uint32_t {
  call = 0,      // payload = pickled (args, kwargs)
  map_one = 1,   // payload = a chunk's items, each the one argument
  map_star = 2,  // payload = a chunk's items, each a tuple of arguments
};

// Set in FrameHeader::tag when the payload is the name of a shared-memory
// segment that holds the real payload (too big for the ring).
inline constexpr uint32_t kSpilled = 0x80000000u;

// What each side accepts from the other, frame by frame (anything else is
// treated as corruption of the shared memory, never acted on):
//  * parent -> worker: kind one of the four above; a job's id is non-zero and
//    names a function defined before it (and not dropped since); the other
//    kinds carry no tag bits but kSpilled.
//  * worker -> parent: a result's status is ok or error (the only ones a
//    worker makes) and its id is the oldest job the engine sent that worker
//    and has not seen finish (a worker runs its jobs in order); a partial
//    result likewise, for a map job, with arg > 0 and never spilled; init_failed
//    only before the worker's first result; the text payloads are UTF-8.
//  * a spilled payload's name is `shoal-<the pool owner's pid>-<16 hex>`.
inline constexpr bool is_parent_kind(uint32_t k) {
  return k == uint32_t(Kind::define_function) || k == uint32_t(Kind::drop_function) ||
         k == uint32_t(Kind::initialize) || k == uint32_t(Kind::job);
}
inline constexpr bool is_worker_status(uint32_t s) { return s == uint32_t(Status::ok) || s == uint32_t(Status::error); }

// Payloads larger than this (a quarter of the ring's largest frame) are
// spilled, so one big frame never blocks the small ones behind it.
inline constexpr std::size_t inline_payload_limit(std::size_t max_frame) { return max_frame / 4; }

struct FrameHeader {
  Kind kind;
  uint32_t tag;
  uint64_t id;
  uint64_t arg;
};
static_assert(sizeof(FrameHeader) == 24);

}  // namespace shoal::proto
