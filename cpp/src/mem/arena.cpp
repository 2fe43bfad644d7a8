// SharedArena: life cycle, the segment slot table, reference counts, mappings
// and huge (dedicated) blocks. The pooled-segment allocator is in
// arena_pool.cpp; what backs the segments (memfds or /dev/shm) and how other
// processes reach them, in arena_segments.cpp.
#include "shoal/mem/arena.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <new>
#include <system_error>
#include <utility>

#include "arena_layout.hpp"
#include "arena_lock.hpp"
#include "shm_file.hpp"
#include "shoal/base/errors.hpp"

namespace shoal {

using namespace arena_detail;

namespace {

std::size_t page_size() {
  static const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return page;
}

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

std::string human(std::size_t bytes) {
  char buf[64];
  if (bytes >= (std::size_t{1} << 30))
    std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(bytes) / (1 << 30));
  else if (bytes >= (std::size_t{1} << 20))
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  else if (bytes >= 1024)
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(bytes) / 1024);
  else
    return std::to_string(bytes) + " bytes";
  return std::string(buf) + " (" + std::to_string(bytes) + " bytes)";
}

// One handle per arena per process, so that every part of a process shares
// the same mappings and reference bookkeeping. A forked child inherits its
// parent's entries; it does not reuse them (they are keyed by pid), it attaches
// afresh, as a spawned process would.
struct Registered {
  pid_t pid;
  std::weak_ptr<SharedArena> arena;
};
std::mutex& registry_mutex() {
  static std::mutex mu;
  return mu;
}
std::atomic<bool> mapping_cache_enabled{false};

std::unordered_map<std::string, Registered>& registry() {
  static auto* map = new std::unordered_map<std::string, Registered>();
  return *map;
}

}  // namespace

// --- life cycle --------------------------------------------------------------

SharedArena::SharedArena(SharedSegment control, bool owner)
    : control_(std::move(control)),
      ctl_(static_cast<Control*>(control_.data())),
      owner_pid_(owner ? getpid() : 0),
      pooled_(kMaxSegments),
      pooled_base_(new std::atomic<std::byte*>[kMaxSegments]),
      pooled_size_(new std::atomic<std::size_t>[kMaxSegments]),
      pooled_fd_(kMaxSegments) {
  // Checked by create() and attach() before they get here.
  arena_owner_ = ctl_->owner_pid;
  limit_ = ctl_->limit_bytes;
  segment_bytes_ = ctl_->segment_bytes;
  backing_word_ = ctl_->backing;
  for (uint32_t i = 0; i < kMaxSegments; ++i) {
    pooled_base_[i].store(nullptr, std::memory_order_relaxed);
    pooled_size_[i].store(0, std::memory_order_relaxed);
  }
}

std::shared_ptr<SharedArena> SharedArena::create(std::size_t limit_bytes, std::size_t segment_bytes,
                                                 SegmentBacking backing) {
  if (backing == SegmentBacking::automatic) backing = default_backing();
  if (backing == SegmentBacking::memfd && !memfds_shareable())
    throw std::system_error(ENOTSUP, std::generic_category(),
                            "memfd-backed shared memory cannot be shared with other processes here (memfd_create "
                            "or /proc/<pid>/fd unavailable, or the process is not dumpable)");
  if (limit_bytes == 0) limit_bytes = default_limit(backing);
  if (limit_bytes == 0) throw std::invalid_argument("the shared-memory arena's limit must be positive");
  if (segment_bytes == 0) segment_bytes = kDefaultSegmentBytes;
  // A pooled segment never needs to be larger than the limit.
  segment_bytes = std::min(round_up(segment_bytes, page_size()),
                           std::max(round_up(limit_bytes, page_size()), std::size_t{64} << 10));
  SharedSegment seg = SharedSegment::create(sizeof(Control));
  auto* c = new (seg.data()) Control();
  c->version = kLayoutVersion;
  c->max_segments = kMaxSegments;
  c->limit_bytes = limit_bytes;
  c->segment_bytes = segment_bytes;
  c->owner_pid = getpid();
  c->backing = backing == SegmentBacking::memfd ? kBackedByMemfd : kBackedByName;
  for (auto& b : c->bins) b = kNil;
  c->next_generation = 1;
  // The name has not been handed out yet; the magic goes last all the same.
  std::atomic_ref<uint64_t>(c->magic).store(kControlMagic, std::memory_order_release);
  std::shared_ptr<SharedArena> arena(new SharedArena(std::move(seg), true));
  if (backing == SegmentBacking::memfd) {
    arena->register_owner();
    arena->start_service();  // takes the memfds other processes make
  }
  register_handle(arena);
  return arena;
}

