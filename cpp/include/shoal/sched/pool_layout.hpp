#pragma once
// The pool's one shared-memory segment: a header with the parent's doorbell,
// then one slot per worker with its status words, inbox ring and outbox ring.
// A slot outlives the worker in it: a replacement worker gets the same slot
// with freshly formatted rings.
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "shoal/ipc/notifier.hpp"
#include "shoal/ipc/ring.hpp"
#include "shoal/ipc/segment.hpp"

namespace shoal {

struct PoolHeader {
  static constexpr uint64_t kMagic = 0x73686f616c504f4fULL;  // "shoalPOO"
  uint64_t magic;
  uint32_t slots;
  uint32_t reserved;
  uint64_t ring_bytes;
  // Workers ring this after publishing a result; the parent's engine sleeps on it.
  alignas(64) Notifier doorbell;
};

// Written by the worker, read by the parent: which job runs right now, so that
// after a crash the parent knows which job was to blame.
struct SlotStatus {
  alignas(64) std::atomic<uint64_t> running_job;  // 0 when idle
  std::atomic<uint64_t> started_ns;               // CLOCK_MONOTONIC when it started
  std::atomic<uint32_t> pid;
};

class PoolLayout {
 public:
  static PoolLayout create(uint32_t slots, std::size_t ring_bytes);
  static PoolLayout attach(const std::string& name);

  PoolHeader& header() const { return *static_cast<PoolHeader*>(segment_.data()); }
  uint32_t slots() const { return header().slots; }
  SlotStatus& status(uint32_t slot) const;
  // Formats both rings of a slot anew (parent only, while no worker uses it).
  void reset_slot(uint32_t slot) const;
  SpscRing inbox(uint32_t slot) const;
  SpscRing outbox(uint32_t slot) const;
  const SharedSegment& segment() const { return segment_; }
  // Removes the segment's name once no new process needs to attach.
  void unlink() { segment_.unlink(); }

 private:
  explicit PoolLayout(SharedSegment seg) : segment_(std::move(seg)) {}
  std::byte* slot_base(uint32_t slot) const;
  std::size_t ring_stride() const;
  SharedSegment segment_;
};

}  // namespace shoal
