#pragma once
// A worker's end of its slot: frames in from the inbox, results out through
// the outbox, and the status word that tells the parent which job is running.
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>

#include "shoal/base/deadline.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/base/spin.hpp"
#include "shoal/wire/blob.hpp"
#include "shoal/engine/pool_layout.hpp"
#include "shoal/obs/stats_block.hpp"
#include "shoal/wire/packed_payload.hpp"
#include "shoal/wire/protocol.hpp"

namespace shoal {

class WorkerEndpoint {
 public:
  WorkerEndpoint(const std::string& segment_name, uint32_t slot);

  uint32_t slot() const { return slot_; }
  // Waits until a frame is ready (true) or the deadline passes (false); throws
  // ClosedError once the pool has closed this worker's inbox and it is drained.
  // It polls first only if the parent thread that last sent it a frame was on
  // another CPU (SlotStatus::parent_cpu).
  bool wait(const Deadline& deadline) {
    SlotStatus& st = layout_.status(slot_);
    const uint32_t here = cpu_hint();
    st.cpu.store(here, std::memory_order_relaxed);
    return inbox_.wait_readable(deadline, here == 0 || st.parent_cpu.load(std::memory_order_relaxed) != here);
  }
  // Whether a frame is waiting now (no wait, no system call).
  bool frame_ready() const { return !inbox_.empty(); }

  // Takes the ready frame: header into `h`, payload into alloc(n) (a payload
  // that was spilled into its own segment is fetched from there). A job frame
  // marks the job as running before anything else happens to it.
  // A frame that breaks the protocol's rules (protocol.hpp), or a ring whose
  // positions or frame headers are garbage, is never acted on: the worker
  // tells the parent (an inbox_corrupt frame, if the outbox has room) and this
  // throws CorruptFrameError saying so; the worker is then to exit.
  template <class Alloc>
  void take(proto::FrameHeader& h, Alloc&& alloc) {
    if (corrupt_) inbox_corrupt("it was found corrupt before");
    std::string spilled_name;
    std::size_t payload_bytes = 0;
    const std::byte* payload = nullptr;
    auto counted = [&](std::size_t n) -> std::byte* {
      payload_bytes = n;
      std::byte* p = alloc(n);
      payload = p;
      return p;
    };
    try {
      inbox_.try_pop_split(&h, sizeof h, [&](std::size_t n) -> std::byte* {
        if (!(h.tag & proto::kSpilled)) return counted(n);
        spilled_name.resize(n);
        return reinterpret_cast<std::byte*>(spilled_name.data());
      });
      check_frame(h, spilled_name);
    } catch (const CorruptFrameError& e) {
      inbox_corrupt(e.what());
    }
    const uint64_t taken_ns = h.kind == proto::Kind::job ? mark_running(h.id) : 0;
    if (h.tag & proto::kSpilled) {
      h.tag &= ~proto::kSpilled;
      // The parent owns job payload segments (it may re-send them on retry);
      // an initialisation payload is read once, so the worker removes it.
      try {
        read_spilled(spilled_name, h.kind == proto::Kind::initialize, counted);
      } catch (const CorruptFrameError& e) {
        inbox_corrupt(e.what());
      }
    }
    if (taken_ns) {
      const std::string_view body(reinterpret_cast<const char*>(payload), payload ? payload_bytes : 0);
      stats_.job_taken(h.id, taken_ns, payload_bytes, packed::buffer_bytes(body));
    }
  }

  // Publishes a job's outcome and rings the parent's doorbell. A payload too
  // big for the ring is spilled into a segment of its own; if /dev/shm has no
  // room for it, throws SpillError having sent nothing and left nothing behind:
  // the worker goes on, and sends an error result for the job instead (the
  // Python worker sends the MemoryError the bindings make of it).
  // `items` of the job ran, `failed` of them raised (for the stats block).
  void send_result(uint64_t job_id, proto::Status status, uint64_t run_ns, std::string_view payload,
                   uint64_t items = 1, uint64_t failed = 0);
  void send_init_failed(std::string_view reason);
  // Sends part of a map chunk's results ahead of its end (a partial_result
  // frame covering the next `items` items), so they survive this worker's
  // death. The parent is not woken for it (it reads them with the chunk's
  // result, or after a death), unless the outbox is full. False, having sent
  // nothing, if the payload is too big to travel inline.
  bool send_partial(uint64_t job_id, proto::Status status, uint64_t items, std::string_view payload);
  // Which item of the running map chunk starts now (0-based), or none: what
  // the parent blames if this worker dies before the next call.
  void mark_item(std::optional<uint64_t> index) {
    layout_.status(slot_).running_item.store(index ? *index + 1 : 0, std::memory_order_relaxed);
  }

  // This worker's stats in the pool's stats block (shoal/obs/stats_block.hpp).
  obs::WorkerStatsWriter& stats() { return stats_; }

  // The pool's owner (the parent), whose pid spilled results are named after.
  pid_t spill_owner() const { return owner_pid_; }

 private:
  void send(proto::FrameHeader h, std::string_view payload);
  // Returns the time it started (CLOCK_MONOTONIC ns).
  uint64_t mark_running(uint64_t job_id);
  static obs::WorkerStatsWriter stats_writer(const PoolLayout& layout, uint32_t slot);
  static pid_t owner_of(const std::string& segment_name);
  std::string worker_name() const;
  // Throws CorruptFrameError if `h` (and the spilled name) break the protocol;
  // keeps track of the functions defined.
  void check_frame(const proto::FrameHeader& h, const std::string& spilled_name);
  // Tells the parent (best effort) and throws CorruptFrameError with a message for the worker's stderr.
  [[noreturn]] void inbox_corrupt(const std::string& what);

  PoolLayout layout_;
  uint32_t slot_;
  pid_t owner_pid_ = 0;
  SpscRing inbox_, outbox_;
  std::unordered_set<uint64_t> functions_;  // defined and not dropped: what a job may name
  bool corrupt_ = false;                    // inbox_corrupt() ran: nothing more is taken
  obs::WorkerStatsWriter stats_;
};

}  // namespace shoal