std::shared_ptr<SharedArena> SharedArena::attach(const std::string& name_in) {
  const std::string name = name_in.starts_with('/') ? name_in.substr(1) : name_in;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = registry().find(name);
    if (it != registry().end() && it->second.pid == getpid())
      if (auto live = it->second.arena.lock()) return live;
  }
  SharedSegment seg = SharedSegment::attach(name);
  auto* c = static_cast<Control*>(seg.data());
  if (seg.size() < sizeof(Control) ||
      std::atomic_ref<uint64_t>(c->magic).load(std::memory_order_acquire) != kControlMagic ||
      c->version != kLayoutVersion || c->max_segments != kMaxSegments)
    throw std::invalid_argument("shared-memory segment '" + name + "' does not hold a shoal arena");
  // The fields every handle keeps a copy of (and later compares) must make
  // sense now: garbage here would be trusted for the handle's life.
  std::string fault;
  if (c->owner_pid <= 0 || !is_segment_name(name, c->owner_pid))
    fault = "its owner's pid (" + std::to_string(c->owner_pid) + ") is not the one its name carries";
  else if (c->limit_bytes == 0 || c->segment_bytes == 0 || c->segment_bytes % page_size() != 0)
    fault = "its limit (" + std::to_string(c->limit_bytes) + " bytes) or segment size (" +
            std::to_string(c->segment_bytes) + " bytes) is impossible";
  else if (c->backing != kBackedByName && c->backing != kBackedByMemfd)
    fault = "its backing word is " + std::to_string(c->backing);
  if (!fault.empty())
    throw CorruptFrameError("shared-memory arena '" + name + "' was corrupted: " + fault +
                            " (another process wrote over its shared memory)");
  std::shared_ptr<SharedArena> arena(new SharedArena(std::move(seg), false));
  register_handle(arena);
  return arena;
}

void SharedArena::register_handle(const std::shared_ptr<SharedArena>& arena) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto& entry = registry()[arena->name()];
  if (entry.pid == getpid() && !entry.arena.expired()) return;  // raced with another attach: both work
  entry = Registered{getpid(), arena};
}

SharedArena::~SharedArena() {
  try {
    close();
  } catch (...) {
  }
  if (owns_name()) {  // even if close() failed: the service thread must not outlive the handle
    stop_service();
    close_owned_memfds();
  }
  unregister_owner();
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto it = registry().find(control_.name());
  if (it != registry().end() && (it->second.pid != getpid() || it->second.arena.expired())) registry().erase(it);
}

void SharedArena::close() {
  closed_.store(true, std::memory_order_release);
  if (owner_pid_ != 0 && owner_pid_ == getpid()) {
    unlink_all_names();
    stop_service();        // after `closed`: no creator asks any more
    close_owned_memfds();  // nobody can open a segment anew; mappings stay
  }
}

bool SharedArena::closed() const {
  return closed_.load(std::memory_order_acquire) || ctl().closed.load(std::memory_order_acquire) != 0;
}

void SharedArena::unlink_all_names() {
  // Under the mutex (if it can be had soon), so that no process is halfway
  // through creating a segment whose name we would miss.
  LockResult r = LockResult::timed_out;
  try {
    r = ctl().mutex.lock(Deadline::after(std::min<std::chrono::milliseconds>(
        std::chrono::seconds(2), std::chrono::milliseconds(lock_timeout_ms_.load(std::memory_order_relaxed)))));
  } catch (const std::exception&) {
    // Garbage over the mutex: go on without it, as after a timeout.
  }
  // Its holder died: leave the rebuild to the next locker (this is no allocation).
  if (r == LockResult::previous_owner_died) ctl().recovering.store(1, std::memory_order_release);
  ctl().closed.store(1, std::memory_order_release);
  const uint32_t n = slot_count();
  for (uint32_t i = 0; i < n; ++i) {
    const SlotRecord& s = ctl().slots[i];
    if (s.kind.load(std::memory_order_acquire) != kEmpty && s.backing.load(std::memory_order_acquire) == kBackedByName) {
      const std::string seg_name = slot_name_or_empty(i);  // none of another form
      if (!seg_name.empty()) unlink_name(seg_name.c_str());
    }
  }
  if (r != LockResult::timed_out) {
    try {
      ctl().mutex.unlock();
    } catch (const std::exception&) {
      // Overwritten while held: nothing more to do about it here.
    }
  }
  control_.unlink();
}

const std::string& SharedArena::name() const { return control_.name(); }
bool SharedArena::owns_name() const { return owner_pid_ != 0 && owner_pid_ == getpid(); }
std::size_t SharedArena::limit_bytes() const { return limit_; }
std::size_t SharedArena::segment_bytes() const { return segment_bytes_; }
std::size_t SharedArena::used_bytes() const { return ctl().used_bytes.load(std::memory_order_acquire); }
std::size_t SharedArena::mapped_bytes() const { return ctl().mapped_bytes.load(std::memory_order_acquire); }
uint64_t SharedArena::recoveries() const { return ctl().recoveries.load(std::memory_order_acquire); }

std::size_t SharedArena::segment_count() const {
  std::size_t live = 0;
  const uint32_t n = slot_count();
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t k = ctl().slots[i].kind.load(std::memory_order_acquire);
    live += (k == kPooled || k == kDedicated);
  }
  return live;
}

// --- garbage in shared memory --------------------------------------------------

std::atomic<int64_t> SharedArena::lock_timeout_ms_{
    std::chrono::duration_cast<std::chrono::milliseconds>(kArenaLockTimeout).count()};

void SharedArena::corrupt(const std::string& what) const {
  throw CorruptFrameError("shared-memory arena '" + name() + "' was corrupted: " + what +
                          " (another process wrote over its shared memory)");
}

