#pragma once
// A bounded single-producer single-consumer ring of variable-length frames in
// shared memory. Positions are monotonically increasing byte counters (head:
// written, tail: consumed); a frame is an 8-byte header (length, check word)
// followed by the payload padded to 8 bytes, and may wrap around the end.
// The producer publishes with a release store of head, the consumer frees with
// a release store of tail; each side sleeps on a Notifier when it must wait.
//
// Garbage in the ring (another process may write any bytes anywhere in it)
// never makes either side touch memory outside the ring, loop, or hand out a
// frame that fails these invariants; it is reported as CorruptFrameError:
//  * capacity and the data area are read from shared memory once, at attach,
//    and checked (a power of two >= 64 that fits the mapping); later writes
//    to the header's capacity are never read. Every index into the data area
//    is a position masked with capacity - 1, so no position can reach past it.
//  * positions: tail <= head <= tail + capacity (head - tail, unsigned, is at
//    most capacity), both multiples of 8. Checked by the consumer before every
//    pop and by the producer before every push: two compares.
//  * a frame header: check word == length ^ kCheck, length <= max_frame(),
//    and the padded frame fits in what head says was published.
//  * closed: any non-zero word means closed. Callers that know they never
//    closed a ring (the pool engine for its inboxes and outboxes) treat a
//    ClosedError from it as corruption.
//  * the Notifier words: garbage costs spurious wake-ups or futex calls,
//    never a wait past its deadline.
// A consumer always either pops one frame (tail moves forward by at least 8
// bytes), reports the ring empty, or throws: it cannot spin on garbage.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shoal/base/deadline.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/ipc/notifier.hpp"

namespace shoal {

struct RingHeader {
  static constexpr uint64_t kMagic = 0x73686f616c52494eULL;  // "shoalRIN"
  std::atomic<uint64_t> magic;  // stored last (release): an attacher sees a formatted ring
  uint64_t capacity;  // data bytes, a power of two
  alignas(64) std::atomic<uint64_t> head;
  alignas(64) std::atomic<uint64_t> tail;
  // Each on its own cache line: the producer bumps one and the consumer the other.
  alignas(64) Notifier readable;  // bumped after a frame is published
  alignas(64) Notifier writable;  // bumped after a frame is consumed
  std::atomic<uint32_t> closed;
};

class SpscRing {
 public:
  using Bytes = std::span<const std::byte>;
  static constexpr std::size_t kFrameHeader = 8;

  // Bytes of shared memory a ring with `capacity` data bytes needs.
  static std::size_t bytes_needed(std::size_t capacity);
  // Rounds `capacity` up to a power of two (minimum 64) and formats `mem`.
  static SpscRing init(void* mem, std::size_t capacity);
  // Uses a ring another process formatted in the `mem_bytes` bytes at `mem`;
  // throws CorruptFrameError if they do not hold one (wrong magic, capacity not
  // a power of two >= 64, or larger than the memory), or if `expected_capacity`
  // is given and the ring's differs from what init() made of it.
  static SpscRing attach(void* mem, std::size_t mem_bytes, std::size_t expected_capacity = 0);

  SpscRing() = default;

  std::size_t capacity() const { return cap_; }
  // The largest payload a frame may carry.
  std::size_t max_frame() const { return cap_ - kFrameHeader; }
  std::size_t used_bytes() const {
    // seq_cst pairs with the Notifier's sleeper count (a Dekker handshake).
    return static_cast<std::size_t>(hdr_->head.load(std::memory_order_seq_cst) -
                                    hdr_->tail.load(std::memory_order_seq_cst));
  }
  bool empty() const { return used_bytes() == 0; }

  // Producer side. A frame of several parts is written as one frame.
  // Returns false if there is no room now (try_) or by the deadline (push).
  // Throws FrameTooLargeError if the frame could never fit, ClosedError if closed.
  bool try_push(std::initializer_list<Bytes> parts) { return push_span({parts.begin(), parts.size()}, nullptr); }
  bool push(std::initializer_list<Bytes> parts, const Deadline& d) {
    return push_span({parts.begin(), parts.size()}, &d);
  }
  bool try_push(Bytes frame) { return push_span({&frame, 1}, nullptr); }
  bool push(Bytes frame, const Deadline& d) { return push_span({&frame, 1}, &d); }
  bool push_span(std::span<const Bytes> parts, const Deadline* deadline);

