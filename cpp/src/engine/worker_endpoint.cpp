#include "shoal/engine/worker_endpoint.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>

#include "shoal/base/errors.hpp"
#include "shoal/wire/blob.hpp"

namespace shoal {

WorkerEndpoint::WorkerEndpoint(const std::string& segment_name, uint32_t slot)
    : layout_(PoolLayout::attach(segment_name)), slot_(slot), stats_(stats_writer(layout_, slot)) {
  if (slot >= layout_.slots()) throw std::out_of_range("worker slot " + std::to_string(slot) + " out of range");
  inbox_ = layout_.inbox(slot);
  outbox_ = layout_.outbox(slot);
  layout_.status(slot).pid.store(static_cast<uint32_t>(getpid()));
  owner_pid_ = owner_of(layout_.segment().name());
  stats_.ready(0);  // again after the pool's initializer, if it has one
}

obs::WorkerStatsWriter WorkerEndpoint::stats_writer(const PoolLayout& layout, uint32_t slot) {
  std::shared_ptr<obs::StatsBlock> block;
  const std::string name = layout.stats_name();
  // Stats are never worth a worker: a block that cannot be attached (gone,
  // corrupt, another version, SHOAL_STATS=0) is replaced by a private one.
  const char* off = std::getenv("SHOAL_STATS");
  if (!name.empty() && !(off && std::string_view(off) == "0")) {
    try {
      block = obs::StatsBlock::attach(name);
    } catch (const std::exception&) {
    }
  }
  return obs::WorkerStatsWriter(std::move(block), slot);
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

uint64_t WorkerEndpoint::mark_running(uint64_t job_id) {
  const uint64_t now = obs::monotonic_ns();
  SlotStatus& st = layout_.status(slot_);
  st.cpu.store(cpu_hint(), std::memory_order_relaxed);
  st.started_ns.store(now, std::memory_order_relaxed);
  st.running_item.store(0, std::memory_order_relaxed);
  st.running_job.store(job_id, std::memory_order_seq_cst);
  return now;
}

void WorkerEndpoint::send(proto::FrameHeader h, std::string_view payload) {
  std::string spilled;
  if (payload.size() > proto::inline_payload_limit(outbox_.max_frame())) {
    // Named after the pool's owner, not this worker: the parent may read it after
    // this worker has exited, and a stale-segment cleanup in between (any
    // program's `import shoal`) removes the names of processes that are gone.
    // The parent unlinks it after reading. No room for it (SpillError): nothing
    // was pushed or left behind, and only this payload fails (the caller
    // reports that instead: see send_result()).
    spilled = spill_for(owner_pid_, payload, h.kind == proto::Kind::result ? "the result" : "the worker's report");
    payload = spilled;
    h.tag |= proto::kSpilled;
  }
  try {
    try {
      outbox_.push({std::as_bytes(std::span(&h, 1)), std::as_bytes(std::span(payload.data(), payload.size()))},
                   Deadline::never());
    } catch (const ClosedError&) {
      // The pool never closes an outbox: the word was overwritten.
      throw CorruptFrameError("it is marked closed, which the pool never does");
    }
  } catch (const CorruptFrameError& e) {
    if (!spilled.empty()) shm_unlink(("/" + spilled).c_str());
    throw CorruptFrameError("the pool's shared memory was corrupted: " + worker_name() + " found its outbox corrupt (" +
                            e.what() + "); this worker exits");
  } catch (...) {
    // Nobody will read it: a name of the owner's would stay until it exits.
    if (!spilled.empty()) shm_unlink(("/" + spilled).c_str());
    throw;
  }
  layout_.header().doorbell.notify_all();
}

std::string WorkerEndpoint::worker_name() const {
  return "worker " + std::to_string(slot_) + " (pid " + std::to_string(getpid()) + ")";
}

void WorkerEndpoint::check_frame(const proto::FrameHeader& h, const std::string& spilled_name) {
  using proto::Kind;
  const auto kind = static_cast<uint32_t>(h.kind);
  if (!proto::is_parent_kind(kind)) throw CorruptFrameError("a frame of unknown kind " + std::to_string(kind));
  if (h.kind != Kind::job && (h.tag & ~proto::kSpilled) != 0)
    throw CorruptFrameError("a frame of kind " + std::to_string(kind) + " with tag " + std::to_string(h.tag));
  // Never opened, let alone unlinked, unless it is a name the pool makes.
  if ((h.tag & proto::kSpilled) && !is_spill_name(spilled_name, owner_pid_))
    throw CorruptFrameError("a spilled payload whose " + std::to_string(spilled_name.size()) +
                            "-byte name is not one of the pool's (shoal-" + std::to_string(owner_pid_) + "-<hex>)");
  switch (h.kind) {
    case Kind::define_function:
      functions_.insert(h.id);
      break;
    case Kind::drop_function:
      functions_.erase(h.id);
      break;
    case Kind::job:
      if (h.id == 0) throw CorruptFrameError("a job frame with job id 0");
      if (!functions_.count(h.arg))
        throw CorruptFrameError("job " + std::to_string(h.id) + " calls function " + std::to_string(h.arg) +
                                ", which the pool never defined here");
      break;
    default:
      break;
  }
}

void WorkerEndpoint::inbox_corrupt(const std::string& what) {
  corrupt_ = true;
  std::string report = worker_name() + " found its inbox corrupt: " + what;
  if (report.size() > 1024) report.resize(1024);  // ASCII: our text and numbers only
  const std::string message = "the pool's shared memory was corrupted: " + report + "; this worker exits";
  // Said first, in one write: the parent kills this worker once it has the report.
  const std::string line = "shoal: " + message + "\n";
  if (::write(2, line.data(), line.size()) < 0) {
    // nowhere to say it: the report and the exception still do
  }
  try {  // best effort: the parent also sees this worker exit
    const proto::FrameHeader r{proto::Kind::inbox_corrupt, 0, 0, 0};
    if (outbox_.try_push({std::as_bytes(std::span(&r, 1)), std::as_bytes(std::span(report.data(), report.size()))}))
      layout_.header().doorbell.notify_all();
  } catch (...) {
  }
  throw CorruptFrameError(message);
}

void WorkerEndpoint::send_result(uint64_t job_id, proto::Status status, uint64_t run_ns, std::string_view payload,
                                 uint64_t items, uint64_t failed) {
  // Counted (and traced) before the parent can have the result: whoever
  // reads the stats after a result sees the job that made it.
  stats_.job_done(job_id, static_cast<uint32_t>(status), run_ns, items, failed, payload.size(),
                  packed::buffer_bytes(payload));
  send(proto::FrameHeader{proto::Kind::result, static_cast<uint32_t>(status), job_id, run_ns}, payload);
  layout_.status(slot_).running_job.store(0, std::memory_order_seq_cst);
}

bool WorkerEndpoint::send_partial(uint64_t job_id, proto::Status status, uint64_t items, std::string_view payload) {
  if (payload.size() > proto::inline_payload_limit(outbox_.max_frame())) return false;
  const proto::FrameHeader h{proto::Kind::partial_result, static_cast<uint32_t>(status), job_id, items};
  const std::initializer_list<SpscRing::Bytes> parts{std::as_bytes(std::span(&h, 1)),
                                                    std::as_bytes(std::span(payload.data(), payload.size()))};
  try {
    // No doorbell: results sent ahead wait in the outbox for the job's own
    // result (which rings it), or for the parent to drain the outbox of a
    // worker that died. Waking the parent for each would cost it a wake-up
    // and a poll per item of a long chunk, on CPUs the workers need.
    if (outbox_.try_push(parts)) return true;
    // Full: the parent must drain it, and it only looks when woken.
    layout_.header().doorbell.notify_all();
    outbox_.push(parts, Deadline::never());
  } catch (const ClosedError&) {
    throw CorruptFrameError("the pool's shared memory was corrupted: " + worker_name() +
                            " found its outbox marked closed, which the pool never does; this worker exits");
  } catch (const CorruptFrameError& e) {
    throw CorruptFrameError("the pool's shared memory was corrupted: " + worker_name() + " found its outbox corrupt (" +
                            e.what() + "); this worker exits");
  }
  return true;
}

void WorkerEndpoint::send_init_failed(std::string_view reason) {
  send(proto::FrameHeader{proto::Kind::init_failed, 0, 0, 0}, reason);
}

}  // namespace shoal