void SharedArena::check_control() const {
  const Control& c = ctl();
  if (std::atomic_ref<const uint64_t>(c.magic).load(std::memory_order_relaxed) != kControlMagic ||
      c.version != kLayoutVersion || c.max_segments != kMaxSegments)
    corrupt("its control block's magic number or layout version was overwritten");
  if (c.owner_pid != arena_owner_ || c.limit_bytes != limit_ || c.segment_bytes != segment_bytes_ ||
      c.backing != backing_word_)
    corrupt("its control block's owner, limit, segment size or backing changed (owner pid " +
            std::to_string(c.owner_pid) + ", limit " + std::to_string(c.limit_bytes) + ")");
}

uint32_t SharedArena::slot_count() const {
  return std::min(ctl().slot_count.load(std::memory_order_acquire), kMaxSegments);
}

std::string SharedArena::slot_name_or_empty(uint32_t slot) const {
  const SlotRecord& s = ctl().slots[slot];
  char buf[sizeof s.name];
  std::memcpy(buf, s.name, sizeof buf);  // once: the checked copy is the one used
  std::string seg_name(buf, strnlen(buf, sizeof buf));
  return is_segment_name(seg_name, arena_owner_) ? seg_name : std::string();
}

std::string SharedArena::slot_name(uint32_t slot) const {
  std::string seg_name = slot_name_or_empty(slot);
  if (seg_name.empty())
    corrupt("segment slot " + std::to_string(slot) + " holds a name not of the arena's form (shoal-" +
            std::to_string(arena_owner_) + "-<16 hex digits>)");
  return seg_name;
}

uint64_t SharedArena::next_generation_locked() {
  uint64_t g = ctl().next_generation++;
  if (g == 0) g = ctl().next_generation++;  // 0 names no live block: garbage wrapped it
  return g;
}

BlockHeader* SharedArena::live_header(const Block& b) const {
  BlockHeader* h = pooled_header(b);
  const uint64_t at = b.offset - kHeaderBytes;
  const uint64_t state = std::atomic_ref<uint64_t>(h->state).load(std::memory_order_acquire);
  if (b.generation == 0 || h->generation.load(std::memory_order_acquire) != b.generation) {
    // A header that has been freed keeps its words (used or free); bytes that
    // are neither are no header at all.
    if (b.generation != 0 && state != kUsedWord && state != kFreeWord)
      throw CorruptFrameError("shared-memory arena '" + name() + "': there is no block header at offset " +
                              std::to_string(at) + " of segment " + std::to_string(b.segment) +
                              ": it was overwritten (another process wrote over the arena's shared memory), "
                              "or the descriptor names no block of this arena (released once too often?)");
    throw std::invalid_argument("shared-memory block was already freed (released once too often?)");
  }
  // The generation matches: the header is the block's, and must say so.
  const uint64_t span = h->span;
  if (state != kUsedWord || !span_fits(at, span, pooled_size_[b.segment].load(std::memory_order_relaxed)))
    corrupt("the header of the block at offset " + std::to_string(at) + " of segment " + std::to_string(b.segment) +
            " was overwritten (state word " + std::to_string(state) + ", span " + std::to_string(span) + ")");
  if (b.size > span - kHeaderBytes)
    throw std::invalid_argument("block descriptor claims " + std::to_string(b.size) + " bytes of a " +
                                std::to_string(span - kHeaderBytes) + "-byte block");
  return h;
}

// --- the lock ----------------------------------------------------------------

SharedArena::Locked::Locked(SharedArena& arena) : arena_(arena) {
  arena.check_control();
  Control& c = arena.ctl();
  LockResult r;
  try {
    r = c.mutex.lock(Deadline::after(std::chrono::milliseconds(lock_timeout_ms_.load(std::memory_order_relaxed))));
  } catch (const std::exception& e) {  // garbage over the mutex (CorruptFrameError, or glibc's EINVAL...)
    arena.corrupt(std::string("its lock is unusable: ") + e.what());
  }
  if (r == LockResult::timed_out)
    throw std::runtime_error("timed out waiting for the lock of shared-memory arena '" + arena.name() +
                             "' (a process holding it may be stopped, or its lock was overwritten)");
  if (r == LockResult::previous_owner_died || c.recovering.load(std::memory_order_acquire) != 0) {
    try {
      arena.recover_locked();
    } catch (...) {
      try {
        c.mutex.unlock();
      } catch (...) {
      }
      throw;
    }
  }
}

SharedArena::Locked::~Locked() {
  try {
    arena_.ctl().mutex.unlock();
  } catch (...) {
    // The mutex was overwritten while held (EPERM): the next locker times out
    // or finds it unusable, and says so; this destructor must not throw.
  }
}

// --- limits ------------------------------------------------------------------

void SharedArena::throw_limit(std::size_t requested, const char* why) const {
  const std::size_t limit = limit_bytes(), used = used_bytes();
  throw ArenaLimitError("cannot allocate " + human(requested) + " of shared memory: " + why +
                            " (the arena's limit is " + human(limit) + ", " + human(used) +
                            " are in use); raise the limit with shm_limit= on the pool (or the "
                            "limit given when the arena is created), or free shared buffers sooner",
                        requested, limit, used);
}

// --- slots -------------------------------------------------------------------

