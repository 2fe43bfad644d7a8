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
  hdr->capacity = std::bit_ceil(std::max<std::size_t>(capacity, 64));
  hdr->head.store(0);
  hdr->tail.store(0);
  hdr->closed.store(0);
  hdr->magic.store(RingHeader::kMagic, std::memory_order_release);
  return SpscRing(hdr, static_cast<std::byte*>(mem) + kDataOffset);
}

SpscRing SpscRing::attach(void* mem) {
  auto* hdr = static_cast<RingHeader*>(mem);
  if (hdr->magic.load(std::memory_order_acquire) != RingHeader::kMagic || !std::has_single_bit(hdr->capacity))
    throw CorruptFrameError("memory does not hold a shoal ring");
  return SpscRing(hdr, static_cast<std::byte*>(mem) + kDataOffset);
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
  auto fits = [&] {
    return cap_ - (head - hdr_->tail.load(std::memory_order_seq_cst)) >= need || is_closed();
  };
  if (!fits()) {
    if (!deadline || !hdr_->writable.wait_until(fits, *deadline)) return false;
  }
  if (is_closed()) throw ClosedError("ring is closed");

  const uint32_t header[2] = {static_cast<uint32_t>(len), static_cast<uint32_t>(len) ^ kCheck};
  copy_in(head, reinterpret_cast<const std::byte*>(header), kFrameHeader);
  uint64_t pos = head + kFrameHeader;
  for (const Bytes& p : parts) {
    copy_in(pos, p.data(), p.size());
    pos += p.size();
  }
  hdr_->head.store(head + need, std::memory_order_seq_cst);
  hdr_->readable.notify_all();
  return true;
}

bool SpscRing::wait_readable(const Deadline& deadline) {
  auto ready = [&] { return !empty() || is_closed(); };
  if (!hdr_->readable.wait_until(ready, deadline)) return false;
  if (empty()) throw ClosedError("ring is closed");
  return true;
}

std::size_t SpscRing::frame_length(uint64_t tail, uint64_t head) const {
  const uint64_t used = head - tail;
  uint32_t header[2];
  if (used < kFrameHeader || used > cap_) throw CorruptFrameError("ring positions are inconsistent");
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
