#include "shoal/obs/stats_block.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <new>
#include <stdexcept>

#include "shoal/base/errors.hpp"
#include "shoal/base/fd.hpp"

namespace shoal::obs {
namespace {

constexpr std::size_t align64(std::size_t n) { return (n + 63) & ~std::size_t{63}; }
constexpr std::size_t kHeaderBytes = align64(sizeof(StatsHeader));
constexpr std::size_t kWorkerBytes = align64(sizeof(WorkerStats));
constexpr uint32_t kMaxSlots = 1u << 16;

uint64_t clock_ns(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000u + uint64_t(ts.tv_nsec);
}

// The fences of the seqlocks and of the block's formatting. GCC's
// ThreadSanitizer does not model fences and says so (-Wtsan); no test reads a
// seqlocked entry while another thread of its process writes it (readers are
// other processes), so there is nothing for it to check here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wtsan"
#endif
void release_fence() { __atomic_thread_fence(__ATOMIC_RELEASE); }
void acquire_fence() { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

void copy_text(char* dst, std::size_t cap, std::string_view text) {
  const std::size_t n = std::min(cap - 1, text.size());
  std::memcpy(dst, text.data(), n);
  dst[n] = '\0';
}

// Writes a seqlock-guarded entry: odd while written, so a reader that sees
// the same even value before and after its copy has a whole entry.
template <class Entry, class Fill>
void write_guarded(Entry& e, Fill&& fill) {
  const uint64_t seq = e.seq.load(std::memory_order_relaxed);
  e.seq.store(seq | 1, std::memory_order_relaxed);
  release_fence();
  fill(e);
  e.seq.store((seq | 1) + 1, std::memory_order_release);
}

}  // namespace

uint64_t monotonic_ns() { return clock_ns(CLOCK_MONOTONIC); }
uint64_t realtime_ns() { return clock_ns(CLOCK_REALTIME); }

std::size_t duration_bucket(uint64_t ns) {
  const uint64_t us = (ns + 999) / 1000;
  if (us <= 1) return 0;
  return std::min<std::size_t>(std::bit_width(us - 1), kDurationBuckets - 1);
}

std::size_t stats_block_bytes(uint32_t slots) { return kHeaderBytes + std::size_t{slots} * kWorkerBytes; }

WorkerStats& StatsBlock::worker(uint32_t slot) const {
  if (slot >= slots_) throw std::out_of_range("stats slot " + std::to_string(slot) + " out of range");
  return *reinterpret_cast<WorkerStats*>(static_cast<std::byte*>(base_) + kHeaderBytes + slot * kWorkerBytes);
}

namespace {
void format(void* base, uint32_t slots, std::size_t bytes, std::string_view kind, std::string_view label) {
  // Default-initialised, not value-initialised: the trace rings' events stay the
  // zero pages a fresh segment (or anonymous mapping) is, never touched until traced.
  auto* h = new (base) StatsHeader;
  h->version = StatsHeader::kVersion;
  h->slots = slots;
  h->block_bytes = bytes;
  h->owner_pid = static_cast<uint32_t>(getpid());
  h->workers = slots;
  h->created_unix_ns = realtime_ns();
  h->created_mono_ns = monotonic_ns();
  copy_text(h->kind, sizeof h->kind, kind);
  copy_text(h->label, sizeof h->label, label);
  for (uint32_t s = 0; s < slots; ++s) new (static_cast<std::byte*>(base) + kHeaderBytes + s * kWorkerBytes) WorkerStats;
  release_fence();
  h->magic = StatsHeader::kMagic;  // last: a reader that sees it sees a formatted block
}
}  // namespace

std::shared_ptr<StatsBlock> StatsBlock::create(uint32_t slots, std::string_view kind, std::string_view label) {
  if (slots == 0 || slots > kMaxSlots) throw std::invalid_argument("a pool has 1 to 65536 worker slots");
  const std::size_t bytes = stats_block_bytes(slots);
  std::shared_ptr<StatsBlock> b(new StatsBlock());
  b->owned_ = SharedSegment::create(bytes);
  b->base_ = b->owned_.data();
  b->size_ = b->owned_.size();
  b->slots_ = slots;
  b->name_ = b->owned_.name();
  format(b->base_, slots, bytes, kind, label);
  return b;
}

std::shared_ptr<StatsBlock> StatsBlock::private_block(uint32_t slots) {
  const std::size_t bytes = stats_block_bytes(slots);
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw_errno("mmap a private stats block");
  std::shared_ptr<StatsBlock> b(new StatsBlock());
  b->base_ = p;
  b->size_ = bytes;
  b->slots_ = slots;
  b->mapped_by_hand_ = true;
  format(p, slots, bytes, "private", "");
  return b;
}

std::shared_ptr<StatsBlock> StatsBlock::map_existing(const std::string& name_in, bool writable) {
  const std::string name = name_in.starts_with('/') ? name_in.substr(1) : name_in;
  const std::string what = "shared-memory segment '" + name + "' ";
  UniqueFd fd(shm_open(("/" + name).c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW, 0));
  if (!fd) {
    if (errno == ENOENT) throw NotFoundError(what + "does not exist (its pool has ended)");
    throw_errno("shm_open " + name);
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) throw_errno("fstat " + name);
  if (!S_ISREG(st.st_mode) || st.st_uid != geteuid()) throw CorruptFrameError(what + "is not a shoal pool's stats block of this user");
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size < kHeaderBytes) throw CorruptFrameError(what + "is too small to be a shoal pool's stats block");
  void* p = mmap(nullptr, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) throw_errno("mmap " + name);
  std::shared_ptr<StatsBlock> b(new StatsBlock());
  b->base_ = p;
  b->size_ = size;
  b->mapped_by_hand_ = true;
  b->name_ = name;
  uint64_t magic;
  uint32_t version, slots;
  std::memcpy(&magic, p, sizeof magic);
  std::memcpy(&version, static_cast<std::byte*>(p) + 8, sizeof version);
  if (magic != StatsHeader::kMagic) throw CorruptFrameError(what + "is not a shoal pool's stats block");
  if (version != StatsHeader::kVersion)
    throw StatsVersionError(what + "holds the stats of layout version " + std::to_string(version) +
                                ", but this shoal reads version " + std::to_string(StatsHeader::kVersion) +
                                " only: the pool runs another version of shoal",
                            version);
  std::memcpy(&slots, static_cast<std::byte*>(p) + offsetof(StatsHeader, slots), sizeof slots);
  if (slots == 0 || slots > kMaxSlots || stats_block_bytes(slots) > size)
    throw CorruptFrameError(what + "has a corrupt stats header (" + std::to_string(slots) + " slots in " +
                            std::to_string(size) + " bytes)");
  b->slots_ = slots;
  return b;
}

std::shared_ptr<StatsBlock> StatsBlock::attach(const std::string& name) { return map_existing(name, true); }

std::shared_ptr<const StatsBlock> StatsBlock::open_readonly(const std::string& name) {
  return map_existing(name, false);
}

StatsBlock::~StatsBlock() {
  if (mapped_by_hand_ && base_ != nullptr) munmap(base_, size_);
}

void StatsBlock::unlink() { owned_.unlink(); }

void StatsBlock::worker_starting(uint32_t slot) const {
  WorkerStats& w = worker(slot);
  w.state.store(static_cast<uint32_t>(WorkerState::starting), std::memory_order_relaxed);
  w.started_ns.store(monotonic_ns(), std::memory_order_relaxed);
  w.ready_ns.store(0, std::memory_order_relaxed);
  w.job.store(0, std::memory_order_relaxed);
}

void StatsBlock::worker_spawned(uint32_t slot, pid_t pid) const {
  worker(slot).pid.store(static_cast<uint32_t>(pid), std::memory_order_relaxed);
}

void StatsBlock::worker_ended(uint32_t slot, ExitCause cause, int value, bool restarted) const {
  WorkerStats& w = worker(slot);
  w.state.store(static_cast<uint32_t>(WorkerState::dead), std::memory_order_relaxed);
  w.job.store(0, std::memory_order_relaxed);
  w.last_exit_cause.store(static_cast<uint32_t>(cause), std::memory_order_relaxed);
  w.last_exit_value.store(value, std::memory_order_relaxed);
  if (restarted) {
    bump(w.restarts);
    if (cause < ExitCause::count) bump(w.restart_causes[static_cast<std::size_t>(cause)]);
  }
}

WorkerStatsWriter::WorkerStatsWriter(std::shared_ptr<StatsBlock> block, uint32_t slot) {
  if (block == nullptr || slot >= block->slots()) {
    block = StatsBlock::private_block(1);
    slot = 0;
    on_ = false;
  }
  block_ = std::move(block);
  w_ = &block_->worker(slot);
  w_->pid.store(static_cast<uint32_t>(getpid()), std::memory_order_relaxed);
}

void WorkerStatsWriter::ready(uint64_t initializer_ns) {
  w_->initializer_ns.store(initializer_ns, std::memory_order_relaxed);
  w_->ready_ns.store(monotonic_ns(), std::memory_order_relaxed);
  w_->state.store(static_cast<uint32_t>(WorkerState::idle), std::memory_order_relaxed);
}

void WorkerStatsWriter::job_taken(uint64_t job, uint64_t now_ns, std::size_t payload_bytes, uint64_t arena_bytes) {
  if (!on_) return;
  recv_ns_ = call_ns_ = ret_ns_ = now_ns;
  bump(w_->bytes_in, payload_bytes);
  if (arena_bytes) bump(w_->arena_bytes_in, arena_bytes);
  w_->job_since_ns.store(now_ns, std::memory_order_relaxed);
  w_->job.store(job, std::memory_order_relaxed);
  w_->state.store(static_cast<uint32_t>(WorkerState::running), std::memory_order_relaxed);
}

void WorkerStatsWriter::job_done(uint64_t job, uint32_t status, uint64_t run_ns, uint64_t items, uint64_t failed,
                                 std::size_t payload_bytes, uint64_t arena_bytes) {
  // Once per job: a result that could not be sent is followed by an error result for the same job.
  if (!on_ || job == last_done_job_) return;
  last_done_job_ = job;
  const uint64_t end = monotonic_ns();
  // Marks that were not set for this job (a worker that does not make them) count as none.
  const uint64_t call = std::max(call_ns_, recv_ns_), ret = std::max(ret_ns_, call);
  // Busy: from taking the job to its result, on the clock the marks use (so
  // that loading, the call and sending add up to it); the call alone is the
  // task's duration, or the worker's own run_ns where it made no marks.
  bump(w_->busy_ns, end > recv_ns_ ? end - recv_ns_ : run_ns);
  bump(w_->deserialize_ns, call - recv_ns_);
  if (ret > call) bump(w_->serialize_ns, end > ret ? end - ret : 0);
  const uint64_t duration = ret > call ? ret - call : run_ns;
  bump(w_->bytes_out, payload_bytes);
  if (arena_bytes) bump(w_->arena_bytes_out, arena_bytes);
  bump(w_->jobs_completed);
  failed = std::min(failed, items);
  bump(w_->tasks_completed, items - failed);
  bump(w_->tasks_failed, failed);
  if (items > 0) bump(w_->duration_buckets[duration_bucket(duration / items)], items);
  w_->job.store(0, std::memory_order_relaxed);
  w_->state.store(static_cast<uint32_t>(WorkerState::idle), std::memory_order_relaxed);
  if (block_->tracing())
    trace_push(w_->trace, TraceEvent{job, recv_ns_, call, ret, end, static_cast<uint32_t>(items), status});
}

void WorkerStatsWriter::exiting() {
  w_->job.store(0, std::memory_order_relaxed);
  w_->state.store(static_cast<uint32_t>(WorkerState::exiting), std::memory_order_relaxed);
}

void WorkerStatsWriter::note_slow(uint64_t job, uint64_t ns, uint64_t items, std::string_view args) {
  // Replaces the fastest kept entry (an empty one first).
  std::size_t victim = 0;
  uint64_t victim_ns = UINT64_MAX;
  for (std::size_t i = 0; i < kSlowest; ++i) {
    const uint64_t v = w_->slowest[i].ns.load(std::memory_order_relaxed);
    if (v < victim_ns) victim = i, victim_ns = v;
  }
  if (ns <= victim_ns) return;
  write_guarded(w_->slowest[victim], [&](SlowTask& e) {
    e.ns.store(ns, std::memory_order_relaxed);
    e.job.store(job, std::memory_order_relaxed);
    e.items.store(items, std::memory_order_relaxed);
    copy_text(e.args, sizeof e.args, args);
  });
  uint64_t floor = UINT64_MAX;
  for (std::size_t i = 0; i < kSlowest; ++i) floor = std::min(floor, w_->slowest[i].ns.load(std::memory_order_relaxed));
  w_->slowest_floor_ns.store(floor, std::memory_order_relaxed);
}

bool WorkerStatsWriter::wants_error() const {
  constexpr uint64_t kErrorGapNs = 250'000'000;
  return on_ && (w_->errors_written.load(std::memory_order_relaxed) < kRecentErrors ||
                 monotonic_ns() - last_error_ns_ >= kErrorGapNs);
}

void WorkerStatsWriter::note_error(uint64_t job, std::string_view text) {
  last_error_ns_ = monotonic_ns();
  const uint64_t n = w_->errors_written.load(std::memory_order_relaxed);
  write_guarded(w_->errors[n % kRecentErrors], [&](ErrorRecord& e) {
    e.job.store(job, std::memory_order_relaxed);
    e.at_unix_ns.store(realtime_ns(), std::memory_order_relaxed);
    copy_text(e.text, sizeof e.text, text);
  });
  w_->errors_written.store(n + 1, std::memory_order_release);
}

namespace {

// Copies a seqlock-guarded entry: `read(entry)` until the sequence word was
// even and unchanged around it; false if the writer kept it busy, or never wrote it.
template <class Entry, class Read>
bool read_guarded(const Entry& e, Read&& read) {
  for (int attempt = 0; attempt < 16; ++attempt) {
    const uint64_t before = e.seq.load(std::memory_order_acquire);
    if (before & 1) continue;
    read(e);
    acquire_fence();
    if (e.seq.load(std::memory_order_relaxed) == before) return before != 0;
  }
  return false;
}

// Text another process wrote: up to its first NUL, never past its array.
template <std::size_t N>
std::string bounded_text(const char (&text)[N]) {
  char copy[N];
  std::memcpy(copy, text, N);
  return std::string(copy, strnlen(copy, N));
}

}  // namespace

std::vector<SlowTaskCopy> read_slowest(const WorkerStats& w) {
  std::vector<SlowTaskCopy> out;
  for (const SlowTask& t : w.slowest) {
    SlowTaskCopy c;
    if (read_guarded(t, [&](const SlowTask& e) {
          c.ns = e.ns.load(std::memory_order_relaxed);
          c.job = e.job.load(std::memory_order_relaxed);
          c.items = e.items.load(std::memory_order_relaxed);
          c.args = bounded_text(e.args);
        }))
      out.push_back(std::move(c));
  }
  return out;
}

std::vector<ErrorCopy> read_errors(const WorkerStats& w) {
  std::vector<ErrorCopy> out;
  const uint64_t written = w.errors_written.load(std::memory_order_acquire);
  for (uint64_t i = 0; i < std::min<uint64_t>(written, kRecentErrors); ++i) {
    ErrorCopy c;
    if (read_guarded(w.errors[(written - 1 - i) % kRecentErrors], [&](const ErrorRecord& e) {
          c.job = e.job.load(std::memory_order_relaxed);
          c.at_unix_ns = e.at_unix_ns.load(std::memory_order_relaxed);
          c.text = bounded_text(e.text);
        }))
      out.push_back(std::move(c));
  }
  return out;
}

std::vector<std::string> list_stats_blocks(pid_t pid) {
  std::vector<std::string> names;
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return names;
  const std::string prefix = pid > 0 ? std::string(kSegmentPrefix) + std::to_string(pid) + "-" : kSegmentPrefix;
  const std::string token_prefix = kTokenPrefix;
  const int dfd = dirfd(dir);
  while (dirent* ent = readdir(dir)) {
    const std::string name = ent->d_name;
    if (!name.starts_with(prefix) || name.starts_with(token_prefix)) continue;
    UniqueFd fd(openat(dfd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
    if (!fd) continue;
    struct stat st {};
    if (fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        static_cast<std::size_t>(st.st_size) < kHeaderBytes)
      continue;
    uint64_t magic = 0;
    if (pread(fd.get(), &magic, sizeof magic, 0) == static_cast<ssize_t>(sizeof magic) && magic == StatsHeader::kMagic)
      names.push_back(name);
  }
  closedir(dir);
  return names;
}

}  // namespace shoal::obs