uint32_t SharedArena::claim_slot_locked(std::size_t bytes, uint32_t purpose) {
  Control& c = ctl();
  if (const uint32_t word = c.closed.load(std::memory_order_acquire); word != 0) {
    if (word > 1) corrupt("its closed word is " + std::to_string(word));  // the owner writes 1
    throw ClosedError("shared-memory arena '" + name() + "' is closed");
  }
  const uint32_t n = c.slot_count.load(std::memory_order_relaxed);
  if (n > kMaxSegments)
    corrupt("its slot count is " + std::to_string(n) + ", more than the " + std::to_string(kMaxSegments) +
            " slots it has");
  uint32_t slot = n;
  for (uint32_t i = 0; i < n && slot == n; ++i) {
    SlotRecord& s = c.slots[i];
    const uint32_t kind = s.kind.load(std::memory_order_relaxed);
    // A slot this process maps as a pooled segment is never empty (pooled
    // segments live as long as the arena): a kind saying so is garbage, and
    // reusing the slot would replace a mapping other threads read.
    if (pooled_base_[i].load(std::memory_order_relaxed) != nullptr) continue;
    if (kind == kEmpty) {
      slot = i;
    } else if (kind == kCreating && s.purpose == kForBlock && !process_alive(s.creator)) {
      // A process died creating a huge block outside the mutex: take back its reservation.
      c.used_bytes.fetch_sub(s.bytes, std::memory_order_relaxed);
      c.mapped_bytes.fetch_sub(s.bytes, std::memory_order_relaxed);
      forget_slot_locked(i);
      slot = i;
    }
  }
  if (slot == kMaxSegments) throw_limit(bytes, "the arena has no free segment slot left");
  SlotRecord& s = c.slots[slot];
  const std::string seg_name = segment_name(arena_owner_);
  std::memset(s.name, 0, sizeof s.name);
  std::memcpy(s.name, seg_name.data(), std::min(seg_name.size(), sizeof s.name - 1));
  s.bytes = bytes;
  s.block_size = 0;
  s.creator = getpid();
  s.purpose = purpose;
  s.refs.store(0, std::memory_order_relaxed);
  s.generation.store(0, std::memory_order_relaxed);
  s.backing.store(kBackedByName, std::memory_order_relaxed);  // until make_segment() says otherwise
  s.owner_fd.store(-1, std::memory_order_relaxed);
  s.file_ino.store(0, std::memory_order_relaxed);
  s.file_dev.store(0, std::memory_order_relaxed);
  s.creator_fd.store(-1, std::memory_order_relaxed);
  s.adopted_fd.store(-1, std::memory_order_relaxed);
  s.handoff.store(kHandoffNone, std::memory_order_relaxed);
  s.kind.store(kCreating, std::memory_order_release);
  // A new slot becomes visible to recovery only now, with its name in place.
  if (slot == n) c.slot_count.store(n + 1, std::memory_order_release);
  return slot;
}

void SharedArena::forget_slot_locked(uint32_t slot) {
  SlotRecord& s = ctl().slots[slot];
  s.kind.store(kEmpty, std::memory_order_release);
  release_segment_locked(slot);  // after: the owner's service then sees the slot empty
}

// --- mappings ----------------------------------------------------------------

std::byte* SharedArena::pooled_base(uint32_t slot) const {
  if (slot >= kMaxSegments) throw std::invalid_argument("block descriptor names no segment of this arena");
  std::byte* base = pooled_base_[slot].load(std::memory_order_acquire);
  if (base) return base;
  std::lock_guard<std::mutex> lock(local_mu_);
  base = pooled_base_[slot].load(std::memory_order_relaxed);
  if (base) return base;
  const SlotRecord& s = ctl().slots[slot];
  if (s.kind.load(std::memory_order_acquire) != kPooled)
    throw std::invalid_argument("block descriptor names no live segment of shared-memory arena '" + name() +
                                "' (segment " + std::to_string(slot) +
                                " is no pooled segment: the descriptor is not one of this arena's, or the "
                                "arena's slot table was overwritten)");
  auto seg = std::make_unique<SharedSegment>(map_segment(slot));
  // Every offset into the segment is checked against this size: this
  // process's own mapping, whatever the slot table says later.
  const std::size_t size = std::min<std::size_t>(seg->size(), s.bytes);
  if (size < kMinSpan || size % kAlignment != 0)
    corrupt("segment " + std::to_string(slot) + " is " + std::to_string(size) + " bytes long");
  base = seg->bytes();
  pooled_size_[slot].store(size, std::memory_order_relaxed);
  pooled_[slot] = std::move(seg);
  pooled_base_[slot].store(base, std::memory_order_release);
  return base;
}

std::size_t SharedArena::pooled_size(uint32_t slot) const {
  pooled_base(slot);
  return pooled_size_[slot].load(std::memory_order_relaxed);
}

BlockHeader* SharedArena::pooled_header(const Block& b) const {
  std::byte* base = pooled_base(b.segment);
  const std::size_t size = pooled_size_[b.segment].load(std::memory_order_relaxed);
  if (b.offset < kHeaderBytes || b.offset % kAlignment != 0 || b.offset > size || b.size > size - b.offset)
    throw std::invalid_argument("block descriptor lies outside its segment");
  return reinterpret_cast<BlockHeader*>(base + b.offset - kHeaderBytes);
}

