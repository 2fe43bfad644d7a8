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
int bin_of(uint64_t span) { return 63 - __builtin_clzll(span | 1); }  // | 1: garbage 0 is bin 0, not UB
uint64_t page_size() { return static_cast<uint64_t>(sysconf(_SC_PAGESIZE)); }

// How many entries of the first candidate list a search looks at before it
// moves to the larger classes (whose every block fits).
constexpr int kFirstListBudget = 32;

}  // namespace

BlockHeader* SharedArena::header_at(uint64_t ref) const {
  const uint32_t slot = ref_slot(ref);
  const uint64_t off = ref_offset(ref);
  if (slot >= kMaxSegments)
    corrupt("a free-list link names segment " + std::to_string(slot) + " of " + std::to_string(kMaxSegments));
  std::byte* base;
  try {
    base = pooled_base(slot);
  } catch (const std::invalid_argument&) {
    corrupt("a free-list link names segment " + std::to_string(slot) + ", which is no pooled segment");
  }
  if (!header_fits(off, pooled_size_[slot].load(std::memory_order_relaxed)))
    corrupt("a free-list link points at offset " + std::to_string(off) + " of segment " + std::to_string(slot) +
            ", outside its " + std::to_string(pooled_size_[slot].load(std::memory_order_relaxed)) + " bytes");
  return reinterpret_cast<BlockHeader*>(base + off);
}

void SharedArena::push_free_locked(uint64_t ref, BlockHeader* h) {
  Control& c = ctl();
  const int bin = bin_of(h->span);  // the caller checked the span (never 0)
  const uint64_t head = c.bins[bin];
  BlockHeader* first = nullptr;
  if (head != kNil) {
    first = header_at(head);
    if (first->state != kFreeWord || first->prev_free != kNil)
      corrupt("the head of free list " + std::to_string(bin) + " is no free block at the head of a list");
  }
  h->bin = static_cast<uint32_t>(bin);
  h->prev_free = kNil;
  h->next_free = head;
  if (first) first->prev_free = ref;
  c.bins[bin] = ref;
}

bool SharedArena::unlink_free_locked(uint64_t ref, BlockHeader* h) {
  Control& c = ctl();
  const uint32_t bin = h->bin;
  const uint64_t prev = h->prev_free, next = h->next_free;
  if (bin >= static_cast<uint32_t>(kBins)) return false;
  BlockHeader* p = nullptr;
  BlockHeader* n = nullptr;
  // Both neighbours must point back at `ref` before anything is written:
  // links that disagree are garbage, and following them would spread it.
  try {
    if (prev != kNil) {
      p = header_at(prev);
      if (p->next_free != ref) return false;
    } else if (c.bins[bin] != ref) {
      return false;
    }
    if (next != kNil) {
      n = header_at(next);
      if (n->prev_free != ref) return false;
    }
  } catch (const std::exception&) {  // a link outside the segments, or to one that cannot be mapped
    return false;
  }
  if (p)
    p->next_free = next;
  else
    c.bins[bin] = next;
  if (n) n->prev_free = prev;
  h->next_free = h->prev_free = kNil;
  return true;
}

uint64_t SharedArena::search_free_locked(uint64_t span) {
  Control& c = ctl();
  for (int b = bin_of(span); b < kBins; ++b) {
    uint64_t ref = c.bins[b];
    for (int budget = kFirstListBudget; ref != kNil && budget > 0; --budget) {
      BlockHeader* h = header_at(ref);
      const uint64_t s = h->span;
      if (h->state != kFreeWord || h->bin != static_cast<uint32_t>(b) ||
          !span_fits(ref_offset(ref), s, pooled_size_[ref_slot(ref)].load(std::memory_order_relaxed)) ||
          bin_of(s) != b)
        corrupt("free list " + std::to_string(b) + " holds a block that is not free or not of its size class");
      if (s >= span) {
        if (!unlink_free_locked(ref, h)) corrupt("the links of free list " + std::to_string(b) + " disagree");
        return ref;
      }
      ref = h->next_free;
    }
  }
  return kNil;
}

uint64_t SharedArena::take_free_locked(uint64_t span) {
  try {
    return search_free_locked(span);
  } catch (const CorruptFrameError&) {
    // The free lists are derived state: rebuild them from the headers (which
    // are checked as they are walked), and search again. The search changes
    // nothing until it has checked what it changes.
  }
  recover_locked();
  return search_free_locked(span);  // garbage again: the caller gets the error
}

