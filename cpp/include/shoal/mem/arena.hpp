#pragma once
// A shared-memory arena of reference-counted blocks, usable from every process
// that attaches it by name.
//
// The creating process (the pool's parent) owns the arena: a small control
// segment in /dev/shm holds a robust process-shared mutex, the free lists and
// a table of segment slots. Blocks come from pooled segments (4 MiB for the
// first, then doubling up to `segment_bytes`, 64 MiB by default) that are
// created on demand by whichever process needs room, and mapped lazily by the
// others; a block larger than a quarter of `segment_bytes` gets a segment of
// its own, which is released and unmapped as soon as the block is freed.
//
// Backing. The segments are memfds wherever the system allows (not counted
// against the /dev/shm mount, which is 64 MB in a default Docker container):
// the owner holds every one's descriptor, and other processes of the same
// user open it as /proc/<owner pid>/fd/<n>, so they live exactly as long as
// the owner holds them, and no process can reach them once the owner has
// exited or closed the arena (mappings already made stay valid). A non-owner
// that makes a segment hands its memfd to the owner's service thread before
// using it. Where memfds cannot be shared (no memfd_create, no /proc, a
// process that is not dumpable, or SHOAL_ARENA_BACKING=shm), the segments are
// files in /dev/shm as the control segment is. See src/mem/arena_segments.cpp.
//
// Names. Every segment's name (its /dev/shm name, or its memfd's label)
// starts with `shoal-<owner pid>-`, whoever created it, so the names die with
// the owner: the owner unlinks them all when it closes or destroys its arena,
// and reclaim_stale_segments() removes them if the owner was SIGKILLed.
//
// References. Each block carries a reference count in shared memory. alloc()
// returns a block holding one reference; retain() adds one, release() drops
// one, and the process that drops the last one frees the block, whichever it
// is. A reference is a token that may be handed from process to process with
// the descriptor (adopt()/disown() keep the local mapping bookkeeping right;
// release_disowned() drops one that was never adopted where it is dropped).
// try_retain() takes a reference from a bare descriptor, if the block still
// lives (it checks the generation).
//
// Crash safety. Allocation and freeing run under the robust mutex, and every
// change to the authoritative state (the chain of block headers in each pooled
// segment, each block's used/free word, each slot's kind) is a single aligned
// store made after everything it publishes is in place. The free lists and the
// byte counters are derived data: when a process dies holding the mutex, the
// next locker rebuilds them from the headers and slots (recovery). So a process
// killed at any instant cannot corrupt the arena. What it can leak, until the
// owner destroys the arena: the references it held (their blocks stay
// allocated), a block it had just allocated and not yet handed to anyone, and
// the reservation of a huge block it was creating outside the mutex. Names
// never leak: each is written to the slot table before the segment exists.
//
// Memory. Touched pages of pooled segments stay with the arena (they are
// reused, not returned to the system, until the arena goes); huge blocks give
// their memory back when freed. Segments are fully backed when created
// (fallocate), so a full /dev/shm or memory shows up as ArenaLimitError, never
// SIGBUS; memfds are sealed against shrinking, so nothing can truncate them
// under a mapping either.
//
// Private mappings. data() is the block as every process shares it: a write
// there is seen by all. map_private() maps a window of a block copy-on-write
// instead (MAP_PRIVATE of the segment's pages): reading it costs no copy (the
// same physical pages), and a write lands in a private copy of the page it
// touches, in this process only. Pools hand their tasks' arguments and results
// over that way, so a receiver may write to what it got, as with a pickled
// copy, without anyone paying for a copy it does not write.
#include <pthread.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "shoal/ipc/segment.hpp"
#include "shoal/mem/block.hpp"
#include "shoal/base/fd.hpp"

namespace shoal {

// An allocation the arena's limit (or /dev/shm) cannot hold. The bindings map it
// to MemoryError.
class ArenaLimitError : public std::runtime_error {
 public:
  ArenaLimitError(const std::string& what, std::size_t requested, std::size_t limit, std::size_t used)
      : std::runtime_error(what), requested_(requested), limit_(limit), used_(used) {}
  std::size_t requested() const { return requested_; }
  std::size_t limit() const { return limit_; }
  std::size_t used() const { return used_; }

