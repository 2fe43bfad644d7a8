#pragma once
// A job as the engine keeps it from submit to its end: in the central queue,
// then in one worker slot's in_flight list until its result arrives, its
// worker dies, or the pool breaks. Exactly one of those places holds it at a
// time (a retry moves it back to the front of the queue).
#include <cstdint>

#include "shoal/wire/blob.hpp"

namespace shoal {

struct Job {
  uint64_t id;
  uint64_t fn_id;
  uint32_t tag;
  int retries_left;
  // The argument, kept until the job ends for good: a retry re-sends it.
  Blob payload;
  uint64_t timeout_ns = 0;  // 0: no time limit
};

}  // namespace shoal
