#include "shoal/ipc/ring.hpp"

#include <bit>
#include <new>
#include <string>

namespace shoal {
namespace {

constexpr uint32_t kCheck = 0x5a17f00dU;
constexpr std::size_t kDataOffset = (sizeof(RingHeader) + 63) & ~std::size_t{63};

}  // namespace

std::size_t SpscRing::bytes_needed(std::size_t capacity) {
  return kDataOffset + std::bit_ceil(std::max<std::size_t>(capacity, 64));
}

SpscRing SpscRing::init(void* mem, std::size_t capacity) {
  auto* hdr = new (mem) RingHeader{};
  const std::size_t cap = std::bit_ceil(std::max<std::size_t>(capacity, 64));
  hdr->capacity = cap;
  hdr->head.store(0);
  hdr->tail.store(0);
  hdr->closed.store(0);
  hdr->magic.store(RingHeader::kMagic, std::memory_order_release);
  return SpscRing(hdr, static_cast<std::byte*>(mem) + kDataOffset, cap);
}

SpscRing SpscRing::attach(void* mem, std::size_t mem_bytes, std::size_t expected_capacity) {
  auto* hdr = static_cast<RingHeader*>(mem);
  if (mem_bytes < kDataOffset + 64 || hdr->magic.load(std::memory_order_acquire) != RingHeader::kMagic)
    throw CorruptFrameError("memory does not hold a shoal ring");
  // Read once: the ring's bounds never come from shared memory again.
  const uint64_t cap = reinterpret_cast<volatile const uint64_t&>(hdr->capacity);
  if (!std::has_single_bit(cap) || cap < 64 || cap > mem_bytes - kDataOffset)
    throw CorruptFrameError("the ring's capacity (" + std::to_string(cap) + " bytes) does not fit its " +
                            std::to_string(mem_bytes) + " bytes of memory");
  if (expected_capacity && cap != std::bit_ceil(std::max<std::size_t>(expected_capacity, 64)))
    throw CorruptFrameError("the ring's capacity (" + std::to_string(cap) + " bytes) is not the " +
                            std::to_string(expected_capacity) + " bytes it was made with");
  return SpscRing(hdr, static_cast<std::byte*>(mem) + kDataOffset, static_cast<std::size_t>(cap));
}

std::optional<std::string> SpscRing::header_fault() const {
  if (hdr_->magic.load(std::memory_order_relaxed) != RingHeader::kMagic) return "its magic number was overwritten";
  const uint64_t cap = reinterpret_cast<volatile const uint64_t&>(hdr_->capacity);
  if (cap != cap_) return "its capacity says " + std::to_string(cap) + " bytes, not " + std::to_string(cap_);
  return std::nullopt;
}

void SpscRing::positions_corrupt(uint64_t head, uint64_t tail) const {
  throw CorruptFrameError("ring positions are inconsistent (head " + std::to_string(head) + ", tail " +
                          std::to_string(tail) + ", capacity " + std::to_string(cap_) + ")");
}

void SpscRing::copy_in(uint64_t pos, const std::byte* src, std::size_t n) {
  const std::size_t at = pos & (cap_ - 1);
  const std::size_t first = std::min(n, cap_ - at);
  std::memcpy(data_ + at, src, first);
  if (first < n) std::memcpy(data_, src + first, n - first);
}

void SpscRing::copy_out(uint64_t pos, std::byte* dst, std::size_t n) const {
  const std::size_t at = pos & (cap_ - 1);
  const std::size_t first = std::min(n, cap_ - at);
  std::memcpy(dst, data_ + at, first);
  if (first < n) std::memcpy(dst + first, data_, n - first);
}

bool SpscRing::push_span(std::span<const Bytes> parts, const Deadline* deadline) {
  std::size_t len = 0;
  for (const Bytes& p : parts) len += p.size();
  if (len > max_frame())
    throw FrameTooLargeError("frame of " + std::to_string(len) + " bytes exceeds the ring's limit of " +
                             std::to_string(max_frame()) + " bytes");
  if (is_closed()) throw ClosedError("ring is closed");
  const std::size_t need = frame_bytes(len);
  const uint64_t head = hdr_->head.load(std::memory_order_relaxed);
  uint64_t tail = hdr_->tail.load(std::memory_order_seq_cst);
  check_positions(head, tail);
  // Positions that turn inconsistent while waiting end the wait, to be reported.
  auto fits = [&] {
    tail = hdr_->tail.load(std::memory_order_seq_cst);
    return head - tail > cap_ || cap_ - (head - tail) >= need || is_closed();
  };
  if (cap_ - (head - tail) < need) {
    if (!deadline || !hdr_->writable.wait_until(fits, *deadline)) return false;
    check_positions(head, tail);
  }
  if (is_closed()) throw ClosedError("ring is closed");

  const uint32_t header[2] = {static_cast<uint32_t>(len), static_cast<uint32_t>(len) ^ kCheck};
  copy_in(head, reinterpret_cast<const std::byte*>(header), kFrameHeader);
  uint64_t pos = head + kFrameHeader;
  for (const Bytes& p : parts) {
    if (!p.empty()) copy_in(pos, p.data(), p.size());  // an empty part may have no data pointer
    pos += p.size();
  }
  hdr_->head.store(head + need, std::memory_order_seq_cst);
  hdr_->readable.notify_all();
  return true;
}

bool SpscRing::wait_readable(const Deadline& deadline, bool poll) {
  auto ready = [&] { return !empty() || is_closed(); };
  if (!hdr_->readable.wait_until(ready, deadline, poll)) return false;
  if (empty()) throw ClosedError("ring is closed");
  return true;
}

std::size_t SpscRing::frame_length(uint64_t tail, uint64_t head) const {
  check_positions(head, tail);
  // 0 only if garbage emptied the ring since the caller saw it non-empty: then
  // no frame header can pass the check below (a frame takes at least 8 bytes).
  const uint64_t used = head - tail;
  uint32_t header[2];
  copy_out(tail, reinterpret_cast<std::byte*>(header), kFrameHeader);
  const std::size_t len = header[0];
  if ((header[0] ^ kCheck) != header[1] || len > max_frame() || frame_bytes(len) > used)
    throw CorruptFrameError("corrupt frame in ring (length " + std::to_string(len) + ", " +
                            std::to_string(used) + " bytes pending)");
  return len;
}

void SpscRing::close() {
  hdr_->closed.store(1, std::memory_order_seq_cst);
  hdr_->readable.notify_all();
  hdr_->writable.notify_all();
}

}  // namespace shoal
