// SharedArena's pooled segments: blocks carved from shared segments with
// boundary-tag headers, size-class free lists (first fit), splitting on
// allocation, coalescing on free, and the rebuild that recovery runs.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <system_error>

#include "arena_layout.hpp"
#include "arena_lock.hpp"
#include "shm_file.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/mem/arena.hpp"

namespace shoal {

using namespace arena_detail;

namespace {

uint64_t round_up(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }
int bin_of(uint64_t span) { return 63 - __builtin_clzll(span); }
uint64_t page_size() { return static_cast<uint64_t>(sysconf(_SC_PAGESIZE)); }

// How many entries of the first candidate list a search looks at before it
// moves to the larger classes (whose every block fits).
constexpr int kFirstListBudget = 32;

}  // namespace

BlockHeader* SharedArena::header_at(uint64_t ref) const {
  return reinterpret_cast<BlockHeader*>(pooled_base(ref_slot(ref)) + ref_offset(ref));
}

void SharedArena::push_free_locked(uint64_t ref, BlockHeader* h) {
  Control& c = ctl();
  const int bin = bin_of(h->span);
  h->bin = static_cast<uint32_t>(bin);
  h->prev_free = kNil;
  h->next_free = c.bins[bin];
  if (h->next_free != kNil) header_at(h->next_free)->prev_free = ref;
  c.bins[bin] = ref;
}

void SharedArena::unlink_free_locked(BlockHeader* h) {
  if (h->prev_free != kNil)
    header_at(h->prev_free)->next_free = h->next_free;
  else
    ctl().bins[h->bin] = h->next_free;
  if (h->next_free != kNil) header_at(h->next_free)->prev_free = h->prev_free;
  h->next_free = h->prev_free = kNil;
}

uint64_t SharedArena::take_free_locked(uint64_t span) {
  Control& c = ctl();
  for (int b = bin_of(span); b < kBins; ++b) {
    uint64_t ref = c.bins[b];
    for (int budget = kFirstListBudget; ref != kNil && budget > 0; --budget) {
      BlockHeader* h = header_at(ref);
      if (h->span >= span) {
        unlink_free_locked(h);
        return ref;
      }
      ref = h->next_free;
    }
  }
  return kNil;
}

uint64_t SharedArena::grow_locked(uint64_t span) {
  Control& c = ctl();
  const uint64_t page = page_size();
  const uint64_t need = round_up(span, page);
  uint64_t want = c.segment_bytes;
  if (c.pooled_segments < 16) want = std::min<uint64_t>(want, uint64_t{kFirstSegmentBytes} << c.pooled_segments);
  want = std::max(want, need);
  // Pooled segments together stay within the limit; past it, callers get a
  // segment of their own (counted exactly) instead.
  const uint64_t pooled = c.pooled_bytes.load(std::memory_order_relaxed);
  if (pooled + need > c.limit_bytes) return kNil;
  if (pooled + want > c.limit_bytes) want = (c.limit_bytes - pooled) / page * page;
  if (want < need) return kNil;

  const uint32_t slot = claim_slot_locked(want, kForPool);
  SlotRecord& s = c.slots[slot];
  std::unique_ptr<SharedSegment> seg;
  try {
    seg = std::make_unique<SharedSegment>(make_segment(slot, want));
  } catch (const std::system_error& e) {
    forget_slot_locked(slot);
    // No room (/dev/shm or memory): the caller tries a block of its own, then reports.
    if (e.code().value() == ENOSPC || e.code().value() == ENOMEM) return kNil;
    throw;
  }
  if (c.closed.load(std::memory_order_acquire) != 0) {
    // The owner closed the arena while we made it (without the mutex, after
    // waiting for it in vain): it is ours to remove.
    seg.reset();
    forget_slot_locked(slot);
    throw ClosedError("shared-memory arena '" + name() + "' is closed");
  }
  auto* h = reinterpret_cast<BlockHeader*>(seg->bytes());
  h->state = kFreeWord;
  h->span = want;
  h->prev_span = 0;
  h->generation.store(0, std::memory_order_relaxed);
  h->refs.store(0, std::memory_order_relaxed);
  h->next_free = h->prev_free = kNil;
  {
    std::lock_guard<std::mutex> lock(local_mu_);
    std::byte* base = seg->bytes();
    pooled_size_[slot].store(want, std::memory_order_relaxed);
    pooled_[slot] = std::move(seg);
    pooled_base_[slot].store(base, std::memory_order_release);
  }
  s.kind.store(kPooled, std::memory_order_release);  // commit
  c.mapped_bytes.fetch_add(want, std::memory_order_relaxed);
  c.pooled_bytes.fetch_add(want, std::memory_order_relaxed);
  ++c.pooled_segments;
  return block_ref(slot, 0);  // on no list: the caller takes it
}

Block SharedArena::alloc_pooled(std::size_t size, bool zero) {
  const uint64_t span = kHeaderBytes + round_up(std::max<uint64_t>(size, 1), kAlignment);
  uint64_t ref;
  BlockHeader* h;
  uint64_t generation;
  {
    Locked lock(*this);
    Control& c = ctl();
    if (c.used_bytes.load(std::memory_order_relaxed) + span > c.limit_bytes)
      throw_limit(size, "the limit would be passed");
    ref = take_free_locked(span);
    if (ref == kNil) ref = grow_locked(span);
    if (ref == kNil) return Block{};  // no pooled room within the limit
    h = header_at(ref);
    const uint64_t rest = h->span - span;
    if (rest >= kMinSpan) {
      // The remainder's header is written first, inside the block's own span,
      // where nothing reads it until the commit below shortens the block.
      auto* r = reinterpret_cast<BlockHeader*>(reinterpret_cast<std::byte*>(h) + span);
      r->state = kFreeWord;
      r->span = rest;
      r->prev_span = span;
      r->generation.store(0, std::memory_order_relaxed);
      r->refs.store(0, std::memory_order_relaxed);
      r->size = 0;
      const uint64_t next = ref_offset(ref) + h->span;
      if (next < pooled_size(ref_slot(ref))) header_at(block_ref(ref_slot(ref), next))->prev_span = rest;
      commit(h->span, span);
      push_free_locked(ref + span, r);
    }
    generation = c.next_generation++;
    h->size = size;
    h->generation.store(generation, std::memory_order_relaxed);
    h->refs.store(1, std::memory_order_relaxed);
    commit(h->state, kUsedWord);
    c.used_bytes.fetch_add(h->span, std::memory_order_relaxed);
  }
  std::byte* data = reinterpret_cast<std::byte*>(h) + kHeaderBytes;
  if (zero) std::memset(data, 0, size);
  return Block{ref_slot(ref), 0, ref_offset(ref) + kHeaderBytes, size, generation};
}

void SharedArena::free_pooled_locked(uint32_t slot, uint64_t offset) {
  Control& c = ctl();
  std::byte* base = pooled_base(slot);
  const uint64_t end = pooled_size(slot);
  auto at = [base](uint64_t off) { return reinterpret_cast<BlockHeader*>(base + off); };
  BlockHeader* h = at(offset);
  c.used_bytes.fetch_sub(h->span, std::memory_order_relaxed);
  h->generation.store(0, std::memory_order_relaxed);
  commit(h->state, kFreeWord);
  uint64_t next = offset + h->span;
  if (next < end && at(next)->state == kFreeWord) {
    BlockHeader* n = at(next);
    unlink_free_locked(n);
    commit(h->span, h->span + n->span);
    next = offset + h->span;
  }
  if (h->prev_span != 0) {
    BlockHeader* p = at(offset - h->prev_span);
    if (p->state == kFreeWord) {
      unlink_free_locked(p);
      commit(p->span, p->span + h->span);
      offset -= h->prev_span;
      h = p;
    }
  }
  if (next < end) at(next)->prev_span = h->span;
  push_free_locked(block_ref(slot, offset), h);
}

// --- recovery ----------------------------------------------------------------

void SharedArena::recover_locked() {
  Control& c = ctl();
  c.recovering.store(1, std::memory_order_release);
  for (auto& b : c.bins) b = kNil;
  uint64_t used = 0, mapped = 0, pooled_bytes = 0;
  uint32_t pooled = 0;
  const uint32_t n = c.slot_count.load(std::memory_order_acquire);
  for (uint32_t i = 0; i < n; ++i) {
    SlotRecord& s = c.slots[i];
    switch (s.kind.load(std::memory_order_acquire)) {
      case kCreating:
        // A huge block being made outside the mutex by a live process keeps its
        // reservation; anything else was abandoned halfway.
        if (s.purpose == kForBlock && process_alive(s.creator)) {
          used += s.bytes;
          mapped += s.bytes;
        } else {
          forget_slot_locked(i);
        }
        break;
      case kDying:
        forget_slot_locked(i);
        break;
      case kDedicated:
        // The count only reaches zero under the mutex, followed by the free in
        // the same critical section: zero here means the freer died.
        if (s.refs.load(std::memory_order_acquire) == 0) {
          s.generation.store(0, std::memory_order_release);
          forget_slot_locked(i);
        } else {
          used += s.bytes;
          mapped += s.bytes;
        }
        break;
      case kPooled:
        ++pooled;
        mapped += s.bytes;
        pooled_bytes += s.bytes;
        try {
          used += rebuild_segment_locked(i);
        } catch (const std::exception&) {
          used += s.bytes;  // cannot map it (the owner closed the arena): keep it out of use
        }
        break;
      default:
        break;
    }
  }
  c.used_bytes.store(used, std::memory_order_relaxed);
  c.mapped_bytes.store(mapped, std::memory_order_relaxed);
  c.pooled_bytes.store(pooled_bytes, std::memory_order_relaxed);
  c.pooled_segments = pooled;
  c.recoveries.fetch_add(1, std::memory_order_relaxed);
  c.recovering.store(0, std::memory_order_release);
}

uint64_t SharedArena::rebuild_segment_locked(uint32_t slot) {
  std::byte* base = pooled_base(slot);
  const uint64_t end = pooled_size(slot);
  auto at = [base](uint64_t off) { return reinterpret_cast<BlockHeader*>(base + off); };
  uint64_t off = 0, prev_span = 0, used = 0;
  uint64_t run = kNil;  // the free block that following free blocks merge into
  auto close_run = [&] {
    if (run != kNil) push_free_locked(block_ref(slot, run), at(run));
    run = kNil;
  };
  while (off < end) {
    BlockHeader* h = at(off);
    const uint64_t span = h->span;
    if (span < kMinSpan || span % kAlignment != 0 || span > end - off) {
      // Committed stores never leave this; should it happen anyway, keep the
      // rest of the segment out of use rather than guess.
      close_run();
      h->prev_span = prev_span;
      h->span = end - off;
      h->generation.store(0, std::memory_order_relaxed);
      h->refs.store(1, std::memory_order_relaxed);
      h->state = kUsedWord;
      used += end - off;
      break;
    }
    h->prev_span = prev_span;
    if (h->state == kUsedWord && h->refs.load(std::memory_order_relaxed) > 0) {
      close_run();
      used += span;
      prev_span = span;
    } else {
      // Free, or used with no reference left (its freer died): free it.
      h->generation.store(0, std::memory_order_relaxed);
      if (run == kNil) {
        commit(h->state, kFreeWord);
        run = off;
        prev_span = span;
      } else {
        BlockHeader* r = at(run);
        commit(r->span, r->span + span);
        prev_span = r->span;
      }
    }
    off += span;
  }
  close_run();
  return used;
}

// --- checks ------------------------------------------------------------------

std::string SharedArena::check() {
  Locked lock(*this);
  return check_locked();
}

std::string SharedArena::check_locked() {
  Control& c = ctl();
  std::string problems;
  auto problem = [&](const std::string& what) {
    if (problems.size() < 2000) problems += what + "; ";
  };
  uint64_t used = 0, mapped = 0, pooled_bytes = 0, free_blocks = 0;
  const uint32_t n = c.slot_count.load(std::memory_order_acquire);
  for (uint32_t i = 0; i < n; ++i) {
    const SlotRecord& s = c.slots[i];
    const uint32_t kind = s.kind.load(std::memory_order_acquire);
    const std::string where = "segment " + std::to_string(i);
    if (kind == kDedicated) {
      used += s.bytes;
      mapped += s.bytes;
      if (s.refs.load() == 0) problem(where + ": dedicated block with no reference");
    } else if (kind == kCreating) {
      if (s.purpose == kForBlock) used += s.bytes, mapped += s.bytes;
      else problem(where + ": pooled segment left half-created");
    } else if (kind == kDying) {
      problem(where + ": left dying");
    } else if (kind == kPooled) {
      mapped += s.bytes;
      pooled_bytes += s.bytes;
      std::byte* base = pooled_base(i);
      const uint64_t end = pooled_size(i);
      uint64_t off = 0, prev = 0;
      bool prev_free = false;
      while (off < end) {
        auto* h = reinterpret_cast<BlockHeader*>(base + off);
        const std::string at = where + " offset " + std::to_string(off);
        if (h->span < kMinSpan || h->span % kAlignment != 0 || h->span > end - off) {
          problem(at + ": bad span " + std::to_string(h->span));
          break;
        }
        if (h->prev_span != prev) problem(at + ": prev_span " + std::to_string(h->prev_span) + " != " + std::to_string(prev));
        const bool is_free = h->state == kFreeWord;
        if (!is_free && h->state != kUsedWord) problem(at + ": bad state word");
        if (is_free && prev_free) problem(at + ": two free blocks side by side");
        if (is_free) {
          ++free_blocks;
        } else {
          used += h->span;
          if (h->refs.load() == 0) problem(at + ": used block with no reference");
          if (h->generation.load() == 0) problem(at + ": used block without generation");
        }
        prev_free = is_free;
        prev = h->span;
        off += h->span;
      }
      if (off != end && problems.empty()) problem(where + ": chain does not end at the segment's end");
    }
  }
  uint64_t listed = 0;
  for (int b = 0; b < kBins; ++b) {
    uint64_t prev = kNil;
    for (uint64_t ref = c.bins[b]; ref != kNil; ref = header_at(ref)->next_free) {
      BlockHeader* h = header_at(ref);
      if (h->state != kFreeWord) problem("free list " + std::to_string(b) + " holds a used block");
      if (h->prev_free != prev) problem("free list " + std::to_string(b) + ": broken back link");
      if (static_cast<int>(h->bin) != b || bin_of(h->span) != b) problem("free list " + std::to_string(b) + ": block of the wrong size class");
      prev = ref;
      if (++listed > free_blocks + 1) {
        problem("free lists hold more blocks than the segments (a cycle?)");
        b = kBins;
        break;
      }
    }
  }
  if (listed != free_blocks)
    problem(std::to_string(free_blocks) + " free blocks but " + std::to_string(listed) + " on the free lists");
  if (used != c.used_bytes.load())
    problem("used_bytes is " + std::to_string(c.used_bytes.load()) + ", blocks add up to " + std::to_string(used));
  if (mapped != c.mapped_bytes.load())
    problem("mapped_bytes is " + std::to_string(c.mapped_bytes.load()) + ", segments add up to " + std::to_string(mapped));
  if (pooled_bytes != c.pooled_bytes.load()) problem("pooled_bytes does not match the pooled segments");
  return problems;
}

}  // namespace shoal
