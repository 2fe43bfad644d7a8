#include "shoal/engine/pool_layout.hpp"

#include <bit>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>

#include "shoal/base/errors.hpp"

namespace shoal {
namespace {

constexpr std::size_t align64(std::size_t n) { return (n + 63) & ~std::size_t{63}; }
constexpr std::size_t kHeaderBytes = align64(sizeof(PoolHeader));
constexpr std::size_t kStatusBytes = align64(sizeof(SlotStatus));

// Within PoolLayout's limits (2^16 slots, 2^40 ring bytes) none of this overflows.
std::size_t ring_stride_for(uint64_t ring_bytes) { return align64(SpscRing::bytes_needed(ring_bytes)); }
std::size_t layout_bytes_for(uint32_t slots, uint64_t ring_bytes) {
  return kHeaderBytes + std::size_t{slots} * (kStatusBytes + 2 * ring_stride_for(ring_bytes));
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016" PRIx64, v);
  return buf;
}

// Reads a header field once (another process may be writing it).
template <class T>
T read_once(const T& field) {
  return reinterpret_cast<const volatile T&>(field);
}

}  // namespace

PoolLayout::PoolLayout(SharedSegment seg, uint32_t slots, uint64_t ring_bytes)
    : segment_(std::move(seg)),
      slots_(slots),
      ring_bytes_(ring_bytes),
      ring_capacity_(std::bit_ceil(std::max<std::size_t>(ring_bytes, 64))),
      ring_stride_(ring_stride_for(ring_bytes)),
      layout_bytes_(layout_bytes_for(slots, ring_bytes)) {}

std::byte* PoolLayout::slot_base(uint32_t slot) const {
  return segment_.bytes() + kHeaderBytes + slot * (kStatusBytes + 2 * ring_stride_);
}

PoolLayout PoolLayout::create(uint32_t slots, std::size_t ring_bytes, std::string_view stats_name) {
  if (slots == 0 || slots > kMaxSlots) throw std::invalid_argument("a pool has 1 to 65536 worker slots");
  if (ring_bytes > kMaxRingBytes) throw std::invalid_argument("ring_bytes is too large");
  const std::size_t total = layout_bytes_for(slots, ring_bytes);
  auto seg = SharedSegment::create(total);
  auto* hdr = new (seg.data()) PoolHeader{};
  hdr->version = PoolHeader::kVersion;
  hdr->slots = slots;
  hdr->ring_bytes = ring_bytes;
  hdr->segment_bytes = total;
  if (stats_name.size() >= sizeof hdr->stats_name) throw std::invalid_argument("stats block name is too long");
  std::memcpy(hdr->stats_name, stats_name.data(), stats_name.size());
  hdr->magic = PoolHeader::kMagic;
  PoolLayout layout(std::move(seg), slots, ring_bytes);
  for (uint32_t s = 0; s < slots; ++s) {
    new (layout.slot_base(s)) SlotStatus{};
    layout.reset_slot(s);
  }
  return layout;
}

PoolLayout PoolLayout::attach(const std::string& name) {
  SharedSegment seg = SharedSegment::attach(name);
  const std::string what = "shared-memory segment '" + seg.name() + "' ";
  // The identity words first, read from where every layout version keeps
  // them: only then is it known how the rest is laid out.
  if (seg.size() < PoolHeader::kIdentityBytes) throw CorruptFrameError(what + "is too small to be a shoal pool");
  uint64_t magic;
  uint32_t version;
  std::memcpy(&magic, seg.bytes() + PoolHeader::kMagicOffset, sizeof magic);
  std::memcpy(&version, seg.bytes() + PoolHeader::kVersionOffset, sizeof version);
  if (magic != PoolHeader::kMagic) throw CorruptFrameError(what + "is not a shoal pool");
  if (version != PoolHeader::kVersion)
    throw LayoutVersionError(what + "holds a shoal pool of layout version " + std::to_string(version) +
                                 ", but this shoal reads layout version " + std::to_string(PoolHeader::kVersion) +
                                 " only: the pool was made by another version of shoal",
                             version);
  if (seg.size() < kHeaderBytes) throw CorruptFrameError(what + "is too small to be a shoal pool");
  const auto& hdr = *static_cast<const PoolHeader*>(seg.data());
  const uint32_t slots = read_once(hdr.slots);
  const uint64_t ring_bytes = read_once(hdr.ring_bytes);
  const uint64_t segment_bytes = read_once(hdr.segment_bytes);
  if (slots == 0 || slots > kMaxSlots || ring_bytes > kMaxRingBytes ||
      segment_bytes != layout_bytes_for(slots, ring_bytes) || segment_bytes > seg.size())
    throw CorruptFrameError(what + "has a corrupt pool header (" + std::to_string(slots) + " slots, rings of " +
                            std::to_string(ring_bytes) + " bytes, " + std::to_string(segment_bytes) + " of its " +
                            std::to_string(seg.size()) + " bytes)");
  return PoolLayout(std::move(seg), slots, ring_bytes);
}

std::optional<std::string> PoolLayout::header_fault() const {
  const PoolHeader& h = header();
  const uint64_t magic = read_once(h.magic);
  if (magic != PoolHeader::kMagic) return "the pool header's magic number is " + hex(magic) + ", not " + hex(PoolHeader::kMagic);
  const uint32_t version = read_once(h.version);
  if (version != PoolHeader::kVersion)
    return "the pool header's layout version is " + std::to_string(version) + ", not " +
           std::to_string(PoolHeader::kVersion);
  const uint32_t slots = read_once(h.slots);
  const uint64_t ring_bytes = read_once(h.ring_bytes);
  const uint64_t segment_bytes = read_once(h.segment_bytes);
  if (slots != slots_ || ring_bytes != ring_bytes_ || segment_bytes != layout_bytes_)
    return "the pool header says " + std::to_string(slots) + " slots, rings of " + std::to_string(ring_bytes) +
           " bytes and " + std::to_string(segment_bytes) + " bytes in all; the pool has " + std::to_string(slots_) +
           ", " + std::to_string(ring_bytes_) + " and " + std::to_string(layout_bytes_);
  return std::nullopt;
}

std::string PoolLayout::stats_name() const {
  char name[sizeof(PoolHeader::stats_name)];
  std::memcpy(name, header().stats_name, sizeof name);  // another process may write it: copy, then bound
  return std::string(name, strnlen(name, sizeof name));
}

SlotStatus& PoolLayout::status(uint32_t slot) const { return *reinterpret_cast<SlotStatus*>(slot_base(slot)); }

void PoolLayout::reset_slot(uint32_t slot) const {
  std::byte* base = slot_base(slot) + kStatusBytes;
  SpscRing::init(base, ring_capacity_);
  SpscRing::init(base + ring_stride_, ring_capacity_);
  status(slot).running_job.store(0);
  status(slot).running_item.store(0);
  status(slot).pid.store(0);
}

SpscRing PoolLayout::ring_at(std::byte* base) const { return SpscRing::attach(base, ring_stride_, ring_capacity_); }
SpscRing PoolLayout::inbox(uint32_t slot) const { return ring_at(slot_base(slot) + kStatusBytes); }
SpscRing PoolLayout::outbox(uint32_t slot) const { return ring_at(slot_base(slot) + kStatusBytes + ring_stride_); }

}  // namespace shoal
