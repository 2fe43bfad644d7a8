#include "shm_file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "shoal/base/errors.hpp"

namespace shoal::arena_detail {

std::string segment_name(pid_t owner) { return segment_detail::random_segment_name(owner); }

bool is_segment_name(std::string_view name, pid_t owner) {
  const std::string prefix = std::string(kSegmentPrefix) + std::to_string(owner) + "-";
  if (owner <= 0 || name.size() != prefix.size() + 16 || !name.starts_with(prefix)) return false;
  for (char c : name.substr(prefix.size()))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

SharedSegment create_named_segment(const std::string& name, std::size_t bytes) {
  const std::string path = "/" + name;
  // The owner's token keeps the name alive (reclaim_stale_segments). Made by
  // the owner, which holds its token since it made the control segment;
  // made by another process, the owner's token covers it all the same.
  if (name.starts_with(kSegmentPrefix + std::to_string(getpid()) + "-")) segment_detail::hold_owner_token();
  int fd = shm_open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) throw_errno("shm_open " + name);
  auto fail = [&](const std::string& what) {
    const int err = errno;
    ::close(fd);
    shm_unlink(path.c_str());
    throw_errno(what, err);
  };
  if (fchmod(fd, 0600) != 0) fail("fchmod shared memory " + name);  // exactly 0600, whatever the umask
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0)
    fail("ftruncate shared memory " + name + " to " + std::to_string(bytes) + " bytes");
  // Reserve the pages now. tmpfs supports this; elsewhere, go on without.
  if (fallocate(fd, 0, 0, static_cast<off_t>(bytes)) != 0 && errno != EOPNOTSUPP && errno != ENOSYS)
    fail("fallocate " + std::to_string(bytes) + " bytes of shared memory for " + name);
  ::close(fd);
  try {
    return SharedSegment::attach(name);
  } catch (...) {
    shm_unlink(path.c_str());
    throw;
  }
}

void unlink_name(const char* name) {
  if (name[0] != '\0') shm_unlink((std::string("/") + name).c_str());
}

bool process_alive(pid_t pid) { return pid <= 0 || kill(pid, 0) == 0 || errno != ESRCH; }

}  // namespace shoal::arena_detail
