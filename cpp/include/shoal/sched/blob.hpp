#pragma once
// A payload on its way to a ring: kept inline while it is small, moved once
// into a shared-memory segment of its own when it would not fit the ring.
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "shoal/ipc/segment.hpp"

namespace shoal {

class Blob {
 public:
  Blob() = default;
  explicit Blob(std::string bytes) : bytes_(std::move(bytes)) {}

  // What travels in the frame: the bytes, or a segment name once spilled.
  // Spills on first call if the bytes exceed `inline_limit`.
  std::string_view wire(std::size_t inline_limit);
  bool spilled() const { return spill_ != nullptr; }
  // Leaves the spilled segment's name for the receiver to unlink.
  void hand_over_spill() {
    if (spill_) spill_->disown();
  }

 private:
  std::string bytes_;
  std::unique_ptr<SharedSegment> spill_;
};

// Copies a payload another process spilled into a segment into alloc(n);
// removes the segment's name afterwards if asked (the receiver is its last user).
void read_spilled(std::string_view segment_name, bool unlink_after,
                  const std::function<std::byte*(std::size_t)>& alloc);
std::string take_spilled(std::string_view segment_name, bool unlink_after);

}  // namespace shoal
