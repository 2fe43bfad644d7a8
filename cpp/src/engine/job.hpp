#pragma once
// A job as the engine keeps it from submit to its end: in the central queue,
// then in one worker slot's in_flight list until its result arrives, its
// worker dies, or the pool breaks. Exactly one of those places holds it at a
// time (a retry moves it back to the front of the queue).
#include <cstdint>

#include <vector>

#include "shoal/engine/engine.hpp"
#include "shoal/wire/blob.hpp"
#include "shoal/wire/packed_payload.hpp"

namespace shoal {

struct Job {
  uint64_t id;
  uint64_t fn_id;
  uint32_t tag;
  int retries_left;
  // The argument, kept until the job ends for good: a retry re-sends it.
  Blob payload;
  uint64_t timeout_ns = 0;  // 0: no time limit
  // What the submitter filed with the job (Engine::submit's `owner`): handed
  // back exactly once, in the job's Completion or by cancel().
  uint64_t owner = 0;
  // The arena references the argument holds (a packed payload's blocks):
  // dropped by the engine when the job ends for good, outside its lock.
  std::vector<packed::Reference> blocks;
  // A map chunk's results its worker sent ahead (partial_result frames), in
  // item order: they end up in its Completion, whichever way it ends.
  std::vector<ResultPiece> pieces;
  // CLOCK_MONOTONIC at submit, kept only while the pool is traced (else 0).
  uint64_t submitted_ns = 0;

  bool is_map() const { return tag != static_cast<uint32_t>(proto::CallMode::call); }
  // Whether, were its worker to die now, re-running it whole would run items
  // a second time whose results are already here, or blame the wrong items:
  // then the submitter re-runs what did not finish instead (Completion).
  bool finishes_in_parts(uint64_t running_item) const { return is_map() && (running_item || !pieces.empty()); }
};

}  // namespace shoal