void SharedArena::check_counters_locked() {
  // used_bytes and pooled_bytes never pass the limit (allocations that would
  // are refused): past it, they are garbage. They are derived: rebuild.
  const Control& c = ctl();
  if (c.used_bytes.load(std::memory_order_relaxed) > limit_ ||
      c.pooled_bytes.load(std::memory_order_relaxed) > limit_)
    recover_locked();
}

uint64_t SharedArena::grow_locked(uint64_t span) {
  Control& c = ctl();
  const uint64_t page = page_size();
  const uint64_t need = round_up(span, page);
  uint64_t want = segment_bytes_;
  if (c.pooled_segments < 16) want = std::min<uint64_t>(want, uint64_t{kFirstSegmentBytes} << c.pooled_segments);
  want = std::max(want, need);
  // Pooled segments together stay within the limit; past it, callers get a
  // segment of their own (counted exactly) instead.
  const uint64_t pooled = c.pooled_bytes.load(std::memory_order_relaxed);
  if (pooled > limit_ || need > limit_ - pooled) return kNil;
  if (want > limit_ - pooled) want = (limit_ - pooled) / page * page;
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
    check_counters_locked();
    if (c.used_bytes.load(std::memory_order_relaxed) + span > limit_) throw_limit(size, "the limit would be passed");
    ref = take_free_locked(span);
    if (ref == kNil) ref = grow_locked(span);
    if (ref == kNil) return Block{};  // no pooled room within the limit
    h = header_at(ref);
    const uint64_t have = h->span;  // checked by the search; read once more, and checked again
    const uint64_t end = pooled_size_[ref_slot(ref)].load(std::memory_order_relaxed);
    if (have < span || !span_fits(ref_offset(ref), have, end))
      corrupt("the header of a free block changed under the arena's lock");
    const uint64_t rest = have - span;
    BlockHeader* r = nullptr;
    bool consistent = true;
    if (rest >= kMinSpan) {
      // The remainder's header is written first, inside the block's own span,
      // where nothing reads it until the commit below shortens the block.
      r = reinterpret_cast<BlockHeader*>(reinterpret_cast<std::byte*>(h) + span);
      r->state = kFreeWord;
      r->span = rest;
      r->prev_span = span;
      r->generation.store(0, std::memory_order_relaxed);
      r->refs.store(0, std::memory_order_relaxed);
      r->size = 0;
      const uint64_t next = ref_offset(ref) + have;
      if (next < end) {
        try {
          header_at(block_ref(ref_slot(ref), next))->prev_span = rest;
        } catch (const CorruptFrameError&) {
          consistent = false;  // derived: rebuilt below
        }
      }
      commit(h->span, span);
    }
    generation = next_generation_locked();
    h->size = size;
    h->generation.store(generation, std::memory_order_relaxed);
    h->refs.store(1, std::memory_order_relaxed);
    commit(h->state, kUsedWord);
    c.used_bytes.fetch_add(h->span, std::memory_order_relaxed);
    // The remainder goes on a list once the block is committed used: a
    // rebuild (should its list be garbage) then never hands the block out.
    if (r && consistent) {
      try {
        push_free_locked(ref + span, r);
      } catch (const CorruptFrameError&) {
        consistent = false;
      }
    }
    if (!consistent) recover_locked();
  }
  std::byte* data = reinterpret_cast<std::byte*>(h) + kHeaderBytes;
  if (zero) std::memset(data, 0, size);
  return Block{ref_slot(ref), 0, ref_offset(ref) + kHeaderBytes, size, generation};
}

