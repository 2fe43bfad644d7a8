#pragma once
// A payload whose big buffers live in shared-memory arenas: a header listing
// the arena blocks it holds references on, then the pickle.
//
//   magic "shoalOB1" | u32 names | u32 entries | u64 pickle length
//   names x (u16 length, UTF-8 arena name)           names[0]: the packer's arena
//   entries x (u16 arena index, u8 kind, u8 block flags, u32 segment,
//              u64 offset, u64 size, u64 generation, u64 view offset, u64 view length)
//   the pickle
//
// Little-endian, as number columns (payloads never leave the machine). The
// format is defined here alone: python/shoal/wire/payload.py writes and
// reads it through these functions (_core.encode_packed / decode_packed),
// and the engine reads a job's references from it to drop them when the job
// ends for good (see python/shoal/wire/payload.py for who owns which
// reference).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shoal/mem/block.hpp"

namespace shoal {
class SharedArena;
}

namespace shoal::packed {

inline constexpr std::string_view kMagic{"shoalOB1"};
inline constexpr std::size_t kHeaderSize = 24;
inline constexpr std::size_t kEntrySize = 48;

enum class EntryKind : uint8_t {
  buffer = 0,  // an out-of-band buffer, handed to the unpickler in order
  held = 1,    // a SharedArray's block the payload keeps alive
};

struct Entry {
  uint16_t arena = 0;  // index into the names
  EntryKind kind = EntryKind::buffer;
  Block block;
  uint64_t view_offset = 0;
  uint64_t view_length = 0;
};

struct Contents {
  std::vector<std::string> names;
  std::vector<Entry> entries;
  std::size_t pickle_offset = 0;  // where the pickle starts; it runs to the end
};

// One reference a payload holds: the arena's name and the block.
struct Reference {
  std::string arena;
  Block block;
};

inline bool is_packed(std::string_view payload) { return payload.substr(0, kMagic.size()) == kMagic; }

// Throws std::invalid_argument for a payload that is not one, or is cut short.
Contents decode(std::string_view payload);
std::string encode(const std::vector<std::string>& names, const std::vector<Entry>& entries, std::string_view pickle);

// The references `payload` holds (none for a plain pickle or a number column).
std::vector<Reference> references(std::string_view payload);

// The bytes of the out-of-band buffers `payload` carries through arenas (0
// for a plain pickle, a number column, or a payload that is no valid one):
// for the stats, never trusted for anything else.
uint64_t buffer_bytes(std::string_view payload) noexcept;

// Drops each reference as the payload's, not this process's
// (SharedArena::release_disowned): `own` is used for its own name, any other
// arena is attached by name. Every reference is tried; the first error is
// rethrown after the rest are done.
void release(const std::vector<Reference>& refs, const std::shared_ptr<SharedArena>& own);

}  // namespace shoal::packed
