#include "shoal/wire/blob.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "mem/shm_file.hpp"  // create_named_segment: a segment named after another pid
#include "shoal/base/errors.hpp"

namespace shoal {

namespace {

std::size_t whole_pages(std::size_t n) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

// Makes the spill segment `name` holding `bytes`. Any failure to make it (no
// room in /dev/shm or memory, no descriptor left) fails this payload alone.
void spill_into(const std::string& name, std::string_view bytes, std::string_view what) {
  SharedSegment seg;
  try {
    // Whole pages, as every segment of ours (the stale-segment cleanup removes
    // nothing else), each backed now (fallocate): ENOSPC here, not SIGBUS below.
    seg = arena_detail::create_named_segment(name, whole_pages(bytes.size() + kSpillHeader));
  } catch (const std::system_error& e) {
    const int err = e.code().value();
    std::string message = std::string(what) + " (" + std::to_string(bytes.size()) +
                          " bytes) could not be spilled to /dev/shm: " + std::strerror(err) +
                          "; it is too big for the pool's ring, and travels through a segment of its own in "
                          "/dev/shm (" + e.what() + ")";
    if (err == ENOSPC || err == ENOMEM)
      message += ". Free space in /dev/shm (a container's --shm-size), or send big data as numpy arrays or "
                 "shoal.SharedArrays, whose buffers travel through the pool's arena instead";
    throw SpillError(message, err);
  }
  const uint64_t head[2] = {kSpillMagic, bytes.size()};
  std::memcpy(seg.data(), head, kSpillHeader);
  std::memcpy(seg.bytes() + kSpillHeader, bytes.data(), bytes.size());
}

}  // namespace

Blob::Spill::~Spill() {
  if (owned) shm_unlink(("/" + name).c_str());
}

std::string_view Blob::wire(std::size_t inline_limit) {
  if (spill_) return spill_->name;
  if (bytes_.size() <= inline_limit) return bytes_;
  // Named after this process, which unlinks it when the job is done with
  // (hand_over_spill() leaves it to the receiver); its token keeps it.
  auto spill = std::make_unique<Spill>(segment_detail::random_segment_name(getpid()));
  spill->owned = false;  // until it exists: a failed spill removes its own name
  spill_into(spill->name, bytes_, "a payload");
  spill->owned = true;
  spill_ = std::move(spill);
  std::string().swap(bytes_);
  return spill_->name;
}

std::string spill_for(pid_t owner, std::string_view bytes, std::string_view what) {
  const std::string name = segment_detail::random_segment_name(owner);
  // Does not own the name (nor make a token for a pid not ours): the receiver unlinks it.
  spill_into(name, bytes, what);
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
