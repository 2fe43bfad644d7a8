#include "shoal/obs/trace_recorder.hpp"

#include <new>
#include <utility>

namespace shoal::obs {

namespace {

uint64_t dropped_in(const StatsBlock& b) {
  uint64_t n = b.header().parent_trace.dropped.load(std::memory_order_relaxed);
  for (uint32_t s = 0; s < b.slots(); ++s) n += b.worker(s).trace.dropped.load(std::memory_order_relaxed);
  return n;
}

}  // namespace

TraceRecorder::TraceRecorder(std::shared_ptr<StatsBlock> block, std::chrono::microseconds drain_every,
                             std::chrono::microseconds sample_every)
    : block_(std::move(block)), drain_every_(drain_every), sample_every_(sample_every) {
  dropped_at_start_ = dropped_in(*block_);
  block_->header().trace_on.store(1, std::memory_order_relaxed);
  thread_ = std::thread([this] { run(); });
}

TraceRecorder::~TraceRecorder() { stop(); }

void TraceRecorder::stop() {
  {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lk(mu_);
  block_->header().trace_on.store(0, std::memory_order_relaxed);
  try {
    drain_locked();  // what was pushed before tracing went off
    sample_locked();
  } catch (const std::bad_alloc&) {  // no room for the last events: the trace ends without them
  }
}

void TraceRecorder::run() {
  std::unique_lock lk(mu_);
  try {
    auto next_sample = std::chrono::steady_clock::now();
    while (!stopping_) {
      drain_locked();
      if (std::chrono::steady_clock::now() >= next_sample) {
        sample_locked();
        next_sample += sample_every_;
      }
      wake_.wait_for(lk, drain_every_, [&] { return stopping_; });
    }
  } catch (...) {
    // Out of memory for the events: the thread must not end the process.
    // Tracing goes off; what the rings hold then counts as dropped.
    block_->header().trace_on.store(0, std::memory_order_relaxed);
  }
}

void TraceRecorder::drain_locked() {
  const auto add = [&](int64_t slot) {
    for (const TraceEvent& e : scratch_)
      events_.push_back(TracedEvent{slot, e.job, e.recv, e.call, e.ret, e.end, e.items, e.status});
    scratch_.clear();
  };
  trace_drain(block_->header().parent_trace, scratch_);
  add(-1);
  for (uint32_t s = 0; s < block_->slots(); ++s) {
    trace_drain(block_->worker(s).trace, scratch_);
    add(s);
  }
}

void TraceRecorder::sample_locked() {
  const PoolCounters& c = block_->header().pool;
  samples_.push_back(CounterSample{monotonic_ns(), c.pending.load(std::memory_order_relaxed),
                                   c.arena_used.load(std::memory_order_relaxed)});
}

std::vector<TracedEvent> TraceRecorder::take_events() {
  std::lock_guard lk(mu_);
  return std::exchange(events_, {});
}

std::vector<CounterSample> TraceRecorder::take_samples() {
  std::lock_guard lk(mu_);
  return std::exchange(samples_, {});
}

uint64_t TraceRecorder::dropped() const { return dropped_in(*block_) - dropped_at_start_; }

}  // namespace shoal::obs