std::atomic<uint32_t>& SharedArena::refs_of(const Block& b) const {
  if (b.dedicated()) {
    if (b.segment >= kMaxSegments) throw std::invalid_argument("block descriptor names no segment of this arena");
    SlotRecord& s = ctl().slots[b.segment];
    if (b.generation == 0 || s.generation.load(std::memory_order_acquire) != b.generation ||
        s.kind.load(std::memory_order_acquire) != kDedicated)
      throw std::invalid_argument("shared-memory block was already freed (released once too often?)");
    if (b.offset != 0 || b.size > s.bytes)  // a huge block is its whole segment
      throw std::invalid_argument("block descriptor lies outside its segment");
    return s.refs;
  }
  return live_header(b)->refs;
}

void SharedArena::pin(const Block& b) {
  if (!b.dedicated()) {
    pooled_base(b.segment);
    return;
  }
  std::vector<LocalDedicated> dropped;  // unmapped after the lock is let go
  std::lock_guard<std::mutex> lock(local_mu_);
  auto it = dedicated_.find(b.generation);
  if (it != dedicated_.end()) {
    if (it->second.slot != b.segment)
      throw std::invalid_argument("block descriptor names segment " + std::to_string(b.segment) +
                                  ", but its generation is that of segment " + std::to_string(it->second.slot));
    if (it->second.pins++ == 0) --idle_count_;
    it->second.last_used = ++use_clock_;
    return;
  }
  if (b.segment >= kMaxSegments) throw std::invalid_argument("block descriptor names no segment of this arena");
  const SlotRecord& s = ctl().slots[b.segment];
  if (b.generation == 0 || s.generation.load(std::memory_order_acquire) != b.generation ||
      s.kind.load(std::memory_order_acquire) != kDedicated)
    throw std::invalid_argument("shared-memory block was already freed");
  auto seg = std::make_shared<SharedSegment>(map_segment(b.segment));
  if (b.offset != 0 || b.size > seg->size())
    throw std::invalid_argument("block descriptor lies outside its segment");
  dedicated_.emplace(b.generation, LocalDedicated{std::move(seg), b.segment, 1, ++use_clock_});
  collect_idle_locked(dropped);
}

void SharedArena::unpin(const Block& b) {
  if (!b.dedicated()) return;
  std::vector<LocalDedicated> dropped;  // unmapped after the lock is let go
  std::lock_guard<std::mutex> lock(local_mu_);
  auto it = dedicated_.find(b.generation);
  // No pin here to undo (a reference disowned elsewhere, dropped with release()
  // instead of release_disowned()): nothing to do, and never a count below zero.
  if (it == dedicated_.end() || it->second.pins == 0 || it->second.slot != b.segment) return;
  if (--it->second.pins == 0) {
    if (mapping_cache_enabled.load(std::memory_order_relaxed) && dedicated_alive(b.segment, b.generation)) {
      ++idle_count_;
    } else {
      dropped.push_back(std::move(it->second));
      dedicated_.erase(it);
    }
  }
  collect_idle_locked(dropped);
}

bool SharedArena::dedicated_alive(uint32_t slot, uint64_t generation) const {
  const SlotRecord& s = ctl().slots[slot];
  return s.generation.load(std::memory_order_acquire) == generation &&
         s.kind.load(std::memory_order_acquire) == kDedicated;
}

void SharedArena::collect_idle_locked(std::vector<LocalDedicated>& out) {
  if (idle_count_ == 0) return;
  auto oldest = dedicated_.end();
  for (auto it = dedicated_.begin(); it != dedicated_.end();) {
    LocalDedicated& local = it->second;
    if (local.pins == 0 && !dedicated_alive(local.slot, it->first)) {
      out.push_back(std::move(local));
      it = dedicated_.erase(it);
      --idle_count_;
      continue;
    }
    if (local.pins == 0 && (oldest == dedicated_.end() || local.last_used < oldest->second.last_used)) oldest = it;
    ++it;
  }
  if (idle_count_ > kMaxIdleMappings && oldest != dedicated_.end()) {
    out.push_back(std::move(oldest->second));
    dedicated_.erase(oldest);
    --idle_count_;
  }
}

void SharedArena::cache_idle_mappings(bool enabled) { mapping_cache_enabled.store(enabled, std::memory_order_relaxed); }

std::size_t SharedArena::trim_idle_mappings() {
  std::vector<std::shared_ptr<SharedArena>> arenas;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    for (auto& [name, entry] : registry())
      if (entry.pid == getpid())
        if (auto arena = entry.arena.lock()) arenas.push_back(std::move(arena));
  }
  std::size_t left = 0;
  for (auto& arena : arenas) {
    std::vector<LocalDedicated> dropped;
    std::lock_guard<std::mutex> lock(arena->local_mu_);
    arena->collect_idle_locked(dropped);
    left += arena->idle_count_;
  }
  return left;
}

std::size_t SharedArena::idle_mappings() const {
  std::lock_guard<std::mutex> lock(local_mu_);
  return idle_count_;
}

void SharedArena::adopt(const Block& b) { pin(b); }
void SharedArena::disown(const Block& b) { unpin(b); }

