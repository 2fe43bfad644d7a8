#pragma once
// The descriptor of one block in a SharedArena: small, trivially copyable, the
// same in every process, so it can travel inside a frame or a pickle. It names
// memory; it does not own any. Who holds a reference is a matter of protocol
// (see SharedArena's retain/release).
#include <cstdint>
#include <type_traits>

namespace shoal {

struct Block {
  // Set in `flags` when the block has a shared-memory segment of its own.
  static constexpr uint32_t kDedicated = 1u;

  uint32_t segment = 0;     // index of the segment slot in the arena's control block
  uint32_t flags = 0;       // kDedicated, or 0 for a block inside a pooled segment
  uint64_t offset = 0;      // where the block's bytes start inside that segment
  uint64_t size = 0;        // the bytes asked for (the block may be a little larger)
  uint64_t generation = 0;  // unique per allocation in the arena; never 0 for a live block

  bool dedicated() const { return (flags & kDedicated) != 0; }
  friend bool operator==(const Block&, const Block&) = default;
};

static_assert(std::is_trivially_copyable_v<Block> && std::is_standard_layout_v<Block>);
static_assert(sizeof(Block) == 32);

}  // namespace shoal