void SharedArena::free_pooled_locked(uint32_t slot, uint64_t offset) {
  Control& c = ctl();
  std::byte* base = pooled_base(slot);
  const uint64_t end = pooled_size_[slot].load(std::memory_order_relaxed);
  auto at = [base](uint64_t off) { return reinterpret_cast<BlockHeader*>(base + off); };
  BlockHeader* h = at(offset);  // the caller's descriptor was checked against the segment
  const uint64_t span = h->span;
  if (h->state != kUsedWord || !span_fits(offset, span, end))
    corrupt("the header of the block at offset " + std::to_string(offset) + " of segment " + std::to_string(slot) +
            " was overwritten");
  c.used_bytes.fetch_sub(span, std::memory_order_relaxed);
  h->generation.store(0, std::memory_order_relaxed);
  commit(h->state, kFreeWord);
  // From here on the block is free (the authoritative word says so). Its
  // neighbours are merged only if their headers and links check out; if not,
  // the lists are rebuilt from the chain, which puts this block on one.
  bool consistent = true;
  uint64_t next = offset + span;
  if (next < end && at(next)->state == kFreeWord) {  // `next` is 64-aligned and inside: a header fits
    BlockHeader* n = at(next);
    if (span_fits(next, n->span, end) && unlink_free_locked(block_ref(slot, next), n)) {
      commit(h->span, h->span + n->span);
      next = offset + h->span;
    } else {
      consistent = false;
    }
  }
  const uint64_t prev_span = h->prev_span;
  if (consistent && prev_span != 0) {
    if (prev_span % kAlignment != 0 || prev_span < kMinSpan || prev_span > offset ||
        at(offset - prev_span)->span != prev_span) {
      consistent = false;  // the boundary tag is derived: garbage there is rebuilt
    } else if (BlockHeader* p = at(offset - prev_span); p->state == kFreeWord) {
      if (unlink_free_locked(block_ref(slot, offset - prev_span), p)) {
        commit(p->span, p->span + h->span);
        offset -= prev_span;
        h = p;
      } else {
        consistent = false;
      }
    }
  }
  if (consistent) {
    if (next < end) at(next)->prev_span = h->span;
    try {
      push_free_locked(block_ref(slot, offset), h);
    } catch (const CorruptFrameError&) {
      consistent = false;
    }
  }
  if (!consistent) recover_locked();
}

// --- recovery ----------------------------------------------------------------

void SharedArena::recover_locked() {
  Control& c = ctl();
  c.recovering.store(1, std::memory_order_release);
  for (auto& b : c.bins) b = kNil;
  uint64_t used = 0, mapped = 0, pooled_bytes = 0;
  uint32_t pooled = 0;
  const uint32_t n = slot_count();
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
  const uint64_t end = pooled_size_[slot].load(std::memory_order_relaxed);  // 64-aligned: checked when mapped
  auto at = [base](uint64_t off) { return reinterpret_cast<BlockHeader*>(base + off); };
  uint64_t off = 0, prev_span = 0, used = 0;
  uint64_t run = kNil;  // the free block that following free blocks merge into
  uint64_t run_span = 0;
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
        run_span = span;
      } else {
        run_span += span;
        commit(at(run)->span, run_span);
      }
      prev_span = run_span;
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
  if (c.slot_count.load(std::memory_order_acquire) > kMaxSegments) problem("slot count past the table");
  const uint32_t n = slot_count();
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
      std::byte* base;
      try {
        base = pooled_base(i);
      } catch (const std::exception& e) {
        problem(where + ": cannot be mapped: " + e.what());
        continue;
      }
      const uint64_t end = pooled_size_[i].load(std::memory_order_relaxed);
      uint64_t off = 0, prev = 0;
      bool prev_free = false;
      while (off < end) {
        auto* h = reinterpret_cast<BlockHeader*>(base + off);
        const std::string at = where + " offset " + std::to_string(off);
        const uint64_t span = h->span;  // read once: what is checked is what is used
        if (!span_fits(off, span, end)) {
          problem(at + ": bad span " + std::to_string(span));
          break;
        }
        if (h->prev_span != prev) problem(at + ": prev_span " + std::to_string(h->prev_span) + " != " + std::to_string(prev));
        const bool is_free = h->state == kFreeWord;
        if (!is_free && h->state != kUsedWord) problem(at + ": bad state word");
        if (is_free && prev_free) problem(at + ": two free blocks side by side");
        if (is_free) {
          ++free_blocks;
        } else {
          used += span;
          if (h->refs.load() == 0) problem(at + ": used block with no reference");
          if (h->generation.load() == 0) problem(at + ": used block without generation");
        }
        prev_free = is_free;
        prev = span;
        off += span;
      }
      if (off != end && problems.empty()) problem(where + ": chain does not end at the segment's end");
    }
  }
  uint64_t listed = 0;
  for (int b = 0; b < kBins; ++b) {
    uint64_t prev = kNil;
    for (uint64_t ref = c.bins[b]; ref != kNil;) {
      BlockHeader* h;
      try {
        h = header_at(ref);
      } catch (const std::exception& e) {
        problem("free list " + std::to_string(b) + ": " + e.what());
        break;
      }
      if (h->state != kFreeWord) problem("free list " + std::to_string(b) + " holds a used block");
      if (h->prev_free != prev) problem("free list " + std::to_string(b) + ": broken back link");
      if (static_cast<int>(h->bin) != b || h->span == 0 || bin_of(h->span) != b)
        problem("free list " + std::to_string(b) + ": block of the wrong size class");
      prev = ref;
      if (++listed > free_blocks + 1) {
        problem("free lists hold more blocks than the segments (a cycle?)");
        b = kBins;
        break;
      }
      ref = h->next_free;
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
