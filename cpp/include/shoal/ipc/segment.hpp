#pragma once
// A POSIX shared-memory segment: created with a random `shoal-<pid>-<hex>` name
// and mode 0600, or attached by name. The mapping is released on destruction;
// the creating process (and only it, not a forked copy) unlinks the name.
#include <cstddef>
#include <string>
#include <sys/types.h>

namespace shoal {

class SharedSegment {
 public:
  // Creates a zero-filled segment of at least `size` bytes.
  static SharedSegment create(std::size_t size);
  // Maps an existing segment; throws NotFoundError when the name does not exist.
  static SharedSegment attach(const std::string& name);
  // Maps `size` bytes of an open shared-memory file (a memfd, say) read-write;
  // `name` is only its label. The mapping owns no name; `fd` stays the caller's.
  static SharedSegment map_descriptor(int fd, std::size_t size, std::string name);

  SharedSegment() = default;
  SharedSegment(SharedSegment&& other) noexcept;
  SharedSegment& operator=(SharedSegment&& other) noexcept;
  SharedSegment(const SharedSegment&) = delete;
  SharedSegment& operator=(const SharedSegment&) = delete;
  ~SharedSegment();

  void* data() const { return data_; }
  std::byte* bytes() const { return static_cast<std::byte*>(data_); }
  std::size_t size() const { return size_; }
  // The name as /dev/shm shows it (no leading slash).
  const std::string& name() const { return name_; }
  bool valid() const { return data_ != nullptr; }
  // True in the process that created the segment and will unlink its name.
  bool owns_name() const;

  // Removes the name now (existing mappings stay valid). Idempotent.
  void unlink();
  // Gives up ownership: the name will outlive this object.
  void disown() { owner_pid_ = 0; }
  // Unmaps now; unlinks too if this process owns the name.
  void close();
  // Sets up every page of the mapping for writing in one call
  // (MADV_POPULATE_WRITE, Linux 5.14+; nothing where the kernel lacks it):
  // a segment about to be filled whole takes no page fault per 4 KiB
  // (~25 % of filling 100 MB here). Only for shared mappings: populating a
  // private one would copy every page.
  void prefault_for_write() const;

 private:
  SharedSegment(std::string name, void* data, std::size_t size, pid_t owner)
      : name_(std::move(name)), data_(data), size_(size), owner_pid_(owner) {}

  std::string name_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
  pid_t owner_pid_ = 0;
};

// The prefix every shoal segment name starts with: `shoal-<pid>-<16 hex digits>`.
inline constexpr const char* kSegmentPrefix = "shoal-";
// The prefix of owner tokens: `shoal-lock-<pid>-<16 hex digits>` (see segment.cpp).
inline constexpr const char* kTokenPrefix = "shoal-lock-";

// Unlinks the segments left behind by processes that are provably gone (killed
// with SIGKILL, or ended with _exit): names of the exact form
// `shoal-<pid>-<16 hex>`, regular files of this user with mode 0600, for which
// no process anywhere (any PID namespace) holds the lock on a token
// `shoal-lock-<pid>-*`, and whose pid does not exist here either. Never
// follows or removes symlinks or anything else. Removes the tokens nobody holds
// too. Returns how many segments were removed.
std::size_t reclaim_stale_segments();

namespace segment_detail {

// A fresh random name `shoal-<owner>-<16 hex>`.
std::string random_segment_name(pid_t owner);
// Makes sure this process holds its owner token (made on first use, after a
// fork anew); SharedSegment::create calls it before making a name of its pid.
void hold_owner_token();
// Unlinks and closes this process's own token; runs at exit. Afterwards the
// segments named after this pid count as stale once the pid is gone.
void release_owner_token();
// Makes a token for `pid` and returns the descriptor holding its lock (close
// it to let the token go; nothing unlinks it but reclaim_stale_segments()).
// For tests, which make tokens for pids that look dead.
int create_owner_token(pid_t pid, std::string* name = nullptr);

}  // namespace segment_detail

}  // namespace shoal
