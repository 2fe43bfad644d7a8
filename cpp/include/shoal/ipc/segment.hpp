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

 private:
  SharedSegment(std::string name, void* data, std::size_t size, pid_t owner)
      : name_(std::move(name)), data_(data), size_(size), owner_pid_(owner) {}

  std::string name_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
  pid_t owner_pid_ = 0;
};

// The prefix every shoal segment name starts with.
inline constexpr const char* kSegmentPrefix = "shoal-";

// Unlinks `shoal-<pid>-*` segments of this user whose creating process is gone
// (left behind by a process killed with SIGKILL). Returns how many were removed.
std::size_t reclaim_stale_segments();

}  // namespace shoal
