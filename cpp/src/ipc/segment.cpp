#include "shoal/ipc/segment.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "shoal/ipc/errors.hpp"

namespace shoal {
namespace {

std::string random_name() {
  unsigned char raw[8];
  if (getrandom(raw, sizeof raw, 0) != static_cast<ssize_t>(sizeof raw)) throw_errno("getrandom");
  char hex[17];
  for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  return std::string(kSegmentPrefix) + std::to_string(getpid()) + "-" + hex;
}

void* map_fd(int fd, std::size_t size, const std::string& name) {
  void* data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (data == MAP_FAILED) {
    int err = errno;
    ::close(fd);
    throw_errno("mmap shared memory " + name, err);
  }
  return data;
}

bool process_is_gone(pid_t pid) { return kill(pid, 0) == -1 && errno == ESRCH; }

}  // namespace

SharedSegment SharedSegment::create(std::size_t size) {
  if (size == 0) size = 1;
  const long page = sysconf(_SC_PAGESIZE);
  size = (size + page - 1) / page * page;
  for (int attempt = 0;; ++attempt) {
    std::string name = random_name();
    int fd = shm_open(("/" + name).c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == EEXIST && attempt < 8) continue;
      throw_errno("shm_open " + name);
    }
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
      int err = errno;
      ::close(fd);
      shm_unlink(("/" + name).c_str());
      throw_errno("ftruncate shared memory " + name + " to " + std::to_string(size) + " bytes", err);
    }
    void* data;
    try {
      data = map_fd(fd, size, name);
    } catch (...) {
      shm_unlink(("/" + name).c_str());
      throw;
    }
    ::close(fd);
    return SharedSegment(std::move(name), data, size, getpid());
  }
}

SharedSegment SharedSegment::attach(const std::string& name_in) {
  std::string name = name_in.starts_with('/') ? name_in.substr(1) : name_in;
  int fd = shm_open(("/" + name).c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) {
    if (errno == ENOENT)
      throw NotFoundError("shared-memory segment '" + name +
                          "' does not exist (its creator may have exited or closed it)");
    throw_errno("shm_open " + name);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw_errno("fstat shared memory " + name, err);
  }
  auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    throw NotFoundError("shared-memory segment '" + name + "' is empty (not yet initialised)");
  }
  void* data = map_fd(fd, size, name);
  ::close(fd);
  return SharedSegment(std::move(name), data, size, 0);
}

SharedSegment::SharedSegment(SharedSegment&& other) noexcept
    : name_(std::move(other.name_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      owner_pid_(std::exchange(other.owner_pid_, 0)) {}

SharedSegment& SharedSegment::operator=(SharedSegment&& other) noexcept {
  if (this != &other) {
    close();
    name_ = std::move(other.name_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    owner_pid_ = std::exchange(other.owner_pid_, 0);
  }
  return *this;
}

SharedSegment::~SharedSegment() { close(); }

bool SharedSegment::owns_name() const { return owner_pid_ != 0 && owner_pid_ == getpid(); }

void SharedSegment::unlink() {
  if (owns_name()) shm_unlink(("/" + name_).c_str());
  owner_pid_ = 0;
}

void SharedSegment::close() {
  unlink();
  if (data_) munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

std::size_t reclaim_stale_segments() {
  DIR* dir = opendir("/dev/shm");
  if (!dir) return 0;
  const uid_t me = getuid();
  const std::string prefix = kSegmentPrefix;
  std::size_t removed = 0;
  while (dirent* entry = readdir(dir)) {
    std::string name = entry->d_name;
    if (!name.starts_with(prefix)) continue;
    char* end = nullptr;
    long pid = std::strtol(name.c_str() + prefix.size(), &end, 10);
    if (pid <= 0 || !end || *end != '-') continue;
    struct stat st {};
    if (fstatat(dirfd(dir), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_uid != me) continue;
    if (process_is_gone(static_cast<pid_t>(pid)) && shm_unlink(("/" + name).c_str()) == 0) ++removed;
  }
  closedir(dir);
  return removed;
}

}  // namespace shoal
