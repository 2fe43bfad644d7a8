#pragma once
// A worker's end of its slot: frames in from the inbox, results out through
// the outbox, and the status word that tells the parent which job is running.
#include <cstdint>
#include <string>
#include <string_view>

#include "shoal/ipc/deadline.hpp"
#include "shoal/sched/pool_layout.hpp"
#include "shoal/sched/protocol.hpp"

namespace shoal {

class WorkerEndpoint {
 public:
  WorkerEndpoint(const std::string& segment_name, uint32_t slot);

  uint32_t slot() const { return slot_; }
  // Waits until a frame is ready (true) or the deadline passes (false); throws
  // ClosedError once the pool has closed this worker's inbox and it is drained.
  bool wait(const Deadline& deadline) { return inbox_.wait_readable(deadline); }

  // Takes the ready frame: header into `h`, payload into alloc(n). A job frame
  // marks the job as running before anything else happens to it.
  template <class Alloc>
  void take(proto::FrameHeader& h, Alloc&& alloc) {
    inbox_.try_pop_split(&h, sizeof h, alloc);
    if (h.kind == proto::Kind::job) layout_.status(slot_).running_job.store(h.id, std::memory_order_seq_cst);
  }

  // Publishes a job's outcome and rings the parent's doorbell.
  void send_result(uint64_t job_id, proto::Status status, uint64_t run_ns, std::string_view payload);
  void send_init_failed(std::string_view reason);

 private:
  void send(proto::FrameHeader h, std::string_view payload);

  PoolLayout layout_;
  uint32_t slot_;
  SpscRing inbox_, outbox_;
};

}  // namespace shoal
