#include "shoal/wire/packed_payload.hpp"

#include <bit>
#include <cstring>
#include <exception>
#include <stdexcept>

#include "shoal/mem/arena.hpp"

namespace shoal::packed {

static_assert(std::endian::native == std::endian::little, "packed payloads are little-endian");

namespace {

template <class T>
T read_at(std::string_view s, std::size_t& pos) {
  if (s.size() < pos + sizeof(T)) throw std::invalid_argument("truncated shoal out-of-band payload");
  T v;
  std::memcpy(&v, s.data() + pos, sizeof(T));
  pos += sizeof(T);
  return v;
}

template <class T>
void write(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

}  // namespace

Contents decode(std::string_view payload) {
  if (!is_packed(payload)) throw std::invalid_argument("not a shoal out-of-band payload");
  std::size_t pos = kMagic.size();
  const auto n_names = read_at<uint32_t>(payload, pos);
  const auto n_entries = read_at<uint32_t>(payload, pos);
  const auto pickle_len = read_at<uint64_t>(payload, pos);
  // Bounded by what the payload can hold, before anything is reserved.
  if (n_names > payload.size() / 2 || n_entries > payload.size() / kEntrySize)
    throw std::invalid_argument("truncated shoal out-of-band payload");
  Contents c;
  c.names.reserve(n_names);
  for (uint32_t i = 0; i < n_names; ++i) {
    const auto n = read_at<uint16_t>(payload, pos);
    if (payload.size() < pos + n) throw std::invalid_argument("truncated shoal out-of-band payload");
    c.names.emplace_back(payload.substr(pos, n));
    pos += n;
  }
  c.entries.reserve(n_entries);
  for (uint32_t i = 0; i < n_entries; ++i) {
    Entry e;
    e.arena = read_at<uint16_t>(payload, pos);
    e.kind = static_cast<EntryKind>(read_at<uint8_t>(payload, pos));
    e.block.flags = read_at<uint8_t>(payload, pos);
    e.block.segment = read_at<uint32_t>(payload, pos);
    e.block.offset = read_at<uint64_t>(payload, pos);
    e.block.size = read_at<uint64_t>(payload, pos);
    e.block.generation = read_at<uint64_t>(payload, pos);
    e.view_offset = read_at<uint64_t>(payload, pos);
    e.view_length = read_at<uint64_t>(payload, pos);
    if (e.arena >= c.names.size() || (e.kind != EntryKind::buffer && e.kind != EntryKind::held))
      throw std::invalid_argument("corrupt shoal out-of-band payload");
    c.entries.push_back(e);
  }
  if (pickle_len != payload.size() - pos) throw std::invalid_argument("truncated shoal out-of-band payload");
  c.pickle_offset = pos;
  return c;
}

std::string encode(const std::vector<std::string>& names, const std::vector<Entry>& entries, std::string_view pickle) {
  if (names.size() > UINT16_MAX + 1u) throw std::invalid_argument("too many arenas in one payload");
  std::size_t size = kHeaderSize + entries.size() * kEntrySize + pickle.size();
  for (const auto& n : names) size += 2 + n.size();
  std::string out;
  out.reserve(size);
  out.append(kMagic);
  write(out, static_cast<uint32_t>(names.size()));
  write(out, static_cast<uint32_t>(entries.size()));
  write(out, static_cast<uint64_t>(pickle.size()));
  for (const auto& n : names) {
    if (n.size() > UINT16_MAX) throw std::invalid_argument("arena name too long");
    write(out, static_cast<uint16_t>(n.size()));
    out.append(n);
  }
  for (const auto& e : entries) {
    if (e.arena >= names.size()) throw std::invalid_argument("entry names no arena of the payload");
    write(out, e.arena);
    write(out, static_cast<uint8_t>(e.kind));
    write(out, static_cast<uint8_t>(e.block.flags));
    write(out, e.block.segment);
    write(out, e.block.offset);
    write(out, e.block.size);
    write(out, e.block.generation);
    write(out, e.view_offset);
    write(out, e.view_length);
  }
  out.append(pickle);
  return out;
}

std::vector<Reference> references(std::string_view payload) {
  std::vector<Reference> refs;
  if (!is_packed(payload)) return refs;
  Contents c = decode(payload);
  refs.reserve(c.entries.size());
  for (const auto& e : c.entries) refs.push_back(Reference{c.names[e.arena], e.block});
  return refs;
}

uint64_t buffer_bytes(std::string_view payload) noexcept {
  if (!is_packed(payload)) return 0;
  try {
    uint64_t n = 0;
    for (const auto& e : decode(payload).entries)
      if (e.kind == EntryKind::buffer) n += e.view_length;
    return n;
  } catch (...) {
    return 0;
  }
}

void release(const std::vector<Reference>& refs, const std::shared_ptr<SharedArena>& own) {
  std::exception_ptr first;
  std::shared_ptr<SharedArena> other;  // the last arena attached by name: payloads rarely list more than one
  for (const auto& r : refs) {
    try {
      if (own && own->name() == r.arena) {
        own->release_disowned(r.block);
        continue;
      }
      if (!other || other->name() != r.arena) other = SharedArena::attach(r.arena);
      other->release_disowned(r.block);
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace shoal::packed
