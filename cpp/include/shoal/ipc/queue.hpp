#pragma once
// A bounded multi-producer multi-consumer queue of variable-length byte
// messages in one shared-memory segment, usable by any number of processes
// that attach by name.
//
// Crash safety is the point of the design. Every put and get runs under one
// process-shared robust mutex and commits with a single final store:
//   - a producer writes its frame into the free space beyond the published end,
//     then publishes it;
//   - a consumer copies its frame out, then releases the space.
// "Publish" and "release" are the same step: the queue's bookkeeping (where the
// oldest frame starts, how many bytes and messages are queued) lives in two
// slots, and an operation writes the new bookkeeping into the idle slot and then
// flips a generation counter to select it. A process killed at any instant
// therefore leaves either the old or the new state, never a torn one, and the
// next locker (told previous_owner_died) just carries on. A killed consumer can
// lose at most the one message it had taken; it can never wedge the queue.
//
// Blocking uses two Notifiers (not_empty, not_full). Waits re-check the state
// at least every kRecheckPeriod, so a process killed between its commit and its
// wake-up call delays a sleeper by that much at worst, and never strands it.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "shoal/base/deadline.hpp"
#include "shoal/ipc/segment.hpp"

namespace shoal {

struct QueueHeader;  // the layout in shared memory; see queue.cpp

// What a single attempt at a put or get did (attempts never wait for room or
// messages, only, up to a deadline, for the lock).
enum class QueueAttempt {
  done,         // the message was put, or taken
  would_block,  // no room for it (put), or no message (get), right now
  lock_busy,    // another thread or process held the lock past the lock deadline
};

class SharedQueue {
 public:
  using Bytes = std::span<const std::byte>;

  static constexpr std::size_t kDefaultCapacity = std::size_t{1} << 20;
  // Each message costs this many bytes of header plus padding to 8 bytes.
  static constexpr std::size_t kFrameHeader = 16;
  // The longest a waiter sleeps before looking at the queue again on its own.
  static constexpr std::chrono::milliseconds kRecheckPeriod{50};

  // Creates a queue in a new segment. `capacity_bytes` is the largest message
  // it accepts and, roughly, the bytes it holds in total; `maxsize` caps the
  // number of messages (0 = limited by bytes only). The creating process owns
  // the segment's name and unlinks it when this object is destroyed.
  static SharedQueue create(std::size_t capacity_bytes = kDefaultCapacity, std::size_t maxsize = 0);
  // Attaches to a queue another process created; throws NotFoundError if the
  // name does not exist and CorruptFrameError if it does not hold a queue.
  static SharedQueue attach(const std::string& name);
  // Bytes of shared memory a queue with this capacity needs.
  static std::size_t bytes_needed(std::size_t capacity_bytes);

  SharedQueue() = default;
  SharedQueue(SharedQueue&& other) noexcept;
  SharedQueue& operator=(SharedQueue&& other) noexcept;
  SharedQueue(const SharedQueue&) = delete;
  SharedQueue& operator=(const SharedQueue&) = delete;
  ~SharedQueue() = default;

  const std::string& name() const { return segment_.name(); }
  bool owns_name() const { return segment_.owns_name(); }
  SharedSegment& segment() { return segment_; }

  // The largest message, in bytes, the queue accepts.
  std::size_t capacity() const;
  // The most messages it holds at once; 0 means no limit besides bytes.
  std::size_t maxsize() const;

  // Snapshots: exact at some instant during the call, possibly stale after it.
  std::size_t size() const;        // messages queued
  std::size_t used_bytes() const;  // bytes queued, headers and padding included
  bool empty() const { return size() == 0; }
  // No room for another message: maxsize reached, or not even an empty
  // message would fit (a bigger message can fail to fit earlier).
  bool full() const;

  // --- Producer side ---------------------------------------------------------
  // A message in several parts is stored (and later taken) as one message.
  // Every put throws FrameTooLargeError when the message exceeds capacity(),
  // whatever the state of the queue, and ClosedError once the queue is closed.

  // One attempt: waits for the lock until `lock_deadline`, never for room.
  QueueAttempt try_put(Bytes message, const Deadline& lock_deadline = Deadline::never()) {
    return try_put_parts({&message, 1}, lock_deadline);
  }
  QueueAttempt try_put_parts(std::span<const Bytes> parts, const Deadline& lock_deadline = Deadline::never());
  // Waits for room until the deadline; false if there was none by then.
  bool put(Bytes message, const Deadline& deadline) { return put_parts({&message, 1}, deadline); }
  bool put_parts(std::span<const Bytes> parts, const Deadline& deadline);

  // --- Consumer side ---------------------------------------------------------
  // `alloc(n)` returns where to copy the next n-byte message; it is called once
  // per message taken, while the lock is held. If it throws, the message stays
  // in the queue. Once the queue is closed and drained, gets throw ClosedError.

  // One attempt: waits for the lock until `lock_deadline`, never for a message.
  template <class Alloc>
  QueueAttempt try_get(Alloc&& alloc, const Deadline& lock_deadline = Deadline::never()) {
    return try_get_raw(&call_alloc<std::remove_reference_t<Alloc>>, erase(alloc), lock_deadline);
  }
  // Waits for a message until the deadline; false if none came by then.
  template <class Alloc>
  bool get(Alloc&& alloc, const Deadline& deadline) {
    return get_raw(&call_alloc<std::remove_reference_t<Alloc>>, erase(alloc), deadline);
  }
  bool get_vector(std::vector<std::byte>& out, const Deadline& deadline) {
    return get([&](std::size_t n) { out.resize(n); return out.data(); }, deadline);
  }

  // Waits (without taking the lock) until a message is visible or the queue is
  // closed (true), or the deadline passes (false). For callers that must wait
  // in one context and copy out in another (Python: without, then with the GIL).
  bool wait_not_empty(const Deadline& deadline);
  // The same for room for a message of `message_bytes`.
  bool wait_not_full(std::size_t message_bytes, const Deadline& deadline);

  // Closes the queue for every process: puts throw ClosedError from now on,
  // gets drain what is queued and then throw. Wakes every waiter. Idempotent.
  void close();
  bool is_closed() const;

 private:
  using AllocFn = std::byte* (*)(void* context, std::size_t n);

  template <class Alloc>
  static std::byte* call_alloc(void* context, std::size_t n) {
    return (*static_cast<Alloc*>(context))(n);
  }
  template <class Alloc>
  static void* erase(Alloc& alloc) {
    return const_cast<void*>(static_cast<const void*>(std::addressof(alloc)));
  }

  QueueAttempt try_get_raw(AllocFn alloc, void* context, const Deadline& lock_deadline);
  bool get_raw(AllocFn alloc, void* context, const Deadline& deadline);
  // Throws FrameTooLargeError unless `len` bytes of message can ever fit.
  void check_fits_ever(std::size_t len) const;

  void copy_in(uint64_t offset, const std::byte* src, std::size_t n);
  void copy_out(uint64_t offset, std::byte* dst, std::size_t n) const;

  SharedSegment segment_;
  QueueHeader* hdr_ = nullptr;
  std::byte* data_ = nullptr;
};

}  // namespace shoal