 private:
  std::size_t requested_, limit_, used_;
};

namespace arena_detail {
struct Control;
struct BlockHeader;
}  // namespace arena_detail

// Where an arena's segments live (the control segment is always in /dev/shm).
enum class SegmentBacking : uint32_t {
  automatic = 0,  // memfd where it can be shared here, else /dev/shm (create() only)
  dev_shm = 1,    // files in /dev/shm, attached by name
  memfd = 2,      // memfds the owner holds, opened through /proc/<owner pid>/fd/<n>
};

class SharedArena;

// A window of a block mapped copy-on-write in this process (see
// SharedArena::map_private). Reads see the block's bytes through the block's
// own pages; the first write to a page gives this mapping a private copy of
// it, so nothing written here ever reaches the block, its shared mappings, or
// any other process. Unmapped on destruction (or reset()). It holds no
// reference on the block: keep one while the mapping is read, or its unwritten
// pages show whatever later reuses the block's memory. It keeps the arena
// handle alive (the handle's contains() counts it).
class PrivateMapping {
 public:
  PrivateMapping() = default;
  PrivateMapping(PrivateMapping&& other) noexcept;
  PrivateMapping& operator=(PrivateMapping&& other) noexcept;
  PrivateMapping(const PrivateMapping&) = delete;
  PrivateMapping& operator=(const PrivateMapping&) = delete;
  ~PrivateMapping() { reset(); }

  // The window's first byte (inside the mapping, which is page-aligned).
  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool valid() const { return base_ != nullptr; }
  // True when the window had to be copied instead of mapped: the segment's
  // name was gone (the owner closed the arena) before this process opened it,
  // or the mapping failed with ENOMEM.
  bool copied() const { return copied_; }
  // Unmaps now. Idempotent.
  void reset() noexcept;

 private:
  friend class SharedArena;
  std::shared_ptr<SharedArena> arena_;
  void* base_ = nullptr;  // the mapping: whole pages
  std::size_t mapped_ = 0;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool copied_ = false;
};

class SharedArena : public std::enable_shared_from_this<SharedArena> {
 public:
  static constexpr std::size_t kDefaultSegmentBytes = std::size_t{64} << 20;
  static constexpr std::size_t kFirstSegmentBytes = std::size_t{4} << 20;
  static constexpr std::size_t kAlignment = 64;  // every block's data is 64-byte aligned
  static constexpr uint32_t kMaxSegments = 1024;

  // Creates an arena owned by this process. `limit_bytes` bounds the bytes in
  // live blocks (used_bytes(), headers included); 0 means default_limit() for
  // its backing. Pooled segments together also stay within it (past that, a
  // block gets a segment of its own), so the arena maps at most the limit
  // plus its huge blocks. `segment_bytes` is the largest pooled segment
  // (clamped to the limit). `backing`: automatic is default_backing(); an
  // explicit memfd throws std::system_error where memfds cannot be shared.
  static std::shared_ptr<SharedArena> create(std::size_t limit_bytes = 0,
                                             std::size_t segment_bytes = kDefaultSegmentBytes,
                                             SegmentBacking backing = SegmentBacking::automatic);
  // Attaches to the arena called `name`. Within one process there is one handle
  // per arena: this returns the live one if there is. Throws NotFoundError for
  // an unknown name, std::invalid_argument if the segment is not an arena.
  static std::shared_ptr<SharedArena> attach(const std::string& name);
  // The default limit of a new arena with that backing: for memfds, half of
  // the memory available now (MemAvailable, and the cgroup's memory.max less
  // its use if lower); for /dev/shm, half of the space free there (statvfs).
  // 1 GiB if neither can be read.
  static std::size_t default_limit(SegmentBacking backing = SegmentBacking::automatic);
  // What automatic means in this process now: dev_shm if the environment
  // variable SHOAL_ARENA_BACKING is "shm" (or "dev_shm"), else memfd if
  // memfd_create works, /proc/self/fd reopens a memfd and the process is
  // dumpable (so that others may open its descriptors), else dev_shm.
  static SegmentBacking default_backing();

  ~SharedArena();
  SharedArena(const SharedArena&) = delete;
  SharedArena& operator=(const SharedArena&) = delete;

  const std::string& name() const;
  bool owns_name() const;
  // Where the arena makes its segments (memfd or dev_shm).
  SegmentBacking backing() const;
  std::size_t limit_bytes() const;
  std::size_t segment_bytes() const;
  // Bytes in live blocks (with their headers and rounding), in all processes.
  std::size_t used_bytes() const;
  // Bytes of shared memory in the arena's segments (not counting the control segment).
  std::size_t mapped_bytes() const;
  // Live segments, pooled and dedicated.
  std::size_t segment_count() const;
  // How often a process found the mutex's holder dead and rebuilt the free lists.
  uint64_t recoveries() const;

