#include "shoal/sched/blob.hpp"

#include <sys/mman.h>

#include <cstring>

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

std::string take_spilled(std::string_view segment_name, bool unlink_after) {
  std::string name(segment_name);
  auto seg = SharedSegment::attach(name);
  uint64_t n = 0;
  std::memcpy(&n, seg.data(), sizeof n);
  if (n > seg.size() - sizeof n) throw CorruptFrameError("spilled payload '" + name + "' is truncated");
  std::string out(reinterpret_cast<const char*>(seg.bytes() + sizeof n), n);
  if (unlink_after) shm_unlink(("/" + name).c_str());
  return out;
}

}  // namespace shoal
