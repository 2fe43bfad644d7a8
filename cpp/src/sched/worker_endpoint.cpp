#include "shoal/sched/worker_endpoint.hpp"

#include <unistd.h>

#include <ctime>

#include "shoal/ipc/errors.hpp"
#include "shoal/sched/blob.hpp"

namespace shoal {

WorkerEndpoint::WorkerEndpoint(const std::string& segment_name, uint32_t slot)
    : layout_(PoolLayout::attach(segment_name)), slot_(slot) {
  if (slot >= layout_.slots()) throw std::out_of_range("worker slot " + std::to_string(slot) + " out of range");
  inbox_ = layout_.inbox(slot);
  outbox_ = layout_.outbox(slot);
  layout_.status(slot).pid.store(static_cast<uint32_t>(getpid()));
}

void WorkerEndpoint::mark_running(uint64_t job_id) {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  SlotStatus& st = layout_.status(slot_);
  st.started_ns.store(uint64_t(ts.tv_sec) * 1'000'000'000u + uint64_t(ts.tv_nsec), std::memory_order_relaxed);
  st.running_job.store(job_id, std::memory_order_seq_cst);
}

void WorkerEndpoint::send(proto::FrameHeader h, std::string_view payload) {
  Blob spill;
  if (payload.size() > proto::inline_payload_limit(outbox_.max_frame())) {
    spill = Blob(std::string(payload));
    payload = spill.wire(0);
    spill.hand_over_spill();  // the parent unlinks it after reading
    h.tag |= proto::kSpilled;
  }
  outbox_.push({std::as_bytes(std::span(&h, 1)), std::as_bytes(std::span(payload.data(), payload.size()))},
               Deadline::never());
  layout_.header().doorbell.notify_all();
}

void WorkerEndpoint::send_result(uint64_t job_id, proto::Status status, uint64_t run_ns, std::string_view payload) {
  send(proto::FrameHeader{proto::Kind::result, static_cast<uint32_t>(status), job_id, run_ns}, payload);
  layout_.status(slot_).running_job.store(0, std::memory_order_seq_cst);
}

void WorkerEndpoint::send_init_failed(std::string_view reason) {
  send(proto::FrameHeader{proto::Kind::init_failed, 0, 0, 0}, reason);
}

}  // namespace shoal