  // Allocates `size` bytes (64-byte aligned) holding one reference for the
  // caller. `zero`: fill with zeros (free for memory fresh from the system).
  // Throws ArenaLimitError past the limit or when /dev/shm or memory is full,
  // ClosedError once the owner closed the arena.
  Block alloc(std::size_t size, bool zero = false);
  // Adds a reference; the caller must hold one already (here or elsewhere).
  void retain(const Block& block);
  // Adds a reference if the block is still the one the descriptor names (it may
  // have been freed, and its memory reused); false if not.
  bool try_retain(const Block& block);
  // Drops a reference; the last one frees the block. Throws std::invalid_argument
  // for a descriptor whose block is gone (a release too many). The reference is
  // one this process holds in its bookkeeping (from alloc, retain, try_retain or
  // adopt): release() also undoes that (unpins the block here).
  void release(const Block& block);
  // Drops a reference this process does not hold in its bookkeeping: one that
  // was disowned into a payload, here or in another process, and is dropped
  // here without having been adopted (a payload released, or a payload's
  // reference on a SharedArray that the receiver's own view has replaced).
  // This process's mappings, and its own references on the same block, are
  // left as they are; release() instead would take back one of their pins,
  // and the last one unmaps a huge block under whatever reads it. As adopt()
  // then release(), without mapping the block. Throws as release().
  void release_disowned(const Block& block);
  // Local bookkeeping when a reference changes process: adopt() in the process
  // that takes over a reference made elsewhere (before calling data()), disown()
  // in the process that hands its reference over without releasing it. Neither
  // changes the shared count. alloc/retain/try_retain adopt implicitly, release
  // disowns implicitly. Each disown() (and each release()) must match an
  // adoption in this process: an unmatched one is ignored once the block has no
  // pin left here, but while other pins remain it takes one of theirs.
  void adopt(const Block& block);
  void disown(const Block& block);
  // The block's bytes in this process; valid while this process holds a
  // reference (a dedicated segment is unmapped once it holds none).
  std::byte* data(const Block& block);
  // data(), with an owner that keeps this process's mapping of those bytes for
  // as long as it lives, whatever becomes of the references and pins: the
  // memory it points at is never unmapped under it (a freed block's memory is
  // then kept from the system until it goes). Views hold one. Same
  // preconditions as data().
  std::shared_ptr<std::byte> hold_mapping(const Block& block);
  // A copy-on-write mapping of the block's bytes [offset, offset + length)
  // (length: to the block's end if omitted), private to this process: see
  // PrivateMapping. The caller holds a reference on the block here (as for
  // data()), and keeps one while it uses the mapping. The pages enclosing the
  // window are mapped from the block's segment, opened again read-only (by
  // name, or a memfd through /proc/<owner pid>/fd; a pooled segment's
  // descriptor is kept for later windows); should it be gone already (the
  // owner closed the arena or exited), or the
  // mapping fail for want of memory or mappings (vm.max_map_count: each live
  // window is a mapping), the window is copied into private memory instead. Throws std::invalid_argument for a
  // window outside the block, std::logic_error without a reference here,
  // std::system_error if the mapping fails. An empty window maps nothing
  // (an invalid PrivateMapping).
  PrivateMapping map_private(const Block& block, std::size_t offset = 0, std::size_t length = ~std::size_t{0});
  // The block's reference count (a snapshot, for tests and diagnostics).
  uint32_t refcount(const Block& block);
  // Whether [address, address + length) lies inside one of the arena's segments
  // as mapped in this process (and in use: idle cached mappings do not count),
  // or inside the window of one of this handle's live private mappings.
  bool contains(const void* address, std::size_t length = 1) const;

  // Mapping cache. A process that adopts the same huge block again and again
  // (a worker handed one SharedArray task after task) would otherwise map its
  // segment and fault its pages in anew each time. With the cache on, a
  // dedicated segment stays mapped after this process's last reference goes,
  // for as long as the block lives; the mapping is dropped at the next arena
  // call or trim_idle_mappings() after the block is freed (until then it keeps
  // the freed block's memory from returning to the system). Off by default;
  // pool workers turn it on and trim whenever they wait for work.
  static void cache_idle_mappings(bool enabled);
  // Drops the idle mappings whose blocks are gone, in every arena this process
  // has a handle on. Returns how many idle mappings remain cached.
  static std::size_t trim_idle_mappings();
  // Idle (cached, unreferenced) mappings of this handle.
  std::size_t idle_mappings() const;

  // Checks the allocator's invariants (header chain, free lists, counters).
  // Returns an empty string when they hold, else a description of what does not.
  std::string check();

