#pragma once
// A payload on its way to a ring: kept inline while it is small, moved once
// into a shared-memory segment of its own when it would not fit the ring.
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
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
  // Spills on first call if the bytes exceed `inline_limit`, into a segment
  // backed when made: a full /dev/shm throws SpillError here (the bytes stay,
  // nothing is left in /dev/shm), never SIGBUS while copying.
  std::string_view wire(std::size_t inline_limit);
  bool spilled() const { return spill_ != nullptr; }
  // Leaves the spilled segment's name for the receiver to unlink.
  void hand_over_spill() {
    if (spill_) spill_->owned = false;
  }

 private:
  // A spilled segment's name, unlinked with the Blob unless handed over.
  struct Spill {
    std::string name;
    bool owned = true;
    explicit Spill(std::string n) : name(std::move(n)) {}
    Spill(const Spill&) = delete;
    Spill& operator=(const Spill&) = delete;
    ~Spill();
  };
  std::string bytes_;
  std::unique_ptr<Spill> spill_;
};

// Spills `bytes` into a new segment laid out as Blob::wire() lays it out, but
// named after `owner`'s pid (`shoal-<owner>-<hex>`), not this process's, and
// returns its name. For a payload that this process hands to `owner` and may
// not outlive: a pool worker's result, which the pool reads (and unlinks)
// after the worker may have exited; named after the worker, another program's
// stale-segment cleanup could remove it before that. The owner's token keeps
// it (src/ipc/segment.cpp), and the name is the receiver's to unlink; this
// process keeps nothing. The segment is backed when made, so a full /dev/shm
// throws SpillError here (nothing left behind), never a SIGBUS later; `what`
// names the payload in its message ("the result", ...).
std::string spill_for(pid_t owner, std::string_view bytes, std::string_view what = "the payload");

// A spilled payload's segment: kSpillMagic, the payload's length n (both
// 8-byte words), then the n bytes; whole pages, no more than it needs.
inline constexpr uint64_t kSpillMagic = 0x73686f616c53504cULL;  // "shoalSPL"
inline constexpr std::size_t kSpillHeader = 2 * sizeof(uint64_t);

// Whether `name` has the form of a segment spilled for `owner`:
// `shoal-<owner pid>-<16 lowercase hex digits>`. A frame's spilled payload is
// a name read from shared memory: one of any other form is never opened.
bool is_spill_name(std::string_view name, pid_t owner);

// Copies a payload another process spilled into a segment into alloc(n);
// removes the segment's name afterwards if asked (the receiver is its last user).
// Throws NotFoundError if it is gone, CorruptFrameError if the segment is not a
// spilled payload (no magic word: then its name is left alone) or its length
// does not match its size.
void read_spilled(std::string_view segment_name, bool unlink_after,
                  const std::function<std::byte*(std::size_t)>& alloc);
std::string take_spilled(std::string_view segment_name, bool unlink_after);

}  // namespace shoal