  // Consumer side. `alloc(n)` returns where to copy an n-byte frame; it is called
  // once per frame. Returns false on timeout; throws ClosedError once the ring is
  // closed and drained, CorruptFrameError if the bytes are not a valid frame.
  template <class Alloc>
  bool pop(Alloc&& alloc, const Deadline& deadline) {
    if (!wait_readable(deadline)) return false;
    return pop_ready(alloc);
  }
  template <class Alloc>
  bool try_pop(Alloc&& alloc) {
    if (empty()) {
      if (is_closed()) throw ClosedError("ring is closed");
      return false;
    }
    return pop_ready(alloc);
  }
  // Pops a frame whose first `head_n` bytes go to `head` and the rest to
  // alloc(n - head_n): one copy for a frame made of a fixed header and a payload.
  // Throws CorruptFrameError if the frame is shorter than `head_n`.
  template <class Alloc>
  bool try_pop_split(void* head, std::size_t head_n, Alloc&& alloc) {
    if (empty()) {
      if (is_closed()) throw ClosedError("ring is closed");
      return false;
    }
    const uint64_t tail = hdr_->tail.load(std::memory_order_relaxed);
    const uint64_t head_pos = hdr_->head.load(std::memory_order_acquire);
    const std::size_t len = frame_length(tail, head_pos);
    if (len < head_n)
      throw CorruptFrameError("frame of " + std::to_string(len) + " bytes is shorter than its " +
                              std::to_string(head_n) + "-byte header");
    copy_out(tail + kFrameHeader, static_cast<std::byte*>(head), head_n);
    std::byte* dst = alloc(len - head_n);
    if (len > head_n) copy_out(tail + kFrameHeader + head_n, dst, len - head_n);
    release(tail, len);
    return true;
  }
  bool pop_vector(std::vector<std::byte>& out, const Deadline& deadline) {
    return pop([&](std::size_t n) { out.resize(n); return out.data(); }, deadline);
  }

  // Waits until a frame is available (true) or the deadline passes (false).
  // `poll`: poll before sleeping, as AdaptiveSpin allows (else sleep at once).
  bool wait_readable(const Deadline& deadline, bool poll = true);

  // Wakes both sides for good: pushes fail, pops drain what is left then fail.
  void close();
  bool is_closed() const { return hdr_->closed.load(std::memory_order_acquire) != 0; }
  // Whether the consumer is asleep waiting for a frame (a push would have to
  // wake it), as opposed to busy or polling. A hint: it may change at once.
  bool consumer_sleeping() const { return hdr_->readable.sleepers.load(std::memory_order_relaxed) != 0; }

  RingHeader* header() const { return hdr_; }
  // What is wrong with the header's magic or capacity now (what a process
  // attaching would read), compared with this ring's; nullopt while intact.
  std::optional<std::string> header_fault() const;

 private:
  SpscRing(RingHeader* hdr, std::byte* data, std::size_t cap) : hdr_(hdr), data_(data), cap_(cap) {}

  // Reads the next frame's length from `tail`; validates the positions and
  // the frame header against `head` (throws CorruptFrameError).
  std::size_t frame_length(uint64_t tail, uint64_t head) const;
  // Throws CorruptFrameError unless tail <= head <= tail + capacity, both 8-aligned.
  void check_positions(uint64_t head, uint64_t tail) const {
    if (head - tail > cap_ || ((head | tail) & 7) != 0) [[unlikely]]
      positions_corrupt(head, tail);
  }
  [[noreturn]] void positions_corrupt(uint64_t head, uint64_t tail) const;
  void copy_out(uint64_t pos, std::byte* dst, std::size_t n) const;
  void copy_in(uint64_t pos, const std::byte* src, std::size_t n);

  template <class Alloc>
  bool pop_ready(Alloc& alloc) {
    const uint64_t tail = hdr_->tail.load(std::memory_order_relaxed);
    const uint64_t head = hdr_->head.load(std::memory_order_acquire);
    const std::size_t len = frame_length(tail, head);
    std::byte* dst = alloc(len);
    if (len) copy_out(tail + kFrameHeader, dst, len);
    release(tail, len);
    return true;
  }
  void release(uint64_t tail, std::size_t len) {
    hdr_->tail.store(tail + frame_bytes(len), std::memory_order_seq_cst);
    hdr_->writable.notify_all();
  }

  static std::size_t frame_bytes(std::size_t len) { return kFrameHeader + ((len + 7) & ~std::size_t{7}); }

  RingHeader* hdr_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t cap_ = 0;
};

}  // namespace shoal
