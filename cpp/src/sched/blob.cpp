#include "shoal/sched/blob.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "../mem/shm_file.hpp"  // create_named_segment: a segment named after another pid
#include "shoal/ipc/errors.hpp"

namespace shoal {

std::string_view Blob::wire(std::size_t inline_limit) {
  if (spill_) return spill_->name();
  if (bytes_.size() <= inline_limit) return bytes_;
  auto seg = std::make_unique<SharedSegment>(SharedSegment::create(bytes_.size() + sizeof(uint64_t)));
  const uint64_t n = bytes_.size();
  std::memcpy(seg->data(), &n, sizeof n);
  std::memcpy(seg->bytes() + sizeof n, bytes_.data(), n);
  spill_ = std::move(seg);
  std::string().swap(bytes_);
  return spill_->name();
}

std::string spill_for(pid_t owner, std::string_view bytes) {
  const std::string name = segment_detail::random_segment_name(owner);
  // Does not own the name (nor make a token for a pid not ours): the receiver unlinks it.
  // Whole pages, as every segment of ours (the stale-segment cleanup removes nothing else).
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t size = (bytes.size() + sizeof(uint64_t) + page - 1) / page * page;
  SharedSegment seg = arena_detail::create_named_segment(name, size);
  const uint64_t n = bytes.size();
  std::memcpy(seg.data(), &n, sizeof n);
  std::memcpy(seg.bytes() + sizeof n, bytes.data(), n);
  return name;
}

void read_spilled(std::string_view segment_name, bool unlink_after,
                  const std::function<std::byte*(std::size_t)>& alloc) {
  std::string name(segment_name);
  auto seg = SharedSegment::attach(name);
  if (unlink_after) shm_unlink(("/" + name).c_str());
  uint64_t n = 0;
  std::memcpy(&n, seg.data(), sizeof n);
  if (n > seg.size() - sizeof n) throw CorruptFrameError("spilled payload '" + name + "' is truncated");
  std::memcpy(alloc(n), seg.bytes() + sizeof n, n);
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
