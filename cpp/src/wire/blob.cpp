#include "shoal/wire/blob.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "mem/shm_file.hpp"  // create_named_segment: a segment named after another pid
#include "shoal/base/errors.hpp"

namespace shoal {

std::string_view Blob::wire(std::size_t inline_limit) {
  if (spill_) return spill_->name();
  if (bytes_.size() <= inline_limit) return bytes_;
  auto seg = std::make_unique<SharedSegment>(SharedSegment::create(bytes_.size() + kSpillHeader));
  const uint64_t head[2] = {kSpillMagic, bytes_.size()};
  std::memcpy(seg->data(), head, kSpillHeader);
  std::memcpy(seg->bytes() + kSpillHeader, bytes_.data(), bytes_.size());
  spill_ = std::move(seg);
  std::string().swap(bytes_);
  return spill_->name();
}

std::string spill_for(pid_t owner, std::string_view bytes) {
  const std::string name = segment_detail::random_segment_name(owner);
  // Does not own the name (nor make a token for a pid not ours): the receiver unlinks it.
  // Whole pages, as every segment of ours (the stale-segment cleanup removes nothing else).
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t size = (bytes.size() + kSpillHeader + page - 1) / page * page;
  SharedSegment seg = arena_detail::create_named_segment(name, size);
  const uint64_t head[2] = {kSpillMagic, bytes.size()};
  std::memcpy(seg.data(), head, kSpillHeader);
  std::memcpy(seg.bytes() + kSpillHeader, bytes.data(), bytes.size());
  return name;
}

bool is_spill_name(std::string_view name, pid_t owner) {
  const std::string prefix = std::string(kSegmentPrefix) + std::to_string(owner) + "-";
  if (owner <= 0 || name.size() != prefix.size() + 16 || !name.starts_with(prefix)) return false;
  for (char c : name.substr(prefix.size()))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

void read_spilled(std::string_view segment_name, bool unlink_after,
                  const std::function<std::byte*(std::size_t)>& alloc) {
  std::string name(segment_name);
  auto seg = SharedSegment::attach(name);
  // Another process may have written anything here (the header included):
  // the length must fit the segment, and the segment be the whole pages that
  // header and payload need, no more.
  uint64_t head[2] = {0, 0};
  if (seg.size() >= kSpillHeader) std::memcpy(head, seg.data(), kSpillHeader);
  if (head[0] != kSpillMagic)  // not a spill (maybe some other segment of ours): leave its name alone
    throw CorruptFrameError("shared-memory segment '" + name + "' does not hold a spilled payload");
  if (unlink_after) shm_unlink(("/" + name).c_str());
  const uint64_t n = head[1];
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  if (n > seg.size() - kSpillHeader || (n + kSpillHeader + page - 1) / page * page != seg.size())
    throw CorruptFrameError("spilled payload '" + name + "' claims " + std::to_string(n) + " bytes in a segment of " +
                            std::to_string(seg.size()));
  std::memcpy(alloc(n), seg.bytes() + kSpillHeader, n);
}

std::string take_spilled(std::string_view segment_name, bool unlink_after) {
  std::string out;
  read_spilled(segment_name, unlink_after, [&](std::size_t n) {
    out.resize(n);
    return reinterpret_cast<std::byte*>(out.data());
  });
  return out;
}

}  // namespace shoal
