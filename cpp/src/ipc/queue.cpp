#include "shoal/ipc/queue.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>

#include "shoal/base/errors.hpp"
#include "shoal/ipc/notifier.hpp"
#include "shoal/ipc/robust_mutex.hpp"

namespace shoal {

// The queue's bookkeeping as of one committed operation. The oldest frame
// starts at `tail`; `used` bytes of frames follow it, wrapping at the end of
// the data area; they hold `count` messages.
struct QueueState {
  uint64_t tail;
  uint64_t used;
  uint64_t count;
};

// One copy of the bookkeeping in shared memory. Atomic fields so that readers
// outside the lock (wait predicates, size()) may look at it race-free.
struct QueueSlot {
  std::atomic<uint64_t> tail{0};
  std::atomic<uint64_t> used{0};
  std::atomic<uint64_t> count{0};
};

struct QueueHeader {
  static constexpr uint64_t kMagic = 0x73686f616c515545ULL;  // "shoalQUE"

  QueueHeader(uint64_t data_bytes_in, uint64_t max_message_in, uint64_t maxsize_in)
      : data_bytes(data_bytes_in), max_message(max_message_in), maxsize(maxsize_in) {}

  std::atomic<uint64_t> magic{0};  // stored last by the creator
  const uint64_t data_bytes;       // size of the frame area, a multiple of 8
  const uint64_t max_message;      // the capacity the creator asked for
  const uint64_t maxsize;          // message limit, 0 = none
  RobustMutex mutex;               // guards every change below and the frame area

  // Selects the current slot (generation & 1). An operation fills the other
  // slot and then increments the generation: that increment is its commit.
  alignas(64) std::atomic<uint64_t> generation{0};
  QueueSlot slots[2];
  std::atomic<uint32_t> closed{0};

  alignas(64) Notifier not_empty;  // bumped after a put commits, and on close
  alignas(64) Notifier not_full;   // bumped after a get commits, and on close
};

namespace {

constexpr uint64_t kFrameCheck = 0x5a17f00d0ddba11ULL;
constexpr std::size_t kDataOffset = (sizeof(QueueHeader) + 63) & ~std::size_t{63};
// Generous, and far from overflowing any size arithmetic below.
constexpr std::size_t kMaxCapacity = std::size_t{1} << 48;

constexpr std::size_t round8(std::size_t n) { return (n + 7) & ~std::size_t{7}; }
constexpr std::size_t frame_bytes(std::size_t len) { return SharedQueue::kFrameHeader + round8(len); }

// The data area holds one frame of the largest message, so that message
// always fits once the queue is empty: a put can wait, but never forever.
constexpr std::size_t data_bytes_for(std::size_t capacity) { return frame_bytes(capacity); }

// Written at the start of every frame; the check word catches a misread.
struct FrameHeader {
  uint64_t length;
  uint64_t check;
};
static_assert(sizeof(FrameHeader) == SharedQueue::kFrameHeader);

// Holds the queue's lock for one operation. A previous holder that died left
// the state consistent (it could only have written unpublished bytes or the
// idle slot), so previous_owner_died needs no repair.
class QueueLock {
 public:
  QueueLock(RobustMutex& mutex, const Deadline& deadline) : mutex_(mutex) {
    const auto left = deadline.remaining();
    const LockResult r = (left && left->count() == 0) ? mutex_.try_lock() : mutex_.lock(deadline);
    held_ = r != LockResult::timed_out;
  }
  ~QueueLock() {
    if (held_) mutex_.unlock();
  }
  QueueLock(const QueueLock&) = delete;
  QueueLock& operator=(const QueueLock&) = delete;

  bool held() const { return held_; }
  // Unlocks early, so that waking others happens outside the lock.
  void release() {
    if (held_) mutex_.unlock();
    held_ = false;
  }

