#include "shoal/sched/pool_layout.hpp"

#include <new>

#include "shoal/ipc/errors.hpp"

namespace shoal {
namespace {

constexpr std::size_t align64(std::size_t n) { return (n + 63) & ~std::size_t{63}; }
constexpr std::size_t kHeaderBytes = align64(sizeof(PoolHeader));
constexpr std::size_t kStatusBytes = align64(sizeof(SlotStatus));

}  // namespace

std::size_t PoolLayout::ring_stride() const { return align64(SpscRing::bytes_needed(header().ring_bytes)); }

std::byte* PoolLayout::slot_base(uint32_t slot) const {
  return segment_.bytes() + kHeaderBytes + slot * (kStatusBytes + 2 * ring_stride());
}

PoolLayout PoolLayout::create(uint32_t slots, std::size_t ring_bytes) {
  const std::size_t stride = align64(SpscRing::bytes_needed(ring_bytes));
  auto seg = SharedSegment::create(kHeaderBytes + slots * (kStatusBytes + 2 * stride));
  auto* hdr = new (seg.data()) PoolHeader{};
  hdr->slots = slots;
  hdr->ring_bytes = ring_bytes;
  hdr->magic = PoolHeader::kMagic;
  PoolLayout layout(std::move(seg));
  for (uint32_t s = 0; s < slots; ++s) {
    new (layout.slot_base(s)) SlotStatus{};
    layout.reset_slot(s);
  }
  return layout;
}

PoolLayout PoolLayout::attach(const std::string& name) {
  PoolLayout layout(SharedSegment::attach(name));
  if (layout.segment_.size() < kHeaderBytes || layout.header().magic != PoolHeader::kMagic)
    throw CorruptFrameError("shared-memory segment '" + name + "' is not a shoal pool");
  return layout;
}

SlotStatus& PoolLayout::status(uint32_t slot) const { return *reinterpret_cast<SlotStatus*>(slot_base(slot)); }

void PoolLayout::reset_slot(uint32_t slot) const {
  std::byte* base = slot_base(slot) + kStatusBytes;
  SpscRing::init(base, header().ring_bytes);
  SpscRing::init(base + ring_stride(), header().ring_bytes);
  status(slot).running_job.store(0);
  status(slot).pid.store(0);
}

SpscRing PoolLayout::inbox(uint32_t slot) const { return SpscRing::attach(slot_base(slot) + kStatusBytes); }
SpscRing PoolLayout::outbox(uint32_t slot) const {
  return SpscRing::attach(slot_base(slot) + kStatusBytes + ring_stride());
}

}  // namespace shoal