std::byte* SharedArena::data(const Block& b) {
  if (!b.dedicated()) {
    pooled_header(b);  // checks the descriptor's bounds
    return pooled_base(b.segment) + b.offset;
  }
  std::lock_guard<std::mutex> lock(local_mu_);
  auto it = dedicated_.find(b.generation);
  if (it == dedicated_.end() || it->second.pins == 0 || it->second.slot != b.segment)
    throw std::logic_error("this process holds no reference to the shared-memory block (adopt() it first)");
  const std::size_t size = it->second.segment->size();
  if (b.offset > size || b.size > size - b.offset)
    throw std::invalid_argument("block descriptor lies outside its segment");
  return it->second.segment->bytes() + b.offset;
}

std::shared_ptr<std::byte> SharedArena::hold_mapping(const Block& b) {
  if (!b.dedicated()) {  // pooled segments stay mapped as long as the handle
    std::byte* p = data(b);
    return std::shared_ptr<std::byte>(shared_from_this(), p);
  }
  std::lock_guard<std::mutex> lock(local_mu_);
  auto it = dedicated_.find(b.generation);
  if (it == dedicated_.end() || it->second.pins == 0 || it->second.slot != b.segment)
    throw std::logic_error("this process holds no reference to the shared-memory block (adopt() it first)");
  const std::shared_ptr<SharedSegment>& seg = it->second.segment;
  if (b.offset > seg->size() || b.size > seg->size() - b.offset)
    throw std::invalid_argument("block descriptor lies outside its segment");
  return std::shared_ptr<std::byte>(seg, seg->bytes() + b.offset);
}

bool SharedArena::contains(const void* address, std::size_t length) const {
  const auto* p = static_cast<const std::byte*>(address);
  for (uint32_t i = 0; i < kMaxSegments; ++i) {
    const std::byte* base = pooled_base_[i].load(std::memory_order_acquire);
    if (base && p >= base && p + length <= base + pooled_size_[i].load(std::memory_order_relaxed)) return true;
  }
  std::lock_guard<std::mutex> lock(local_mu_);
  for (const auto& [gen, local] : dedicated_) {
    if (local.pins == 0) continue;
    const std::byte* base = local.segment->bytes();
    if (p >= base && p + length <= base + local.segment->size()) return true;
  }
  // The window starting at or before p, if any (windows never overlap).
  auto it = private_windows_.upper_bound(p);
  if (it != private_windows_.begin()) {
    --it;
    if (p + length <= it->first + it->second) return true;
  }
  return false;
}

// --- private (copy-on-write) mappings ------------------------------------------

int SharedArena::segment_fd(const Block& b, std::size_t need_bytes, UniqueFd& owned) {
  auto open_checked = [&](uint32_t slot) -> UniqueFd {
    UniqueFd fd = open_segment(slot, O_RDONLY, need_bytes);
    const int err = errno;
    // Out of descriptors is an error; anything else (unlinked, its owner gone
    // or done with it, not ours to open) means the caller copies instead.
    if (!fd && (err == EMFILE || err == ENFILE))
      throw_errno("open shared-memory segment " + slot_name_or_empty(slot) + " read-only", err);
    return fd;
  };
  if (b.dedicated()) {
    // The caller's reference keeps the block, so its slot's segment, in place.
    owned = open_checked(b.segment);
    return owned.get();
  }
  std::lock_guard<std::mutex> lock(local_mu_);
  UniqueFd& fd = pooled_fd_[b.segment];
  // A pooled segment lives as long as the arena: its whole size is checked once.
  if (!fd) fd = open_checked(b.segment);
  return fd.get();
}

PrivateMapping SharedArena::map_private(const Block& b, std::size_t offset, std::size_t length) {
  if (b.segment >= kMaxSegments) throw std::invalid_argument("block descriptor names no segment of this arena");
  std::byte* shared = data(b);  // checks the descriptor and that this process holds a reference
  if (offset > b.size) throw std::invalid_argument("the private mapping's window does not lie inside the block");
  if (length == ~std::size_t{0}) length = b.size - offset;
  if (length > b.size - offset)
    throw std::invalid_argument("the private mapping's window does not lie inside the block");
  PrivateMapping m;
  if (length == 0) return m;
  const std::size_t page = page_size();
  const uint64_t at = b.offset + offset;  // the window's first byte in the segment
  const uint64_t start = at / page * page;
  const std::size_t mapped = round_up(at + length - start, page);
  // This process's mapping of the segment (what it checked when it mapped it).
  std::size_t segment_bytes;
  if (b.dedicated()) {
    std::lock_guard<std::mutex> lock(local_mu_);
    segment_bytes = dedicated_.at(b.generation).segment->size();  // data() found it
  } else {
    segment_bytes = pooled_size(b.segment);
  }
  if (start + mapped > segment_bytes) throw std::invalid_argument("block descriptor lies outside its segment");
  UniqueFd owned;  // a dedicated segment's descriptor, closed once mapped
  const int fd = segment_fd(b, segment_bytes, owned);
  void* base = MAP_FAILED;
  if (fd >= 0) {
    // MAP_PRIVATE: writes never reach the file, so a read-only descriptor will do.
    base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, static_cast<off_t>(start));
    const int err = errno;
    // ENOMEM: most likely out of mappings (vm.max_map_count; each window is one):
    // copy instead, into anonymous memory the kernel merges with its neighbours.
    if (base == MAP_FAILED && err != ENOMEM)
      throw_errno("mmap copy-on-write " + std::to_string(mapped) + " bytes of arena '" + name() + "'", err);
  }
  if (base == MAP_FAILED) {
    base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const int err = errno;
    if (base == MAP_FAILED) throw_errno("mmap " + std::to_string(mapped) + " bytes for a private copy", err);
    std::memcpy(static_cast<std::byte*>(base) + (at - start), shared + offset, length);
    m.copied_ = true;
  }
  m.base_ = base;
  m.mapped_ = mapped;
  m.data_ = static_cast<std::byte*>(base) + (at - start);
  m.size_ = length;
  try {
    m.arena_ = shared_from_this();
    std::lock_guard<std::mutex> lock(local_mu_);
    private_windows_.emplace(m.data_, m.size_);
  } catch (...) {
    m.arena_.reset();  // not registered: reset() only unmaps
    throw;             // m's destructor unmaps
  }
  return m;
}

