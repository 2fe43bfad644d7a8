#pragma once
// The arena's layout in shared memory: the control segment and the header in
// front of every block of a pooled segment. Private to cpp/src/mem.
//
// Authoritative state (a process dying between two stores must leave it
// consistent, so each change is one aligned store made last):
//   - SlotRecord::kind of every slot;
//   - in a pooled segment, the chain of BlockHeader::span from offset 0 to the
//     end, and each header's `state` word;
//   - the reference counts.
// Derived state (rebuilt by recovery when a process dies holding the mutex):
//   - the free lists (bins, next_free/prev_free/bin) and prev_span;
//   - used_bytes, mapped_bytes, pooled_segments.
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "shoal/ipc/robust_mutex.hpp"
#include "shoal/mem/arena.hpp"

namespace shoal::arena_detail {

inline constexpr uint64_t kControlMagic = 0x314e524165616f68ULL;  // "hoaeARN1"
inline constexpr uint32_t kLayoutVersion = 2;  // 2: memfd-backed segments
inline constexpr uint64_t kUsedWord = 0x444553556c616f68ULL;  // a used block's state word
inline constexpr uint64_t kFreeWord = 0x45455246616f6873ULL;  // a free block's state word
inline constexpr uint64_t kHeaderBytes = 64;
inline constexpr uint64_t kMinSpan = kHeaderBytes + SharedArena::kAlignment;
inline constexpr uint64_t kNil = ~uint64_t{0};
inline constexpr int kBins = 64;  // bin b holds free blocks with 2^b <= span < 2^(b+1)
inline constexpr int kOffsetBits = 40;
inline constexpr uint64_t kOffsetMask = (uint64_t{1} << kOffsetBits) - 1;

// A reference count at or past this is garbage (or one more would overflow it).
inline constexpr uint32_t kMaxRefs = 0xffff0000u;

// Validation of what is read from shared memory. Another process of the user
// may have written anything there; the geometry each check uses (a segment's
// size) is this process's own, learned when it mapped the segment.
// A header can be read at `off` in a segment of `end` bytes.
inline bool header_fits(uint64_t off, uint64_t end) {
  return off % kHeaderBytes == 0 && off < end && end - off >= kHeaderBytes;
}
// A block of `span` bytes (header included) can start at `off`.
inline bool span_fits(uint64_t off, uint64_t span, uint64_t end) {
  return span >= kMinSpan && span % SharedArena::kAlignment == 0 && off <= end && span <= end - off;
}

// A store to a commit word: one aligned store, which neither the compiler nor
// the CPU moves before the stores it publishes.
inline void commit(uint64_t& word, uint64_t value) {
  std::atomic_ref<uint64_t>(word).store(value, std::memory_order_release);
}

// A free-list link: slot index and header offset in one word.
inline uint64_t block_ref(uint32_t slot, uint64_t header_offset) {
  return (uint64_t{slot} << kOffsetBits) | header_offset;
}
inline uint32_t ref_slot(uint64_t ref) { return static_cast<uint32_t>(ref >> kOffsetBits); }
inline uint64_t ref_offset(uint64_t ref) { return ref & kOffsetMask; }

enum SlotKind : uint32_t {
  kEmpty = 0,
  kCreating = 1,   // name reserved; the segment may or may not exist yet
  kPooled = 2,     // a segment of blocks
  kDedicated = 3,  // one huge block; refs and generation live in the slot
  kDying = 4,      // its block was freed; the name is being unlinked
};

enum SlotPurpose : uint32_t { kForPool = 0, kForBlock = 1 };

// What a segment is (see arena_segments.cpp). Zero is a name in /dev/shm, so
// that a slot never given a backing reads as the old kind.
enum SlotBacking : uint32_t { kBackedByName = 0, kBackedByMemfd = 1 };

// A memfd made by a process other than the owner, on its way into the owner's
// descriptor table (arena_segments.cpp).
enum Handoff : uint32_t {
  kHandoffNone = 0,
  kHandoffRequested = 1,  // the creator asks the owner to take it
  kHandoffAdopting = 2,   // the owner's service is opening it
  kHandoffAdopted = 3,    // the owner holds it as adopted_fd
  kHandoffRefused = 4,    // the owner could not open it
  kHandoffAbandoned = 5,  // the creator stopped waiting
};

struct SlotRecord {
  std::atomic<uint32_t> kind;
  std::atomic<uint32_t> refs;         // dedicated: the block's reference count
  std::atomic<uint64_t> generation;   // dedicated: the block's generation
  uint64_t bytes;                     // the segment's size
  uint64_t block_size;                // dedicated: the size asked for
  std::atomic<int32_t> creator;       // the process creating it (kCreating)
  uint32_t purpose;                   // SlotPurpose
  char name[48];                      // "shoal-<owner pid>-<hex>", NUL-terminated (a memfd's label)
  // Written by the creator before the kind commit; read by openers after it.
  std::atomic<uint32_t> backing;      // SlotBacking
  std::atomic<int32_t> owner_fd;      // memfd: its descriptor in the owner (/proc/<owner>/fd/<n>)
  std::atomic<uint64_t> file_ino;     // memfd: the file's identity, which every opener checks
  std::atomic<uint64_t> file_dev;
  // The handoff of a memfd a non-owner made (see Handoff).
  std::atomic<uint32_t> handoff;
  std::atomic<int32_t> creator_fd;    // its descriptor in the creator
  std::atomic<int32_t> adopted_fd;    // its descriptor in the owner, once adopted
  uint32_t reserved;
};
static_assert(sizeof(SlotRecord) == 128);

struct BlockHeader {
  uint64_t state;                     // kUsedWord or kFreeWord: the block's commit word
  uint64_t span;                      // header + data bytes up to the next header: the chain's commit word
  uint64_t prev_span;                 // span of the block before (0 for the first): derived
  std::atomic<uint64_t> generation;   // used: the allocation's generation; free: 0
  std::atomic<uint32_t> refs;         // used: the reference count
  uint32_t bin;                       // free: the list it is on
  uint64_t next_free;                 // free: list links (block_ref or kNil)
  uint64_t prev_free;
  uint64_t size;                      // used: the size asked for
};
static_assert(sizeof(BlockHeader) == kHeaderBytes);

struct Control {
  uint64_t magic;
  uint32_t version;
  uint32_t max_segments;
  uint64_t limit_bytes;
  uint64_t segment_bytes;
  int32_t owner_pid;
  std::atomic<uint32_t> closed;       // the owner closed the arena: no new segments
  RobustMutex mutex;
  std::atomic<uint64_t> used_bytes;   // derived
  std::atomic<uint64_t> mapped_bytes; // derived
  std::atomic<uint32_t> slot_count;   // slots ever used (high-water mark): commit word for a new slot
  uint32_t pooled_segments;           // derived: sizes the next pooled segment
  uint64_t next_generation;
  std::atomic<uint64_t> recoveries;
  std::atomic<uint32_t> recovering;   // set while a recovery runs; a failed one is redone
  uint32_t backing;                   // SlotBacking of the segments the arena makes
  std::atomic<uint64_t> pooled_bytes; // derived: bytes in pooled segments (capped by the limit)
  // The owner's segment service (arena_segments.cpp): bumped and woken when it
  // has a handoff to take or a freed memfd to close; `service_alive` while it runs.
  std::atomic<uint32_t> service_seq;
  std::atomic<uint32_t> service_alive;
  uint64_t bins[kBins];               // derived: free-list heads
  SlotRecord slots[SharedArena::kMaxSegments];
};

}  // namespace shoal::arena_detail