 private:
  RobustMutex& mutex_;
  bool held_ = false;
};

// The committed state; the caller holds the lock, so the generation is stable.
QueueState read_locked(const QueueHeader& h) {
  const QueueSlot& s = h.slots[h.generation.load(std::memory_order_acquire) & 1];
  return {s.tail.load(std::memory_order_relaxed), s.used.load(std::memory_order_relaxed),
          s.count.load(std::memory_order_relaxed)};
}

// The committed state, read without the lock (a seqlock read): retried if a
// commit happened meanwhile. seq_cst throughout, so no fences are needed: a
// slot is rewritten only after the generation has moved past it, and seeing
// that rewrite would force the second generation load to see the move too.
QueueState read_snapshot(const QueueHeader& h) {
  for (;;) {
    const uint64_t before = h.generation.load(std::memory_order_seq_cst);
    const QueueSlot& s = h.slots[before & 1];
    QueueState st{s.tail.load(std::memory_order_seq_cst), s.used.load(std::memory_order_seq_cst),
                  s.count.load(std::memory_order_seq_cst)};
    if (h.generation.load(std::memory_order_seq_cst) == before) return st;
  }
}

// Publishes `next` (the caller holds the lock). Everything before the final
// store is invisible to other processes; the final store makes all of it visible.
void commit(QueueHeader& h, const QueueState& next) {
  const uint64_t gen = h.generation.load(std::memory_order_relaxed);
  QueueSlot& idle = h.slots[(gen + 1) & 1];
  idle.tail.store(next.tail, std::memory_order_seq_cst);
  idle.used.store(next.used, std::memory_order_seq_cst);
  idle.count.store(next.count, std::memory_order_seq_cst);
  h.generation.store(gen + 1, std::memory_order_seq_cst);
}

bool has_room(const QueueHeader& h, const QueueState& s, std::size_t need) {
  return h.data_bytes - s.used >= need && (h.maxsize == 0 || s.count < h.maxsize);
}

std::size_t total_length(std::span<const SharedQueue::Bytes> parts) {
  std::size_t len = 0;
  for (const auto& p : parts) len += p.size();
  return len;
}

}  // namespace

std::size_t SharedQueue::bytes_needed(std::size_t capacity_bytes) {
  return kDataOffset + data_bytes_for(capacity_bytes);
}

SharedQueue SharedQueue::create(std::size_t capacity_bytes, std::size_t maxsize) {
  if (capacity_bytes == 0) throw std::invalid_argument("queue capacity must be at least 1 byte");
  if (capacity_bytes > kMaxCapacity)
    throw std::invalid_argument("queue capacity of " + std::to_string(capacity_bytes) +
                                " bytes is more than the limit of " + std::to_string(kMaxCapacity));
  SharedQueue q;
  q.segment_ = SharedSegment::create(bytes_needed(capacity_bytes));
  q.hdr_ = new (q.segment_.data()) QueueHeader(data_bytes_for(capacity_bytes), capacity_bytes, maxsize);
  q.data_ = q.segment_.bytes() + kDataOffset;
  q.hdr_->magic.store(QueueHeader::kMagic, std::memory_order_release);
  return q;
}

SharedQueue SharedQueue::attach(const std::string& name) {
  SharedQueue q;
  q.segment_ = SharedSegment::attach(name);
  auto* hdr = static_cast<QueueHeader*>(q.segment_.data());
  const bool is_queue = q.segment_.size() >= kDataOffset &&
                        hdr->magic.load(std::memory_order_acquire) == QueueHeader::kMagic &&
                        hdr->data_bytes == data_bytes_for(hdr->max_message) &&
                        hdr->data_bytes <= q.segment_.size() - kDataOffset;
  if (!is_queue) throw CorruptFrameError("shared-memory segment '" + name + "' does not hold a shoal queue");
  q.hdr_ = hdr;
  q.data_ = q.segment_.bytes() + kDataOffset;
  return q;
}

SharedQueue::SharedQueue(SharedQueue&& other) noexcept
    : segment_(std::move(other.segment_)),
      hdr_(std::exchange(other.hdr_, nullptr)),
      data_(std::exchange(other.data_, nullptr)) {}

SharedQueue& SharedQueue::operator=(SharedQueue&& other) noexcept {
  if (this != &other) {
    segment_ = std::move(other.segment_);
    hdr_ = std::exchange(other.hdr_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
  }
  return *this;
}

std::size_t SharedQueue::capacity() const { return hdr_->max_message; }
std::size_t SharedQueue::maxsize() const { return hdr_->maxsize; }
std::size_t SharedQueue::size() const { return read_snapshot(*hdr_).count; }
std::size_t SharedQueue::used_bytes() const { return read_snapshot(*hdr_).used; }

bool SharedQueue::full() const { return !has_room(*hdr_, read_snapshot(*hdr_), frame_bytes(0)); }

bool SharedQueue::is_closed() const { return hdr_->closed.load(std::memory_order_seq_cst) != 0; }

void SharedQueue::close() {
  hdr_->closed.store(1, std::memory_order_seq_cst);
  hdr_->not_empty.notify_all();
  hdr_->not_full.notify_all();
}

void SharedQueue::check_fits_ever(std::size_t len) const {
  if (len > hdr_->max_message)
    throw FrameTooLargeError("message of " + std::to_string(len) + " bytes is larger than the queue's capacity of " +
                             std::to_string(hdr_->max_message) + " bytes");
}

void SharedQueue::copy_in(uint64_t offset, const std::byte* src, std::size_t n) {
  const std::size_t first = std::min<std::size_t>(n, hdr_->data_bytes - offset);
  if (first) std::memcpy(data_ + offset, src, first);
  if (first < n) std::memcpy(data_, src + first, n - first);
}

void SharedQueue::copy_out(uint64_t offset, std::byte* dst, std::size_t n) const {
  const std::size_t first = std::min<std::size_t>(n, hdr_->data_bytes - offset);
  if (first) std::memcpy(dst, data_ + offset, first);
  if (first < n) std::memcpy(dst + first, data_, n - first);
}

QueueAttempt SharedQueue::try_put_parts(std::span<const Bytes> parts, const Deadline& lock_deadline) {
  const std::size_t len = total_length(parts);
  check_fits_ever(len);
  if (is_closed()) throw ClosedError("queue is closed");
  const std::size_t need = frame_bytes(len);

  QueueLock lock(hdr_->mutex, lock_deadline);
  if (!lock.held()) return QueueAttempt::lock_busy;
  // Checked under the lock too: a get that saw the queue closed and empty must
  // never be followed by a put that lands.
  if (is_closed()) throw ClosedError("queue is closed");
  const QueueState s = read_locked(*hdr_);
  if (!has_room(*hdr_, s, need)) return QueueAttempt::would_block;

  // Write the frame into free space beyond the published end...
  const uint64_t size = hdr_->data_bytes;
  const uint64_t head = (s.tail + s.used) % size;
  const FrameHeader fh{len, len ^ kFrameCheck};
  copy_in(head, reinterpret_cast<const std::byte*>(&fh), sizeof fh);
  uint64_t pos = (head + sizeof fh) % size;
  for (const Bytes& p : parts) {
    copy_in(pos, p.data(), p.size());
    pos = (pos + p.size()) % size;
  }
  // ...then publish it with one store.
  commit(*hdr_, {s.tail, s.used + need, s.count + 1});
  lock.release();
  hdr_->not_empty.notify_all();
  return QueueAttempt::done;
}

bool SharedQueue::put_parts(std::span<const Bytes> parts, const Deadline& deadline) {
  const std::size_t len = total_length(parts);
  for (;;) {
    switch (try_put_parts(parts, deadline)) {
      case QueueAttempt::done:
        return true;
      case QueueAttempt::lock_busy:
        return false;
      case QueueAttempt::would_block:
        break;
    }
    if (!wait_not_full(len, deadline.capped(kRecheckPeriod)) && deadline.expired()) return false;
  }
}

QueueAttempt SharedQueue::try_get_raw(AllocFn alloc, void* context, const Deadline& lock_deadline) {
  QueueLock lock(hdr_->mutex, lock_deadline);
  if (!lock.held()) return QueueAttempt::lock_busy;
  const QueueState s = read_locked(*hdr_);
  if (s.count == 0) {
    if (is_closed()) throw ClosedError("queue is closed");
    return QueueAttempt::would_block;
  }

  const uint64_t size = hdr_->data_bytes;
  FrameHeader fh;
  if (s.used < sizeof fh || s.used > size || s.tail >= size)
    throw CorruptFrameError("queue bookkeeping is inconsistent (" + std::to_string(s.used) + " bytes used of " +
                            std::to_string(size) + ")");
  copy_out(s.tail, reinterpret_cast<std::byte*>(&fh), sizeof fh);
  if ((fh.length ^ kFrameCheck) != fh.check || fh.length > hdr_->max_message || frame_bytes(fh.length) > s.used)
    throw CorruptFrameError("corrupt message header in queue (length " + std::to_string(fh.length) + ", " +
                            std::to_string(s.used) + " bytes queued)");

  // Copy the message out (if alloc throws, nothing has changed)...
  const std::size_t len = fh.length;
  std::byte* dst = alloc(context, len);
  if (len) copy_out((s.tail + sizeof fh) % size, dst, len);
  // ...then release its space with one store.
  const std::size_t freed = frame_bytes(len);
  commit(*hdr_, {(s.tail + freed) % size, s.used - freed, s.count - 1});
  lock.release();
  hdr_->not_full.notify_all();
  return QueueAttempt::done;
}

bool SharedQueue::get_raw(AllocFn alloc, void* context, const Deadline& deadline) {
  for (;;) {
    switch (try_get_raw(alloc, context, deadline)) {
      case QueueAttempt::done:
        return true;
      case QueueAttempt::lock_busy:
        return false;
      case QueueAttempt::would_block:
        break;
    }
    if (!wait_not_empty(deadline.capped(kRecheckPeriod)) && deadline.expired()) return false;
  }
}

bool SharedQueue::wait_not_empty(const Deadline& deadline) {
  auto ready = [&] { return read_snapshot(*hdr_).count > 0 || is_closed(); };
  return hdr_->not_empty.wait_until(ready, deadline);
}

bool SharedQueue::wait_not_full(std::size_t message_bytes, const Deadline& deadline) {
  const std::size_t need = frame_bytes(std::min<std::size_t>(message_bytes, hdr_->max_message));
  auto ready = [&] { return has_room(*hdr_, read_snapshot(*hdr_), need) || is_closed(); };
  return hdr_->not_full.wait_until(ready, deadline);
}

}  // namespace shoal
