// SharedArena's segments: what backs them, how other processes reach them, and
// the owner's segment service.
//
// Why memfds. The arena used to keep its segments in /dev/shm, and its default
// limit was half of /dev/shm's free space. A default Docker container mounts a
// 64 MB /dev/shm: the README's own examples (a 256 MB array sliced through a
// map, 64 results of 4 MB) failed there. A memfd is shmem too (the same pages,
// fallocate, MAP_SHARED and MAP_PRIVATE), but lives on the kernel's internal
// mount, which no size= option limits: only memory (and the cgroup) does. So
// the data segments are memfds; the control segment (~130 KiB) stays in
// /dev/shm, because that is how a process finds the arena by name.
//
// How others reach a memfd. A memfd has no name, only descriptors. Options:
// (a) open /proc/<holder pid>/fd/<n>, which gives a new descriptor of the same
// file to any process allowed to inspect the holder (same user and the holder
// dumpable; Yama's ptrace_scope restricts only attaching, not this); (b) send
// descriptors over a unix socket, or pidfd_getfd (Linux 5.6, needs ptrace
// attach rights, which Yama and seccomp profiles often refuse). (b) needs a
// connection between every pair of processes, or a broker; (a) needs only the
// holder's pid and descriptor number, which fit in the slot table every
// process already reads. We use (a), with one holder per segment: the owner.
// Its pid is in the control segment; each slot records the descriptor's
// number and the file's inode and device, which every opener checks, so a
// descriptor number the owner has since reused for something else, or a pid
// now naming another process (or one in another PID namespace), reads as
// "gone", never as the wrong memory.
//
// Why the owner holds them all. Any process may create a segment (a worker
// whose result needs room grows the pool's arena), and a segment must outlive
// its creator: pooled segments serve everyone for the arena's life, and a
// task's result or SharedArray lives on in the caller after the worker exits.
// If the creator held the descriptor, its exit would strand the segment for
// every process that had not mapped it yet. So a non-owner hands each memfd it
// makes to the owner before committing it: it records its pid and descriptor
// in the slot, sets the slot's handoff word and wakes the owner's service
// thread (a futex on the control segment), which opens the memfd through
// /proc/<creator>/fd/<n>, keeps that descriptor, and answers on the handoff
// word. The creator waits for that answer, bounded (10 s); if the owner
// refuses, is gone or does not answer, the creator abandons the handoff (a
// compare-and-swap the service's late answer loses, so the service then closes
// what it opened) and makes the segment in /dev/shm instead, as before. The
// service never takes the arena's mutex, so a creator may wait for it while
// holding the mutex (pooled growth does).
//
// Freeing. The last reference to a huge block frees its slot in whichever
// process drops it. The owner then closes its descriptor at once; any other
// process wakes the service, which closes every descriptor whose slot no
// longer names its file (it also looks every second, so nothing depends on a
// wake arriving). The memory goes once no process maps it any more, as with
// an unlinked /dev/shm file.
//
// The owner's exit or close(). Its descriptors close (at exit, with the
// process; in close(), explicitly, after the service has stopped): every
// mapping already made stays valid, and every new attach fails cleanly
// (NotFoundError naming the owner), exactly as unlinked names did. A private
// (copy-on-write) window of a segment that can no longer be opened is copied
// instead, as before.
//
// Forks. A forked child inherits the owner's descriptors (MFD_CLOEXEC only
// covers exec) and would keep freed blocks' memory alive as long as it lives,
// so a pthread_atfork handler closes the child's copies; it is not the owner,
// and reaches segments through /proc/<owner>/fd like any other process.
// Processes made with exec (spawn, the fork server) never get them.
//
// Robustness. Every memfd is sized, fully backed (fallocate: an allocation
// that does not fit fails with ENOMEM or ENOSPC, never SIGBUS later) and
// sealed against shrinking and growing, so no process, buggy or not, can
// truncate a segment under others' mappings. The descriptor's number and the
// inode are written before the slot's kind commit and read only after it.
//
// Fallback. Where memfds cannot be shared this way (memfd_create missing or
// forbidden, /proc not mounted, a process that is not dumpable) the arena
// uses /dev/shm for everything, and its default limit is half of /dev/shm's
// free space as before; SHOAL_ARENA_BACKING=shm asks for that explicitly
// (processes in another PID namespace, which cannot see the owner in /proc,
// need it). With memfds the default limit is half of the memory available.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <system_error>

