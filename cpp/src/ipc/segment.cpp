// Shared-memory segments, and the cleanup of the ones dead processes left.
//
// Who may remove a name. A segment `shoal-<pid>-<hex>` is normally unlinked by
// the process that made it; one killed with SIGKILL (or ended with _exit)
// leaves its names behind, and reclaim_stale_segments(), run at every
// `import shoal`, removes them. It must never remove a live program's names,
// and a pid cannot prove death: in another PID namespace sharing /dev/shm
// (docker --ipc=host, pods) kill(pid, 0) says ESRCH for every pid of a live
// program. A lock can: flock() locks live on the open file description, are
// the same in every namespace, and the kernel drops them when the last
// descriptor goes, however the holder ends.
//
// Owner tokens. Before it names a segment after its pid, a process creates
// one token, `shoal-lock-<pid>-<hex>` (mode 0600, a 64-byte header with a
// magic), takes a shared flock on it and keeps that descriptor open
// (O_CLOEXEC) until it exits; the exit handler unlinks it. One descriptor per
// process, however many segments it makes (a lock per segment would cost a
// descriptor per Lock or Queue). The token is per pid, not per segment: an
// arena's segments carry the owner's pid whichever process creates them, and
// they live exactly as long as the owner's token. Tokens do not start with
// `shoal-<pid>-`, so counting a process's segments by that prefix still works.
//
// The cleanup. For every token it opens the name (O_RDONLY | O_NOFOLLOW |
// O_NONBLOCK), checks it is a regular file of ours, and tries an exclusive
// flock without waiting: refused means a live holder somewhere; granted means
// none is left, and the token is removed while the lock is held (an empty
// token is one whose creator died before writing it, or one whose creator has
// yet to lock it: creators check after locking that the name is still theirs
// and make another if not). Segments of a pid go only if none of its tokens is
// held, kill(pid, 0) says ESRCH as well (a live process here using a shoal
// without tokens is left alone), no new token of that pid showed up while the
// cleanup looked (a new process with the same pid number, here or in another
// namespace, creates its token before any segment), and the file is what we
// create: the exact name format, a regular file (no symlink, FIFO, directory),
// our uid, mode 0600, one link, a positive whole number of pages. The name is
// checked again to be the same file right before it is unlinked.
//
// Forks. A forked child shares the token's open file description, so the lock
// stays held while the child lives, even if the owner was killed. That is
// deliberate: the child has the owner's segments mapped and may still use
// them; the price is that a killed owner's names are reclaimed only once its
// forked children are gone too. exec drops the descriptor (O_CLOEXEC). A child
// that makes segments of its own makes its own token.
#include "shoal/ipc/segment.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shoal/base/errors.hpp"
#include "shoal/base/fd.hpp"