void SharedArena::forget_private(const std::byte* window) noexcept {
  std::lock_guard<std::mutex> lock(local_mu_);
  private_windows_.erase(window);
}

PrivateMapping::PrivateMapping(PrivateMapping&& o) noexcept
    : arena_(std::move(o.arena_)),
      base_(std::exchange(o.base_, nullptr)),
      mapped_(std::exchange(o.mapped_, 0)),
      data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      copied_(std::exchange(o.copied_, false)) {}

PrivateMapping& PrivateMapping::operator=(PrivateMapping&& o) noexcept {
  if (this != &o) {
    reset();
    arena_ = std::move(o.arena_);
    base_ = std::exchange(o.base_, nullptr);
    mapped_ = std::exchange(o.mapped_, 0);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    copied_ = std::exchange(o.copied_, false);
  }
  return *this;
}

void PrivateMapping::reset() noexcept {
  if (base_ != nullptr) {
    if (arena_) arena_->forget_private(data_);
    munmap(base_, mapped_);
  }
  arena_.reset();
  base_ = nullptr;
  data_ = nullptr;
  mapped_ = size_ = 0;
  copied_ = false;
}

// --- references --------------------------------------------------------------

void SharedArena::retain(const Block& b) {
  std::atomic<uint32_t>& refs = refs_of(b);
  pin(b);
  const uint32_t before = refs.fetch_add(1, std::memory_order_relaxed);
  if (before == 0 || before >= kMaxRefs) {
    refs.fetch_sub(1, std::memory_order_relaxed);
    unpin(b);
    if (before != 0) corrupt("a block's reference count is " + std::to_string(before) + " (one more would overflow)");
    throw std::invalid_argument("retain() of a shared-memory block that holds no reference");
  }
}

bool SharedArena::try_retain(const Block& b) {
  if (b.segment >= kMaxSegments || b.generation == 0) return false;
  {
    Locked lock(*this);
    if (b.segment >= slot_count()) return false;
    SlotRecord& s = ctl().slots[b.segment];
    const uint32_t kind = s.kind.load(std::memory_order_acquire);
    std::atomic<uint32_t>* refs = nullptr;
    if (b.dedicated()) {
      if (kind != kDedicated || s.generation.load(std::memory_order_relaxed) != b.generation) return false;
      if (b.offset != 0 || b.size > s.bytes) return false;  // not the huge block's descriptor
      refs = &s.refs;
    } else {
      if (kind != kPooled) return false;
      try {
        refs = &live_header(b)->refs;
      } catch (const std::invalid_argument&) {  // names no live block (garbage in the header throws on)
        return false;
      }
    }
    // Under the mutex, and the last reference is only ever dropped under it.
    const uint32_t r = refs->load(std::memory_order_relaxed);
    if (r == 0) return false;
    if (r >= kMaxRefs) corrupt("a block's reference count is " + std::to_string(r) + " (one more would overflow)");
    refs->fetch_add(1, std::memory_order_relaxed);
  }
  try {
    pin(b);
  } catch (...) {
    release(b);
    throw;
  }
  return true;
}

void SharedArena::drop_reference(const Block& b) {
  std::atomic<uint32_t>& refs = refs_of(b);
  uint32_t r = refs.load(std::memory_order_relaxed);
  // Not the last reference: drop it without the mutex.
  while (r > 1)
    if (refs.compare_exchange_weak(r, r - 1, std::memory_order_release, std::memory_order_relaxed)) return;
  Locked lock(*this);
  r = refs.load(std::memory_order_relaxed);
  do {
    if (r == 0) throw std::invalid_argument("release() of a shared-memory block that holds no reference");
  } while (!refs.compare_exchange_weak(r, r - 1, std::memory_order_acq_rel, std::memory_order_relaxed));
  if (r == 1) {
    if (b.dedicated()) {
      const SlotRecord& s = ctl().slots[b.segment];
      if (s.kind.load(std::memory_order_acquire) != kDedicated ||
          s.generation.load(std::memory_order_acquire) != b.generation)
        corrupt("segment slot " + std::to_string(b.segment) + " changed under a reference to its block");
      free_dedicated_locked(b.segment);
    } else {
      free_pooled_locked(b.segment, b.offset - kHeaderBytes);
    }
  }
}

