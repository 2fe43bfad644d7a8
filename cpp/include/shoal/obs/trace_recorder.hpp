#pragma once
// Drains a pool's trace rings (stats_block.hpp) on a thread of its own while
// tracing is on, so that the rings keep room however busy the process's
// Python threads are (no GIL is involved), and samples the pool's pending
// depth and arena use for the trace's counters.
//
// One recorder per block at a time: it is the rings' only consumer.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "shoal/obs/stats_block.hpp"

namespace shoal::obs {

// An event as the recorder keeps it: the slot it came from (-1: the parent's ring).
struct TracedEvent {
  int64_t slot;
  uint64_t job, a, b, c, d;  // TraceEvent's recv, call, ret, end
  uint32_t items, status;
};
static_assert(sizeof(TracedEvent) == 56);

struct CounterSample {
  uint64_t at_ns, pending, arena_used;
};

class TraceRecorder {
 public:
  // Turns tracing on in the block and starts draining every `drain_every`.
  explicit TraceRecorder(std::shared_ptr<StatsBlock> block,
                         std::chrono::microseconds drain_every = std::chrono::milliseconds(2),
                         std::chrono::microseconds sample_every = std::chrono::milliseconds(20));
  ~TraceRecorder();  // stop()
  TraceRecorder(const TraceRecorder&) = delete;
  TraceRecorder& operator=(const TraceRecorder&) = delete;

  // Turns tracing off, drains what is left and stops the thread (idempotent).
  void stop();
  // What was recorded so far, handed over (the recorder keeps none of it).
  std::vector<TracedEvent> take_events();
  std::vector<CounterSample> take_samples();
  // Events the rings had no room for since the recorder started.
  uint64_t dropped() const;

 private:
  void run();
  void drain_locked();
  void sample_locked();

  const std::shared_ptr<StatsBlock> block_;
  const std::chrono::microseconds drain_every_, sample_every_;
  uint64_t dropped_at_start_ = 0;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::vector<TraceEvent> scratch_;
  std::vector<TracedEvent> events_;
  std::vector<CounterSample> samples_;
  std::thread thread_;
};

}  // namespace shoal::obs
