#include "shoal/sched/worker_endpoint.hpp"

#include <sys/mman.h>
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
  owner_pid_ = owner_of(layout_.segment().name());
}

pid_t WorkerEndpoint::owner_of(const std::string& segment_name) {
  // `shoal-<pid>-<hex>`: the pool's segment carries its creator's pid.
  const std::string_view prefix = kSegmentPrefix;
  const std::string_view name = segment_name;
  if (name.starts_with(prefix)) {
    const std::string_view rest = name.substr(prefix.size());
    const std::size_t dash = rest.find('-');
    long pid = 0;
    bool digits = dash != std::string_view::npos && dash > 0 && dash <= 9;
    for (std::size_t i = 0; digits && i < dash; ++i) {
      digits = rest[i] >= '0' && rest[i] <= '9';
      pid = pid * 10 + (rest[i] - '0');
    }
    if (digits && pid > 0) return static_cast<pid_t>(pid);
  }
  return getpid();  // not a name of ours: the worker's own pid, as any segment it makes
}

void WorkerEndpoint::mark_running(uint64_t job_id) {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  SlotStatus& st = layout_.status(slot_);
  st.started_ns.store(uint64_t(ts.tv_sec) * 1'000'000'000u + uint64_t(ts.tv_nsec), std::memory_order_relaxed);
  st.running_job.store(job_id, std::memory_order_seq_cst);
}

void WorkerEndpoint::send(proto::FrameHeader h, std::string_view payload) {
  std::string spilled;
  if (payload.size() > proto::inline_payload_limit(outbox_.max_frame())) {
    // Named after the pool's owner, not this worker: the parent may read it after
    // this worker has exited, and a stale-segment cleanup in between (any
    // program's `import shoal`) removes the names of processes that are gone.
    // The parent unlinks it after reading.
    spilled = spill_for(owner_pid_, payload);
    payload = spilled;
    h.tag |= proto::kSpilled;
  }
  try {
    outbox_.push({std::as_bytes(std::span(&h, 1)), std::as_bytes(std::span(payload.data(), payload.size()))},
                 Deadline::never());
  } catch (...) {
    // Nobody will read it (the outbox is closed): a name of the owner's would stay until it exits.
    if (!spilled.empty()) shm_unlink(("/" + spilled).c_str());
    throw;
  }
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