#include "arena_layout.hpp"
#include "shm_file.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/base/futex.hpp"
#include "shoal/mem/arena.hpp"

namespace shoal {

using namespace arena_detail;

std::atomic<int64_t> SharedArena::handoff_timeout_ms_{10'000};

namespace {

constexpr std::chrono::seconds kServiceSweep{1};

// Guards every owner's table of descriptors (SharedArena::owned_) and the list
// of owners below; a fork holds it, so the child finds the tables whole.
std::mutex& owned_mutex() {
  static auto* mu = new std::mutex;
  return *mu;
}

std::vector<SharedArena*>& owner_arenas() {
  static auto* arenas = new std::vector<SharedArena*>;
  return *arenas;
}

std::string proc_fd_path(pid_t pid, int fd) {
  return (pid == getpid() ? std::string("/proc/self") : "/proc/" + std::to_string(pid)) + "/fd/" +
         std::to_string(fd);
}

}  // namespace

// Whether this process may hand memfds to others through /proc/<pid>/fd: a
// memfd can be made and reopened that way, and others may inspect us.
bool arena_detail::memfds_shareable() {
  static const bool works = [] {
    UniqueFd fd(memfd_create("shoal-probe", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) return false;
    UniqueFd again(open(proc_fd_path(getpid(), fd.get()).c_str(), O_RDWR | O_CLOEXEC));
    struct stat a {}, b {};
    return again && fstat(fd.get(), &a) == 0 && fstat(again.get(), &b) == 0 && a.st_ino == b.st_ino;
  }();
  // Others need ptrace-read access to our /proc/<pid>/fd: a non-dumpable
  // process (setuid, prctl) refuses it to everyone but privileged ones.
  return works && (prctl(PR_GET_DUMPABLE) == 1 || geteuid() == 0);
}

namespace {

// MemAvailable, lowered to the headroom of this process's cgroup (v2) and its
// ancestors where they set memory.max; 0 if unknown.
std::size_t available_memory() {
  std::size_t avail = 0;
  {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    std::size_t kib = 0;
    std::string unit;
    while (meminfo >> key >> kib) {
      std::getline(meminfo, unit);
      if (key == "MemAvailable:") {
        avail = kib * 1024;
        break;
      }
    }
  }
  std::ifstream cgroups("/proc/self/cgroup");
  std::string line;
  while (std::getline(cgroups, line)) {
    if (!line.starts_with("0::")) continue;
    std::string path = line.substr(3);
    for (;;) {
      const std::string dir = "/sys/fs/cgroup" + (path == "/" ? std::string() : path);
      std::ifstream max_file(dir + "/memory.max"), current_file(dir + "/memory.current");
      std::string max_text;
      std::size_t current = 0;
      if (max_file >> max_text && max_text != "max" && current_file >> current) {
        const std::size_t max = std::strtoull(max_text.c_str(), nullptr, 10);
        const std::size_t headroom = max > current ? max - current : 0;
        avail = avail == 0 ? headroom : std::min(avail, headroom);
      }
      if (path.empty() || path == "/") break;
      const std::size_t cut = path.find_last_of('/');
      path = cut == 0 || cut == std::string::npos ? "/" : path.substr(0, cut);
    }
    break;
  }
  return avail;
}

}  // namespace

// --- backing and limits --------------------------------------------------------

SegmentBacking SharedArena::default_backing() {
  if (const char* env = std::getenv("SHOAL_ARENA_BACKING")) {
    const std::string want(env);
    if (want == "shm" || want == "dev_shm" || want == "dev-shm" || want == "/dev/shm") return SegmentBacking::dev_shm;
  }
  return memfds_shareable() ? SegmentBacking::memfd : SegmentBacking::dev_shm;
}

std::size_t SharedArena::default_limit(SegmentBacking backing) {
  if (backing == SegmentBacking::automatic) backing = default_backing();
  if (backing == SegmentBacking::memfd) {
    const std::size_t avail = available_memory();
    return avail > 0 ? avail / 2 : std::size_t{1} << 30;
  }
  struct statvfs st {};
  if (statvfs("/dev/shm", &st) != 0) return std::size_t{1} << 30;
  return static_cast<std::size_t>(st.f_bavail) * static_cast<std::size_t>(st.f_frsize) / 2;
}

SegmentBacking SharedArena::backing() const {
  return backing_word_ == kBackedByMemfd ? SegmentBacking::memfd : SegmentBacking::dev_shm;
}

// --- making, opening and dropping segments ---------------------------------------

SharedSegment SharedArena::make_segment(uint32_t slot, std::size_t bytes) {
  SlotRecord& s = ctl().slots[slot];
  const std::string label = slot_name(slot);  // written by claim_slot_locked(); checked all the same
  if (backing_word_ == kBackedByMemfd) {
    UniqueFd fd(memfd_create(label.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
    // No memfd (out of descriptors, say): this segment goes to /dev/shm.
    if (fd) {
      const std::string what = std::to_string(bytes) + " bytes of shared memory (memfd " + label + ")";
      if (ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) throw_errno("ftruncate " + what);
      // Backed now: memory that is not there fails here, not as SIGBUS later.
      if (fallocate(fd.get(), 0, 0, static_cast<off_t>(bytes)) != 0 && errno != EOPNOTSUPP && errno != ENOSYS)
        throw_errno("fallocate " + what);
      // Nobody may shrink (or grow) it under the others' mappings. Best effort.
      (void)fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
      struct stat st {};
      if (fstat(fd.get(), &st) != 0) throw_errno("fstat " + what);
      SharedSegment seg = SharedSegment::map_descriptor(fd.get(), bytes, label);
      s.file_ino.store(st.st_ino, std::memory_order_relaxed);
      s.file_dev.store(st.st_dev, std::memory_order_relaxed);
      int owner_fd = -1;
      if (owns_name()) {
        std::lock_guard<std::mutex> lock(owned_mutex());
        OwnedFd& held = owned_[slot];
        if (held.fd >= 0) ::close(held.fd);  // a former segment's, not closed yet
        held = OwnedFd{fd.release(), static_cast<uint64_t>(st.st_ino)};
        owner_fd = held.fd;
      } else {
        owner_fd = hand_to_owner(slot, fd.get());
      }
      if (owner_fd >= 0) {
        s.owner_fd.store(owner_fd, std::memory_order_relaxed);
        s.backing.store(kBackedByMemfd, std::memory_order_release);
        return seg;
      }
      // The owner did not take it (gone, closing, or cannot inspect us): /dev/shm it is.
    }
  }
  s.owner_fd.store(-1, std::memory_order_relaxed);
  s.backing.store(kBackedByName, std::memory_order_release);
  return create_named_segment(label, bytes);
}

UniqueFd SharedArena::open_segment(uint32_t slot, int flags, std::size_t need_bytes) const {
  const SlotRecord& s = ctl().slots[slot];
  struct stat st {};
  if (s.backing.load(std::memory_order_acquire) == kBackedByName) {
    std::string path("/");
    path += slot_name(slot);
    UniqueFd fd(shm_open(path.c_str(), flags | O_CLOEXEC, 0));
    if (fd && (fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || static_cast<std::size_t>(st.st_size) < need_bytes)) {
      fd.reset();
      errno = ESTALE;  // not the file the arena made
    }
    return fd;
  }
  // The owner's pid is this handle's copy: the slot only says which of its descriptors.
  UniqueFd fd(open(proc_fd_path(arena_owner_, s.owner_fd.load(std::memory_order_relaxed)).c_str(),
                   flags | O_CLOEXEC));
  if (fd && (fstat(fd.get(), &st) != 0 || static_cast<uint64_t>(st.st_ino) != s.file_ino.load() ||
             static_cast<uint64_t>(st.st_dev) != s.file_dev.load() ||
             static_cast<std::size_t>(st.st_size) < need_bytes)) {
    fd.reset();
    errno = ESTALE;  // the owner's descriptor now names another file: ours is gone
  }
  return fd;
}

SharedSegment SharedArena::map_segment(uint32_t slot) const {
  const SlotRecord& s = ctl().slots[slot];
  const std::string seg_name = slot_name(slot);
  // Every segment is whole pages, and none is larger than the limit (a larger
  // block is refused): a size past that is garbage, and mapping it would let
  // offsets reach past the file (SIGBUS).
  const uint64_t bytes = s.bytes;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t most = limit_ > ~uint64_t{0} - page ? ~uint64_t{0} : (limit_ + page - 1) / page * page;
  if (bytes == 0 || bytes % page != 0 || bytes > most)
    corrupt("segment slot " + std::to_string(slot) + " says its segment is " + std::to_string(bytes) + " bytes long");
  if (s.backing.load(std::memory_order_acquire) == kBackedByName) return SharedSegment::attach(seg_name);
  UniqueFd fd = open_segment(slot, O_RDWR, bytes);  // checks the file holds `bytes`
  if (!fd) {
    const int err = errno;
    if (err == EMFILE || err == ENFILE || err == ENOMEM) throw_errno("open shared-memory segment " + seg_name, err);
    throw NotFoundError("shared-memory segment '" + seg_name + "' of arena '" + name() +
                        "' cannot be reached: its owner (pid " + std::to_string(arena_owner_) +
                        ") has exited or closed the arena" +
                        (err == EACCES || err == EPERM
                             ? ", or may not be inspected by this process (/proc/<pid>/fd: another user, or "
                               "not dumpable; SHOAL_ARENA_BACKING=shm puts segments in /dev/shm instead)"
                             : ""));
  }
  return SharedSegment::map_descriptor(fd.get(), bytes, seg_name);
}

void SharedArena::release_segment_locked(uint32_t slot) {
  SlotRecord& s = ctl().slots[slot];
  if (s.backing.load(std::memory_order_acquire) == kBackedByName) {
    // Never a name of another form: garbage must not make us remove other segments.
    const std::string seg_name = slot_name_or_empty(slot);
    if (!seg_name.empty()) unlink_name(seg_name.c_str());
    return;
  }
  if (!owns_name()) {
    wake_service();  // the owner closes its descriptor
    return;
  }
  int fd = -1;
  {
    std::lock_guard<std::mutex> lock(owned_mutex());
    OwnedFd& held = owned_[slot];
    if (held.fd >= 0 && held.ino == s.file_ino.load(std::memory_order_relaxed)) fd = std::exchange(held.fd, -1);
  }
  if (fd >= 0) ::close(fd);
}

// --- the handoff, creator's side --------------------------------------------------

int SharedArena::hand_to_owner(uint32_t slot, int fd) {
  Control& c = ctl();
  SlotRecord& s = c.slots[slot];
  if (c.service_alive.load(std::memory_order_acquire) == 0 || c.closed.load(std::memory_order_acquire) != 0)
    return -1;
  s.adopted_fd.store(-1, std::memory_order_relaxed);
  s.creator_fd.store(fd, std::memory_order_relaxed);
  s.handoff.store(kHandoffRequested, std::memory_order_release);
  wake_service();
  const Deadline deadline =
      Deadline::after(std::chrono::milliseconds(handoff_timeout_ms_.load(std::memory_order_relaxed)));
  for (;;) {
    uint32_t state = s.handoff.load(std::memory_order_acquire);
    if (state == kHandoffAdopted) return s.adopted_fd.load(std::memory_order_relaxed);
    if (state == kHandoffRefused) return -1;
    if (deadline.expired() || c.service_alive.load(std::memory_order_acquire) == 0 ||
        !process_alive(arena_owner_)) {
      // Stop waiting, unless the answer just came: the service's answer then loses.
      if (s.handoff.compare_exchange_strong(state, kHandoffAbandoned, std::memory_order_acq_rel)) return -1;
      continue;
    }
    futex_wait(s.handoff, state, deadline.capped(std::chrono::milliseconds(50)));
  }
}

void SharedArena::wake_service() const {
  ctl().service_seq.fetch_add(1, std::memory_order_release);
  futex_wake_all(ctl().service_seq);
}

// --- the owner's service ------------------------------------------------------------

void SharedArena::start_service() {
  Control& c = ctl();
  c.service_alive.store(1, std::memory_order_release);
  // No signal is ever delivered to it: the process's handlers run elsewhere.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  const int rc = pthread_create(&service_thread_, nullptr, service_main, this);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (rc != 0) {
    c.service_alive.store(0, std::memory_order_release);  // non-owners use /dev/shm
    return;
  }
  service_started_ = true;
  // Until the new thread runs our code, its start-up (the C library's, a
  // sanitizer's) may hold allocator locks; a fork() of the owner meanwhile
  // (start_method="fork", a test's child) would give the child those locks
  // held forever. So the owner returns only once the thread is serving.
  const Deadline started = Deadline::after(std::chrono::seconds(5));
  while (service_running_.load(std::memory_order_acquire) == 0 && !started.expired())
    futex_wait(service_running_, 0, started.capped(std::chrono::milliseconds(50)));
}

void SharedArena::stop_service() {
  if (!service_started_) return;
  std::call_once(service_stopped_, [this] {
    Control& c = ctl();
    c.service_alive.store(0, std::memory_order_release);
    service_stop_.store(true, std::memory_order_release);
    wake_service();
    pthread_join(service_thread_, nullptr);
    // Requests nobody will answer now: refuse them rather than let their creators wait.
    const uint32_t n = slot_count();
    for (uint32_t i = 0; i < n; ++i) {
      uint32_t requested = kHandoffRequested;
      if (c.slots[i].handoff.compare_exchange_strong(requested, kHandoffRefused, std::memory_order_acq_rel))
        futex_wake_all(c.slots[i].handoff);
    }
  });
}

void* SharedArena::service_main(void* arena) {
  pthread_setname_np(pthread_self(), "shoal-arena");
  static_cast<SharedArena*>(arena)->serve();
  return nullptr;
}

void SharedArena::serve() {
  Control& c = ctl();
  service_running_.store(1, std::memory_order_release);
  futex_wake_all(service_running_);
  while (!service_stop_.load(std::memory_order_acquire)) {
    const uint32_t seen = c.service_seq.load(std::memory_order_acquire);
    try {
      adopt_handoffs();
      close_dropped_memfds();
    } catch (...) {
      // Out of memory for a path, say: the next round tries again.
    }
    if (service_stop_.load(std::memory_order_acquire)) break;
    futex_wait(c.service_seq, seen, Deadline::after(kServiceSweep));
  }
}

void SharedArena::adopt_handoffs() {
  Control& c = ctl();
  const uint32_t n = slot_count();  // never past owned_ (kMaxSegments entries)
  for (uint32_t i = 0; i < n; ++i) {
    SlotRecord& s = c.slots[i];
    uint32_t state = kHandoffRequested;
    if (!s.handoff.compare_exchange_strong(state, kHandoffAdopting, std::memory_order_acq_rel)) continue;
    const pid_t creator = s.creator.load(std::memory_order_relaxed);
    const int creator_fd = s.creator_fd.load(std::memory_order_relaxed);
    const uint64_t ino = s.file_ino.load(std::memory_order_relaxed);
    const uint64_t dev = s.file_dev.load(std::memory_order_relaxed);
    UniqueFd fd(open(proc_fd_path(creator, creator_fd).c_str(), O_RDWR | O_CLOEXEC));
    struct stat st {};
    if (fd && (fstat(fd.get(), &st) != 0 || static_cast<uint64_t>(st.st_ino) != ino ||
               static_cast<uint64_t>(st.st_dev) != dev))
      fd.reset();  // not the file the creator made: a pid or descriptor since reused
    {
      std::lock_guard<std::mutex> lock(owned_mutex());
      if (fd) s.adopted_fd.store(fd.get(), std::memory_order_relaxed);
      uint32_t adopting = kHandoffAdopting;
      // Fails if the creator stopped waiting: then `fd` is closed below.
      if (s.handoff.compare_exchange_strong(adopting, fd ? kHandoffAdopted : kHandoffRefused,
                                            std::memory_order_acq_rel) &&
          fd) {
        OwnedFd& held = owned_[i];
        if (held.fd >= 0) ::close(held.fd);
        held = OwnedFd{fd.release(), ino};
      }
    }
    futex_wake_all(s.handoff);
  }
}

void SharedArena::close_dropped_memfds() {
  std::vector<int> dropped;  // closed outside the lock: the last close of a huge memfd frees its memory
  {
    std::lock_guard<std::mutex> lock(owned_mutex());
    const Control& c = ctl();
    for (uint32_t i = 0; i < owned_.size(); ++i) {
      OwnedFd& held = owned_[i];
      if (held.fd < 0) continue;
      const SlotRecord& s = c.slots[i];
      const uint32_t kind = s.kind.load(std::memory_order_acquire);
      const bool live = kind == kCreating || ((kind == kPooled || kind == kDedicated) &&
                                              s.backing.load(std::memory_order_acquire) == kBackedByMemfd &&
                                              s.file_ino.load(std::memory_order_relaxed) == held.ino);
      if (!live) dropped.push_back(std::exchange(held.fd, -1));
    }
  }
  for (int fd : dropped) ::close(fd);
}

void SharedArena::close_owned_memfds() {
  std::vector<int> dropped;
  {
    std::lock_guard<std::mutex> lock(owned_mutex());
    for (OwnedFd& held : owned_)
      if (held.fd >= 0) dropped.push_back(std::exchange(held.fd, -1));
  }
  for (int fd : dropped) ::close(fd);
}

// --- registration and forks ---------------------------------------------------------

void SharedArena::register_owner() {
  static std::once_flag hooks;
  std::call_once(hooks, [] { pthread_atfork(fork_prepare, fork_parent, fork_child); });
  std::lock_guard<std::mutex> lock(owned_mutex());
  owned_.assign(kMaxSegments, OwnedFd{});
  owner_arenas().push_back(this);
}

void SharedArena::unregister_owner() noexcept {
  std::lock_guard<std::mutex> lock(owned_mutex());
  auto& arenas = owner_arenas();
  arenas.erase(std::remove(arenas.begin(), arenas.end(), this), arenas.end());
}

void SharedArena::fork_prepare() { owned_mutex().lock(); }
void SharedArena::fork_parent() { owned_mutex().unlock(); }

void SharedArena::fork_child() {
  // The copies of the parent's descriptors: the child is no owner, and would
  // keep freed blocks' memory alive for as long as it lives.
  for (SharedArena* arena : owner_arenas())
    for (OwnedFd& held : arena->owned_)
      if (held.fd >= 0) ::close(std::exchange(held.fd, -1));
  owner_arenas().clear();
  owned_mutex().unlock();
}

}  // namespace shoal
