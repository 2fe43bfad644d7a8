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
  init_failed = 17,     // payload = pickled exception
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

// Set in FrameHeader::tag when the payload is the name of a shared-memory
// segment that holds the real payload (too big for the ring).
inline constexpr uint32_t kSpilled = 0x80000000u;

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
