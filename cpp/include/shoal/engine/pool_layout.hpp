#pragma once
// The pool's one shared-memory segment: a header with the parent's doorbell,
// then one slot per worker with its status words, inbox ring and outbox ring.
// A slot outlives the worker in it: a replacement worker gets the same slot
// with freshly formatted rings.
//
// Another process of the same user can write anything into the segment. The
// layout's geometry (slots, ring size, where each slot lies) is therefore read
// from the header once, when the segment is created or attached, checked
// against the segment's real size, and kept in this process's memory: no later
// write to the header can move a slot or a ring out of the mapping. The
// header itself is compared against that copy by header_fault(), which the
// engine calls every round (a corrupt header breaks the pool).
//
// Versions. Processes other than the pool's own workers will attach to pools
// (tools such as `shoal top`), and they may come from another build of shoal.
// So the header starts with two words whose place never changes, whatever
// the layout: the magic number (offset 0, 8 bytes) and the layout version
// (offset 8, 4 bytes). Any change to what follows (the header, the slots,
// the rings, the status words) takes a new kVersion. attach() reads those two
// words first, from the first 16 bytes alone, and refuses a pool of another
// version with LayoutVersionError before it reads anything else, so a newer
// layout's header (longer, shorter, reordered) is never misread.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "shoal/base/errors.hpp"
#include "shoal/ipc/notifier.hpp"
#include "shoal/ipc/ring.hpp"
#include "shoal/ipc/segment.hpp"

namespace shoal {

struct PoolHeader {
  static constexpr uint64_t kMagic = 0x73686f616c504f4fULL;  // "shoalPOO"
  static constexpr uint32_t kVersion = 4;                     // of this layout
  // Where the two words every version keeps lie (see the top of this file).
  static constexpr std::size_t kMagicOffset = 0;
  static constexpr std::size_t kVersionOffset = 8;
  static constexpr std::size_t kIdentityBytes = 16;  // what attach() reads before the version is known
  uint64_t magic;
  uint32_t version;
  uint32_t slots;
  uint64_t ring_bytes;     // as asked for; each ring's capacity is its power of two
  uint64_t segment_bytes;  // what the layout needs (the segment may be a little larger)
  // The pool's stats block (shoal/obs/stats_block.hpp), NUL-terminated; a
  // worker attaches it by this name (a name it cannot attach: it keeps its
  // stats privately, the pool runs on).
  char stats_name[64];
  // Workers ring this after publishing a result; the parent's engine sleeps on it.
  alignas(64) Notifier doorbell;
};

static_assert(offsetof(PoolHeader, magic) == PoolHeader::kMagicOffset, "the magic word never moves");
static_assert(offsetof(PoolHeader, version) == PoolHeader::kVersionOffset, "the version word never moves");
static_assert(sizeof(PoolHeader::magic) == 8 && sizeof(PoolHeader::version) == 4);

// A segment that holds a shoal pool of another layout version than this
// build's: made by another version of shoal. A CorruptFrameError (the
// segment is not a pool this process can use), so code that handles that
// handles this; tools can tell it apart.
struct LayoutVersionError : CorruptFrameError {
  LayoutVersionError(const std::string& what, uint32_t found) : CorruptFrameError(what), found(found) {}
  uint32_t found;                             // the pool's layout version
  uint32_t expected = PoolHeader::kVersion;  // this build's
};

// Written by the worker, read by the parent: which job runs right now, so that
// after a crash the parent knows which job was to blame, and for a map chunk
// which of its items. Only ever compared with the engine's own job ids and
// item counts, never used as an index.
struct SlotStatus {
  alignas(64) std::atomic<uint64_t> running_job;  // 0 when idle
  std::atomic<uint64_t> started_ns;               // CLOCK_MONOTONIC when it started
  std::atomic<uint32_t> pid;
  // 1 + the CPU the worker ran on when it last took a frame or began to wait
  // for one (0: not known yet). A hint for the parent: polling for a result
  // of a worker on the poller's own CPU only keeps the worker off it.
  // (In what was padding: the layout's offsets did not change.)
  std::atomic<uint32_t> cpu;
  // 1 + the index in its chunk of the map item being run; 0 when none is
  // (before the first item, between items and the chunk's end, idle). Stored
  // relaxed before each item: only read once the worker is dead.
  std::atomic<uint64_t> running_item;
  // 1 + the CPU of the parent thread that last sent this worker a frame: the
  // worker does not poll for its next frame on that CPU either.
  std::atomic<uint32_t> parent_cpu;
};

static_assert(sizeof(SlotStatus) == 64, "the CPU hints live in what was padding: no offset moves");

class PoolLayout {
 public:
  // Limits that attach() enforces on a header (create() never exceeds them).
  static constexpr uint32_t kMaxSlots = 1u << 16;
  static constexpr uint64_t kMaxRingBytes = uint64_t{1} << 40;

  static PoolLayout create(uint32_t slots, std::size_t ring_bytes, std::string_view stats_name = {});
  // Throws LayoutVersionError if the segment holds a pool of another layout
  // version, CorruptFrameError if it holds no pool, or one whose geometry
  // does not fit it.
  static PoolLayout attach(const std::string& name);

  PoolHeader& header() const { return *static_cast<PoolHeader*>(segment_.data()); }
  // The geometry, as created or checked at attach (never re-read).
  uint32_t slots() const { return slots_; }
  std::size_t ring_capacity() const { return ring_capacity_; }
  // What is wrong with the header now, compared with what was created or
  // attached (magic, version, slots, sizes); nullopt while it is intact.
  std::optional<std::string> header_fault() const;

  // The stats block's name from the header (bounded; empty if none).
  std::string stats_name() const;
  SlotStatus& status(uint32_t slot) const;
  // Formats both rings of a slot anew (parent only, while no worker uses it).
  void reset_slot(uint32_t slot) const;
  SpscRing inbox(uint32_t slot) const;
  SpscRing outbox(uint32_t slot) const;
  const SharedSegment& segment() const { return segment_; }
  // Removes the segment's name once no new process needs to attach.
  void unlink() { segment_.unlink(); }

 private:
  PoolLayout(SharedSegment seg, uint32_t slots, uint64_t ring_bytes);
  std::byte* slot_base(uint32_t slot) const;
  SpscRing ring_at(std::byte* base) const;
  SharedSegment segment_;
  uint32_t slots_ = 0;
  uint64_t ring_bytes_ = 0;
  std::size_t ring_capacity_ = 0;
  std::size_t ring_stride_ = 0;
  std::size_t layout_bytes_ = 0;
};

}  // namespace shoal