  // In the owner: unlinks every name of the arena now, closes the memfds it
  // holds, stops its segment service and refuses further allocations
  // everywhere. Mappings stay valid, so live blocks stay usable in processes
  // that mapped them; no process can map a segment anew. Elsewhere: only
  // refuses further allocations through this handle. Idempotent; the
  // destructor does it too.
  void close();
  bool closed() const;

 private:
  friend struct ArenaTestAccess;  // tests simulate a process dying mid-operation
  friend class PrivateMapping;
  class Locked;
  struct LocalDedicated {
    // Shared with the owners hold_mapping() handed out: unmapped when the last goes.
    std::shared_ptr<SharedSegment> segment;
    uint32_t slot = 0;
    uint32_t pins = 0;       // references this process holds; 0 = an idle cached mapping
    uint64_t last_used = 0;  // for evicting the least recently used idle mapping
  };
  static constexpr std::size_t kMaxIdleMappings = 32;

  SharedArena(SharedSegment control, bool owner);
  static void register_handle(const std::shared_ptr<SharedArena>& arena);

  arena_detail::Control& ctl() const { return *ctl_; }

  // Garbage in shared memory. Another process of the user may write anything
  // over the control segment, the slot table, the block headers. Nothing read
  // from there is used unchecked: indices against the table's size, offsets and
  // spans against this process's own mapping of the segment, names against the
  // form the arena gives them, counts against overflow. What cannot be so
  // (the fixed fields of the control block) is kept here from attach time and
  // compared on every locked operation. A violation throws CorruptFrameError
  // (RuntimeError in Python) naming the arena and what was wrong; a descriptor
  // (Block) whose fields name nothing live throws std::invalid_argument. Free
  // lists and counters are derived state: found inconsistent, they are rebuilt
  // from the headers (recovery), and the operation goes on.
  [[noreturn]] void corrupt(const std::string& what) const;
  // Magic, version and geometry against this handle's copy (throws corrupt()).
  void check_control() const;
  // The slots ever used, never more than the table holds.
  uint32_t slot_count() const;
  // The slot's segment name, if it is of the arena's form (else corrupt()).
  std::string slot_name(uint32_t slot) const;
  // Like slot_name(), but "" instead of throwing (for cleanup paths).
  std::string slot_name_or_empty(uint32_t slot) const;
  // A used block's header, checked: the descriptor against the segment and the
  // header (generation; throws std::invalid_argument if it names no live
  // block), the header against the segment (state word, span; corrupt()).
  arena_detail::BlockHeader* live_header(const Block& block) const;
  uint64_t next_generation_locked();
  // Slots and mappings.
  uint32_t claim_slot_locked(std::size_t bytes, uint32_t purpose);
  void forget_slot_locked(uint32_t slot);
  std::byte* pooled_base(uint32_t slot) const;
  std::size_t pooled_size(uint32_t slot) const;
  std::atomic<uint32_t>& refs_of(const Block& block) const;
  arena_detail::BlockHeader* pooled_header(const Block& block) const;
  void pin(const Block& block);
  void unpin(const Block& block);
  // The shared count only: drops one reference, freeing the block on the last.
  void drop_reference(const Block& block);
  bool dedicated_alive(uint32_t slot, uint64_t generation) const;
  // Moves the idle mappings to drop (freed blocks; the oldest past the cap) into `out`.
  void collect_idle_locked(std::vector<LocalDedicated>& out);
  [[noreturn]] void throw_limit(std::size_t requested, const char* why) const;
  // Private mappings: a read-only descriptor of `block`'s segment, at least
  // `need_bytes` long, or -1 when it is gone. A pooled segment's is kept in
  // pooled_fd_; a dedicated segment's is opened into `owned`, for the caller.
  int segment_fd(const Block& block, std::size_t need_bytes, UniqueFd& owned);
  void forget_private(const std::byte* window) noexcept;
  void unlink_all_names();

