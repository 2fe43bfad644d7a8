#pragma once
// The rules a frame from a worker's outbox must meet before any of it is
// acted on (protocol.hpp says what each kind carries). Everything in the
// outbox may be garbage written by another process: a frame that breaks a
// rule quarantines its worker, and no segment is opened or unlinked for it.
#include <sys/types.h>

#include <string>
#include <string_view>

#include "shoal/wire/protocol.hpp"
#include "engine/slot.hpp"

namespace shoal {

struct FrameVerdict {
  std::string fault;  // empty: the frame keeps the rules
  // Whether it is a result for the job this worker runs; false for a result
  // for a job already failed over (a broken pool), which is dropped.
  bool ours = true;
};

// Judges frame `h` (its tag without proto::kSpilled; `spilled` says whether it
// had it) with `payload`, the inline payload or the spilled segment's name,
// from the worker in slot `s` of the pool of process `pool_pid`.
FrameVerdict judge_outbox_frame(const proto::FrameHeader& h, bool spilled, std::string_view payload, const Slot& s,
                                pid_t pool_pid);

// Whether `s` is well-formed UTF-8 (text a worker reports, which Python decodes).
bool valid_utf8(std::string_view s);

}  // namespace shoal