void SharedArena::release(const Block& b) {
  drop_reference(b);
  unpin(b);
}

void SharedArena::release_disowned(const Block& b) {
  drop_reference(b);
  if (!b.dedicated()) return;
  // Pins here belong to others; but an idle cached mapping of a block this freed goes now.
  std::vector<LocalDedicated> dropped;  // unmapped after the lock is let go
  std::lock_guard<std::mutex> lock(local_mu_);
  collect_idle_locked(dropped);
}

uint32_t SharedArena::refcount(const Block& b) { return refs_of(b).load(std::memory_order_acquire); }

// --- allocation --------------------------------------------------------------

Block SharedArena::alloc(std::size_t size, bool zero) {
  if (closed()) {
    // The owner writes 1; anything else, or a control block that no longer
    // checks out, is garbage that only looks like a close.
    check_control();
    if (const uint32_t word = ctl().closed.load(std::memory_order_acquire); word > 1)
      corrupt("its closed word is " + std::to_string(word));
    throw ClosedError("shared-memory arena '" + name() + "' is closed");
  }
  if (size <= segment_bytes_ / 4) {
    Block b = alloc_pooled(size, zero);
    if (b.generation != 0) return b;
    // The pooled segments cannot grow within the limit: a segment of its own.
  }
  return alloc_dedicated(size);
}

Block SharedArena::alloc_dedicated(std::size_t size) {
  const std::size_t bytes = round_up(std::max<std::size_t>(size, 1), page_size());
  if (bytes < size) throw_limit(size, "the size is too large");
  uint32_t slot;
  {
    Locked lock(*this);
    Control& c = ctl();
    check_counters_locked();
    const uint64_t used = c.used_bytes.load(std::memory_order_relaxed);
    if (bytes > limit_ || used + bytes > limit_) throw_limit(size, "the limit would be passed");
    slot = claim_slot_locked(bytes, kForBlock);
    // Reserved now; the segment is made without the mutex (backing a huge one takes a while).
    c.used_bytes.fetch_add(bytes, std::memory_order_relaxed);
    c.mapped_bytes.fetch_add(bytes, std::memory_order_relaxed);
  }
  SharedSegment seg;
  try {
    seg = make_segment(slot, bytes);
    seg.prefault_for_write();  // a huge block is made to be filled (store, share)
  } catch (const std::system_error& e) {
    {
      Locked lock(*this);
      ctl().used_bytes.fetch_sub(bytes, std::memory_order_relaxed);
      ctl().mapped_bytes.fetch_sub(bytes, std::memory_order_relaxed);
      forget_slot_locked(slot);
    }
    // ENOSPC: /dev/shm is full, or (memfds) the kernel's memory accounting refuses the pages.
    if (e.code().value() == ENOSPC && backing() == SegmentBacking::dev_shm) throw_limit(size, "/dev/shm is full");
    if (e.code().value() == ENOSPC || e.code().value() == ENOMEM)
      throw_limit(size, "the system has no memory left for it");
    throw;
  }
  uint64_t generation;
  {
    Locked lock(*this);
    Control& c = ctl();
    SlotRecord& s = c.slots[slot];
    if (c.closed.load(std::memory_order_acquire) != 0) {
      // The owner unlinked every name while we made ours: it is ours to remove.
      c.used_bytes.fetch_sub(bytes, std::memory_order_relaxed);
      c.mapped_bytes.fetch_sub(bytes, std::memory_order_relaxed);
      forget_slot_locked(slot);
      throw ClosedError("shared-memory arena '" + name() + "' is closed");
    }
    if (s.kind.load(std::memory_order_relaxed) != kCreating) {
      // Garbage (another process may have taken the slot since): leave it be;
      // the segment goes with the arena.
      c.used_bytes.fetch_sub(bytes, std::memory_order_relaxed);
      c.mapped_bytes.fetch_sub(bytes, std::memory_order_relaxed);
      corrupt("segment slot " + std::to_string(slot) + " changed while its huge block was being made");
    }
    generation = next_generation_locked();
    s.block_size = size;
    s.refs.store(1, std::memory_order_relaxed);
    s.generation.store(generation, std::memory_order_relaxed);
    s.kind.store(kDedicated, std::memory_order_release);  // commit
  }
  {
    std::lock_guard<std::mutex> lock(local_mu_);
    dedicated_.emplace(generation,
                       LocalDedicated{std::make_shared<SharedSegment>(std::move(seg)), slot, 1, ++use_clock_});
  }
  // Fresh from the system: already zero.
  return Block{slot, Block::kDedicated, 0, size, generation};
}

void SharedArena::free_dedicated_locked(uint32_t slot) {
  Control& c = ctl();
  SlotRecord& s = c.slots[slot];
  s.kind.store(kDying, std::memory_order_release);  // commit: the block is gone
  s.generation.store(0, std::memory_order_release);
  c.used_bytes.fetch_sub(s.bytes, std::memory_order_relaxed);
  c.mapped_bytes.fetch_sub(s.bytes, std::memory_order_relaxed);
  forget_slot_locked(slot);
}

}  // namespace shoal