  // Segments and their backing (arena_segments.cpp).
  // Makes the segment of `slot` (claimed, kCreating, named) of `bytes` bytes
  // and maps it: a memfd (handed to the owner if this process is not it) or a
  // file in /dev/shm. Writes the slot's backing fields; the caller commits.
  // Throws std::system_error (ENOSPC, ENOMEM: no room) with nothing left.
  SharedSegment make_segment(uint32_t slot, std::size_t bytes);
  // Maps the live segment of `slot` read-write. Throws NotFoundError once it
  // cannot be reached (its name unlinked; its owner gone or done with it).
  SharedSegment map_segment(uint32_t slot) const;
  // A new descriptor of the segment of `slot`, at least `need_bytes` long,
  // opened with `flags`; invalid when it is gone (errno says why).
  UniqueFd open_segment(uint32_t slot, int flags, std::size_t need_bytes) const;
  // The slot's segment is gone (its name unlinked, its memfd dropped by the owner).
  void release_segment_locked(uint32_t slot);
  // Waits (bounded) for the owner's service to take `fd`, the memfd of `slot`;
  // its number in the owner, or -1 if it did not.
  int hand_to_owner(uint32_t slot, int fd);
  void start_service();
  void stop_service();
  static void* service_main(void* arena);
  void serve();
  void register_owner();
  void unregister_owner() noexcept;
  void adopt_handoffs();
  void close_dropped_memfds();
  void wake_service() const;
  void close_owned_memfds();
  // pthread_atfork: a forked child closes its copies of every owner's memfds.
  static void fork_prepare();
  static void fork_parent();
  static void fork_child();

  // Huge blocks: a segment each.
  Block alloc_dedicated(std::size_t size);
  void free_dedicated_locked(uint32_t slot);

  // Pooled segments (arena_pool.cpp): first fit over size-class free lists,
  // split on allocation, coalesce on free.
  // An empty Block (generation 0) when the pooled segments cannot grow within the limit.
  Block alloc_pooled(std::size_t size, bool zero);
  // Rebuilds the derived state if a counter is out of its bounds (garbage).
  void check_counters_locked();
  uint64_t take_free_locked(uint64_t span);
  uint64_t search_free_locked(uint64_t span);
  uint64_t grow_locked(uint64_t span);
  void free_pooled_locked(uint32_t slot, uint64_t header_offset);
  // The header a free-list link or chain position names, checked to lie in
  // its segment (else corrupt()).
  arena_detail::BlockHeader* header_at(uint64_t ref) const;
  void push_free_locked(uint64_t ref, arena_detail::BlockHeader* h);
  // Takes `h` (at `ref`) off its free list; false, changing nothing, if its
  // links or its neighbours' do not agree (the lists are then rebuilt).
  bool unlink_free_locked(uint64_t ref, arena_detail::BlockHeader* h);
  void recover_locked();
  uint64_t rebuild_segment_locked(uint32_t slot);
  std::string check_locked();

  SharedSegment control_;
  arena_detail::Control* ctl_ = nullptr;
  pid_t owner_pid_ = 0;  // the creating process; 0 in attached handles
  // The control block's fixed fields as they were at create/attach time: the
  // arena's owner (in every handle), its limit, segment size and backing.
  pid_t arena_owner_ = 0;
  uint64_t limit_ = 0;
  uint64_t segment_bytes_ = 0;
  uint32_t backing_word_ = 0;
  // How long a locker waits for the arena's mutex (tests shorten it).
  static std::atomic<int64_t> lock_timeout_ms_;
  std::atomic<bool> closed_{false};

  // The owner's memfds, by slot (descriptor and inode; -1 where none), under
  // the process-wide owned-descriptor mutex (arena_segments.cpp), which a
  // fork takes so that the child can close its copies.
  struct OwnedFd {
    int fd = -1;
    uint64_t ino = 0;
  };
  std::vector<OwnedFd> owned_;
  // The owner's segment service thread.
  pthread_t service_thread_{};
  bool service_started_ = false;
  std::atomic<uint32_t> service_running_{0};  // 1 once the thread has started: start_service() waits for it
  std::atomic<bool> service_stop_{false};
  std::once_flag service_stopped_;
  // How long a non-owner waits for the owner to take a memfd (tests shorten it).
  static std::atomic<int64_t> handoff_timeout_ms_;

  // This process's mappings. Pooled segments stay mapped for the handle's
  // life; their bases are published lock-free. Dedicated segments are mapped
  // while this process holds a reference (pins), keyed by generation.
  mutable std::mutex local_mu_;
  mutable std::vector<std::unique_ptr<SharedSegment>> pooled_;
  std::unique_ptr<std::atomic<std::byte*>[]> pooled_base_;
  std::unique_ptr<std::atomic<std::size_t>[]> pooled_size_;
  std::unordered_map<uint64_t, LocalDedicated> dedicated_;
  // Read-only descriptors of pooled segments, opened by the first private
  // mapping of each (-1 until then), closed with the handle.
  std::vector<UniqueFd> pooled_fd_;
  // This handle's live private mappings: window start -> length (for contains()).
  std::map<const std::byte*, std::size_t> private_windows_;
  std::size_t idle_count_ = 0;  // entries of dedicated_ with pins == 0
  uint64_t use_clock_ = 0;
};

}  // namespace shoal