namespace shoal {
namespace {

constexpr const char* kShmDir = "/dev/shm";

std::string random_hex() {
  unsigned char raw[8];
  if (getrandom(raw, sizeof raw, 0) != static_cast<ssize_t>(sizeof raw)) throw_errno("getrandom");
  char hex[17];
  for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  return hex;
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

// --- names -------------------------------------------------------------------

enum class NameKind { segment, token };

// `<decimal pid>-<16 lower-case hex>` exactly: no sign, no leading zero, a pid
// that fits pid_t and is positive.
bool parse_pid_and_hex(std::string_view s, pid_t& pid) {
  std::size_t i = 0;
  long long value = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9' && i < 10) {
    value = value * 10 + (s[i] - '0');
    ++i;
  }
  if (i == 0 || s[0] == '0' || value > 0x7fffffff || i >= s.size() || s[i] != '-') return false;
  std::string_view hex = s.substr(i + 1);
  if (hex.size() != 16) return false;
  for (char c : hex)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  pid = static_cast<pid_t>(value);
  return true;
}

bool parse_name(std::string_view name, NameKind& kind, pid_t& pid) {
  const std::string_view token = kTokenPrefix, segment = kSegmentPrefix;
  if (name.starts_with(token)) {
    kind = NameKind::token;
    return parse_pid_and_hex(name.substr(token.size()), pid);
  }
  if (name.starts_with(segment)) {
    kind = NameKind::segment;
    return parse_pid_and_hex(name.substr(segment.size()), pid);
  }
  return false;
}

struct Group {
  std::vector<std::string> segments;
  std::set<std::string> tokens;
};

// Every name of our exact format in /dev/shm, by the pid it carries.
std::map<pid_t, Group> list_names(int dir_fd) {
  std::map<pid_t, Group> groups;
  int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return groups;
  DIR* dir = fdopendir(fd);
  if (!dir) {
    ::close(fd);
    return groups;
  }
  while (dirent* entry = readdir(dir)) {
    NameKind kind;
    pid_t pid;
    if (!parse_name(entry->d_name, kind, pid)) continue;
    Group& g = groups[pid];
    if (kind == NameKind::token)
      g.tokens.insert(entry->d_name);
    else
      g.segments.emplace_back(entry->d_name);
  }
  closedir(dir);
  return groups;
}

// --- files -------------------------------------------------------------------

bool same_file(const struct stat& a, const struct stat& b) { return a.st_dev == b.st_dev && a.st_ino == b.st_ino; }

// True if `name` in `dir_fd` (not following a symlink) is the file open as `fd`.
bool name_is(int dir_fd, const char* name, int fd) {
  struct stat by_name {}, by_fd {};
  return fstatat(dir_fd, name, &by_name, AT_SYMLINK_NOFOLLOW) == 0 && fstat(fd, &by_fd) == 0 &&
         same_file(by_name, by_fd);
}

// What every file we make in /dev/shm is: a regular file of ours, mode 0600,
// with one name.
bool ours(const struct stat& st, uid_t me) {
  return S_ISREG(st.st_mode) && st.st_uid == me && (st.st_mode & 07777) == 0600 && st.st_nlink == 1;
}

bool plausible_segment(const struct stat& st, uid_t me) {
  static const long page = sysconf(_SC_PAGESIZE);
  return ours(st, me) && st.st_size > 0 && st.st_size % page == 0;
}

// Opens a candidate without following a symlink, blocking on a FIFO, or taking
// a terminal; only if, before and after opening, it is a regular file.
UniqueFd open_candidate(int dir_fd, const char* name, struct stat& st) {
  struct stat before {};
  if (fstatat(dir_fd, name, &before, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(before.st_mode)) return UniqueFd();
  UniqueFd fd(openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd || fstat(fd.get(), &st) != 0 || !same_file(before, st)) return UniqueFd();
  return fd;
}

// --- owner tokens ------------------------------------------------------------

constexpr char kTokenMagic[8] = {'S', 'H', 'O', 'A', 'L', 'T', 'O', 'K'};
constexpr uint32_t kTokenVersion = 1;

struct TokenHeader {
  char magic[8];
  uint32_t version;
  int32_t pid;  // the pid in the token's name (for people reading /dev/shm)
  unsigned char reserved[48];
};
static_assert(sizeof(TokenHeader) == 64);

enum class TokenState { held, gone, other };

// Tries the token's lock; a token nobody holds is unlinked (under the lock).
TokenState probe_token(int dir_fd, const std::string& name, uid_t me) {
  struct stat st {};
  UniqueFd fd = open_candidate(dir_fd, name.c_str(), st);
  if (!fd || !ours(st, me)) return TokenState::other;  // gone already, or not a file we would make
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return TokenState::held;  // a live holder (or: cannot tell)
  if (fstat(fd.get(), &st) != 0) return TokenState::held;
  if (st.st_size != 0) {
    TokenHeader h{};
    if (st.st_size != static_cast<off_t>(sizeof h) ||
        pread(fd.get(), &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h) ||
        std::memcmp(h.magic, kTokenMagic, sizeof h.magic) != 0 || h.version != kTokenVersion)
      return TokenState::other;
  }
  // Nobody holds it, and nobody can take it while we hold it: its creator is
  // gone (or, for an empty one, will find the name gone and make another).
  if (name_is(dir_fd, name.c_str(), fd.get())) unlinkat(dir_fd, name.c_str(), 0);
  return TokenState::gone;
}

// Removes a segment name if it is a file we would have made.
bool remove_segment(int dir_fd, const std::string& name, uid_t me) {
  struct stat st {};
  UniqueFd fd = open_candidate(dir_fd, name.c_str(), st);
  if (!fd || !plausible_segment(st, me)) return false;
  return name_is(dir_fd, name.c_str(), fd.get()) && unlinkat(dir_fd, name.c_str(), 0) == 0;
}

bool pid_looks_gone(pid_t pid) { return kill(pid, 0) == -1 && errno == ESRCH; }

// This process's token. Never destroyed: threads may make segments while the
// process exits.
struct OwnToken {
  std::mutex mu;
  std::atomic<pid_t> pid{0};  // the process holding `fd`; after a fork, not this one
  int fd = -1;
  std::string name;
  bool hooks_installed = false;
};

OwnToken& own_token() {
  static OwnToken* t = new OwnToken;
  return *t;
}

// At exit: our token goes, and so does what other processes left behind (the
// tokens of pool workers, which end with _exit, would otherwise stay until
// the next `import shoal`).
void release_at_exit() {
  if (own_token().pid.load(std::memory_order_acquire) != getpid()) return;  // a forked copy
  segment_detail::release_owner_token();
  try {
    reclaim_stale_segments();
  } catch (...) {
  }
}

}  // namespace

namespace segment_detail {

std::string random_segment_name(pid_t owner) {
  return std::string(kSegmentPrefix) + std::to_string(owner) + "-" + random_hex();
}

int create_owner_token(pid_t pid, std::string* name_out) {
  for (int attempt = 0;; ++attempt) {
    const std::string name = std::string(kTokenPrefix) + std::to_string(pid) + "-" + random_hex();
    const std::string path = "/" + name;
    UniqueFd fd(shm_open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600));
    if (!fd) {
      if (errno == EEXIST && attempt < 8) continue;
      throw_errno("shm_open " + name);
    }
    auto fail = [&](const std::string& what) {
      const int err = errno;
      shm_unlink(path.c_str());
      throw_errno(what, err);
    };
    // The lock first, then the contents (see the top of this file).
    while (flock(fd.get(), LOCK_SH) != 0)
      if (errno != EINTR) fail("flock " + name);
    if (fchmod(fd.get(), 0600) != 0) fail("fchmod " + name);  // whatever the umask
    TokenHeader h{};
    std::memcpy(h.magic, kTokenMagic, sizeof h.magic);
    h.version = kTokenVersion;
    h.pid = pid;
    if (pwrite(fd.get(), &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) {
      if (errno == 0) errno = ENOSPC;
      fail("write " + name);
    }
    // A cleanup that saw it empty and unlocked (before our flock) removed it:
    // this one proves nothing, make another.
    int dir_fd = open(kShmDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    const bool still_ours = dir_fd >= 0 && name_is(dir_fd, name.c_str(), fd.get());
    if (dir_fd >= 0) ::close(dir_fd);
    if (!still_ours) {
      if (attempt < 16) continue;
      throw_errno("owner token " + name + " keeps disappearing", EAGAIN);
    }
    if (name_out) *name_out = name;
    return fd.release();
  }
}

void hold_owner_token() {
  OwnToken& t = own_token();
  const pid_t me = getpid();
  if (t.pid.load(std::memory_order_acquire) == me) return;
  std::lock_guard<std::mutex> lock(t.mu);
  if (t.pid.load(std::memory_order_relaxed) == me) return;
  if (!t.hooks_installed) {
    // A fork while another thread holds `mu` must not leave it locked in the child.
    pthread_atfork([] { own_token().mu.lock(); }, [] { own_token().mu.unlock(); },
                   [] { own_token().mu.unlock(); });
    std::atexit(release_at_exit);
    t.hooks_installed = true;
  }
  // After a fork, the parent's descriptor stays open here, untracked: its lock
  // is shared with the parent (see the top of this file).
  std::string name;
  t.fd = create_owner_token(me, &name);
  t.name = std::move(name);
  t.pid.store(me, std::memory_order_release);
}

void release_owner_token() {
  OwnToken& t = own_token();
  std::lock_guard<std::mutex> lock(t.mu);
  if (t.pid.load(std::memory_order_relaxed) != getpid() || t.fd < 0) return;
  int dir_fd = open(kShmDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    if (name_is(dir_fd, t.name.c_str(), t.fd)) unlinkat(dir_fd, t.name.c_str(), 0);
    ::close(dir_fd);
  }
  ::close(t.fd);
  t.fd = -1;
  t.pid.store(0, std::memory_order_release);
}

}  // namespace segment_detail

SharedSegment SharedSegment::create(std::size_t size) {
  if (size == 0) size = 1;
  const long page = sysconf(_SC_PAGESIZE);
  size = (size + page - 1) / page * page;
  segment_detail::hold_owner_token();  // before any name of our pid exists
  for (int attempt = 0;; ++attempt) {
    std::string name = segment_detail::random_segment_name(getpid());
    int fd = shm_open(("/" + name).c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == EEXIST && attempt < 8) continue;
      throw_errno("shm_open " + name);
    }
    // Exactly 0600 whatever the umask: the cleanup removes nothing else.
    if (fchmod(fd, 0600) != 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) {
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

SharedSegment SharedSegment::map_descriptor(int fd, std::size_t size, std::string name) {
  void* data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (data == MAP_FAILED) throw_errno("mmap shared memory " + name);
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

void SharedSegment::prefault_for_write() const {
#ifndef MADV_POPULATE_WRITE
  constexpr int MADV_POPULATE_WRITE = 23;  // Linux 5.14; older headers lack it
#endif
  if (data_ != nullptr && size_ > 0) (void)::madvise(data_, size_, MADV_POPULATE_WRITE);  // best effort
}

void SharedSegment::close() {
  unlink();
  if (data_) munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

std::size_t reclaim_stale_segments() {
  UniqueFd dir(open(kShmDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) return 0;
  const uid_t me = geteuid();
  const std::map<pid_t, Group> seen = list_names(dir.get());
  std::vector<pid_t> gone;
  for (const auto& [pid, group] : seen) {
    bool held = false;
    for (const auto& token : group.tokens)  // every token, so that the ones nobody holds go
      held |= probe_token(dir.get(), token, me) == TokenState::held;
    if (!held && !group.segments.empty() && pid_looks_gone(pid)) gone.push_back(pid);
  }
  if (gone.empty()) return 0;
  // A token that appeared since the listing may belong to a new owner of that
  // pid whose segments the listing saw: leave those for the next cleanup.
  const std::map<pid_t, Group> now = list_names(dir.get());
  std::size_t removed = 0;
  for (pid_t pid : gone) {
    const Group& then = seen.at(pid);
    auto it = now.find(pid);
    bool new_token = false;
    if (it != now.end())
      for (const auto& token : it->second.tokens) new_token |= !then.tokens.contains(token);
    if (new_token) continue;
    for (const auto& name : then.segments) removed += remove_segment(dir.get(), name, me);
  }
  return removed;
}

}  // namespace shoal
