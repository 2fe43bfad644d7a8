#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <new>
#include <random>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/ipc/ring.hpp"
#include "shoal/ipc/segment.hpp"

using namespace std::chrono_literals;
using shoal::Deadline;
using shoal::SharedSegment;
using shoal::SpscRing;
using shoal::testing::ChildProcess;

namespace {

struct RingInSegment {
  SharedSegment seg;
  SpscRing ring;
  explicit RingInSegment(std::size_t cap)
      : seg(SharedSegment::create(SpscRing::bytes_needed(cap))), ring(SpscRing::init(seg.data(), cap)) {}
};

// Frame i carries a deterministic pattern derived from i, of a random length.
std::vector<std::byte> make_frame(uint64_t i, std::size_t max_len) {
  std::mt19937_64 rng(i);
  std::size_t len = rng() % (max_len + 1);
  std::vector<std::byte> f(len);
  for (std::size_t k = 0; k < len; ++k) f[k] = static_cast<std::byte>((i * 131 + k * 7) & 0xff);
  return f;
}

// Polls `cond` until it holds (true) or 30 s pass (false).
template <class Cond>
bool eventually(Cond cond) {
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(100us);
  }
  return true;
}

}  // namespace

TEST(SpscRing, SingleProcessOrderAndWrapAround) {
  RingInSegment r(256);
  std::vector<std::byte> out;
  for (uint64_t i = 0; i < 20000; ++i) {
    auto f = make_frame(i, 100);
    ASSERT_TRUE(r.ring.try_push(std::span<const std::byte>(f)));
    ASSERT_TRUE(r.ring.pop_vector(out, Deadline::never()));
    ASSERT_EQ(out, f) << "frame " << i;
  }
  EXPECT_TRUE(r.ring.empty());
}

TEST(SpscRing, TwoProcessesMillionsOfRandomFramesArriveIntactAndInOrder) {
  RingInSegment r(1 << 14);
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  constexpr uint64_t kFrames = 200'000;  // instrumented builds run ~10x slower
#else
  constexpr uint64_t kFrames = 2'000'000;
#endif
  ChildProcess producer([&] {
    auto seg = SharedSegment::attach(r.seg.name());
    auto ring = SpscRing::attach(seg.data(), seg.size());
    for (uint64_t i = 0; i < kFrames; ++i) {
      auto f = make_frame(i, 300);
      if (!ring.push(std::span<const std::byte>(f), Deadline::after(30s))) return 3;
    }
    return 0;
  });
  std::vector<std::byte> out;
  for (uint64_t i = 0; i < kFrames; ++i) {
    ASSERT_TRUE(r.ring.pop_vector(out, Deadline::after(30s))) << "timed out at frame " << i;
    ASSERT_EQ(out, make_frame(i, 300)) << "frame " << i;
  }
  EXPECT_TRUE(producer.succeeded());
}

TEST(SpscRing, MultiPartFrameIsOneFrame) {
  RingInSegment r(128);
  const char a[] = "abc", b[] = "defgh";
  ASSERT_TRUE(r.ring.try_push({std::as_bytes(std::span(a, 3)), std::as_bytes(std::span(b, 5))}));
  std::vector<std::byte> out;
  ASSERT_TRUE(r.ring.pop_vector(out, Deadline::never()));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(out.data()), out.size()), "abcdefgh");
}

TEST(SpscRing, FrameLargerThanCapacityIsRefusedNotHung) {
  RingInSegment r(1024);
  std::vector<std::byte> big(r.ring.max_frame() + 1);
  EXPECT_THROW(r.ring.push(std::span<const std::byte>(big), Deadline::never()), shoal::FrameTooLargeError);
  std::vector<std::byte> fits(r.ring.max_frame());
  EXPECT_TRUE(r.ring.try_push(std::span<const std::byte>(fits)));
}

TEST(SpscRing, FullRingTimesOutThenAcceptsAfterPop) {
  RingInSegment r(128);
  std::vector<std::byte> f(56);  // 64 bytes per frame with its header
  ASSERT_TRUE(r.ring.try_push(std::span<const std::byte>(f)));
  ASSERT_TRUE(r.ring.try_push(std::span<const std::byte>(f)));
  const Deadline deadline = Deadline::after(50ms);
  EXPECT_FALSE(r.ring.push(std::span<const std::byte>(f), deadline));
  EXPECT_TRUE(deadline.expired());  // it waited out its deadline, not less
  std::vector<std::byte> out;
  ASSERT_TRUE(r.ring.pop_vector(out, Deadline::never()));
  EXPECT_TRUE(r.ring.try_push(std::span<const std::byte>(f)));
}

TEST(SpscRing, SleepingConsumerInAnotherProcessIsWokenByPush) {
  RingInSegment r(4096);
  ChildProcess consumer([&] {
    auto seg = SharedSegment::attach(r.seg.name());
    auto ring = SpscRing::attach(seg.data(), seg.size());
    std::vector<std::byte> out;
    return ring.pop_vector(out, Deadline::after(10s)) && out.size() == 5 ? 0 : 1;
  });
  ASSERT_TRUE(eventually([&] { return r.ring.consumer_sleeping(); }));  // asleep on the futex
  const char msg[] = "wake!";
  ASSERT_TRUE(r.ring.try_push(std::as_bytes(std::span(msg, 5))));
  ASSERT_TRUE(consumer.succeeded(5s));  // woken: its own deadline is 10 s away
}

TEST(SpscRing, CloseWakesConsumerAndDrainsFirst) {
  RingInSegment r(256);
  const char msg[] = "last";
  ASSERT_TRUE(r.ring.try_push(std::as_bytes(std::span(msg, 4))));
  r.ring.close();
  std::vector<std::byte> out;
  EXPECT_TRUE(r.ring.pop_vector(out, Deadline::never()));
  EXPECT_THROW(r.ring.pop_vector(out, Deadline::never()), shoal::ClosedError);
  EXPECT_THROW(r.ring.try_push(std::as_bytes(std::span(msg, 4))), shoal::ClosedError);
}

TEST(SpscRing, RandomBytesInTheRingRaiseCorruptFrameNeverCrash) {
  std::mt19937_64 rng(42);
  int corrupt = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    RingInSegment r(256);
    auto* hdr = r.ring.header();
    auto* data = reinterpret_cast<unsigned char*>(hdr) + (SpscRing::bytes_needed(256) - 256);
    for (int k = 0; k < 256; ++k) data[k] = static_cast<unsigned char>(rng());
    hdr->head.store(rng() % 512);  // sometimes inconsistent with tail on purpose
    std::vector<std::byte> out;
    try {
      while (r.ring.try_pop([&](std::size_t n) { out.resize(n); return out.data(); })) {
      }
    } catch (const shoal::CorruptFrameError&) {
      ++corrupt;
    }
  }
  EXPECT_GT(corrupt, 1900);
}

// ---- garbage in the ring's header (issue 12) ---------------------------------
//
// Another process may write anything over a ring: its positions, its capacity,
// its closed word, its magic, its frames. Whatever it writes, a read yields a
// well-formed frame (within the ring's own bounds, which come from attach
// time), reports corruption, or reports the ring empty or closed; it never
// touches memory outside the ring, and a consumer pops at most capacity / 8
// frames before the ring runs dry (each frame moves tail by 8 bytes or more),
// so no loop over a ring spins for ever. The ring lives in a heap block of
// exactly its size here, so ASan sees any access outside it.

namespace {

constexpr std::size_t kGarbageCap = 256;

struct HeapRing {
  std::size_t bytes = SpscRing::bytes_needed(kGarbageCap);
  std::byte* mem = static_cast<std::byte*>(::operator new(bytes, std::align_val_t{64}));
  HeapRing() { std::memset(mem, 0, bytes); }
  ~HeapRing() { ::operator delete(mem, std::align_val_t{64}); }
  HeapRing(const HeapRing&) = delete;
  HeapRing& operator=(const HeapRing&) = delete;
  shoal::RingHeader* header() const { return reinterpret_cast<shoal::RingHeader*>(mem); }
};

enum class Garbage { random, all_ff, zero, plausible };

// A value for a position-like field: random bits, all ones, zero, or one near
// `near` that looks right (8-aligned, within a capacity or two of it).
uint64_t garbage_value(std::mt19937_64& rng, Garbage g, uint64_t near) {
  switch (g) {
    case Garbage::random: return rng();
    case Garbage::all_ff: return ~uint64_t{0};
    case Garbage::zero: return 0;
    case Garbage::plausible: {
      const int64_t delta = static_cast<int64_t>(rng() % (4 * kGarbageCap / 8 + 1)) - int64_t(2 * kGarbageCap / 8);
      return near + static_cast<uint64_t>(delta * 8 + (rng() % 8 == 0 ? int64_t(rng() % 8) : 0));
    }
  }
  return 0;
}

struct Outcomes {
  int frames = 0, corrupt = 0, empty = 0, closed = 0, corrupt_at_attach = 0, pushed = 0, full = 0;
};

// Pops from `ring` until it reports something other than a frame; every frame
// must fit the ring. Returns the number of frames popped.
int drain_garbage(SpscRing& ring, Outcomes& out) {
  std::vector<std::byte> buf;
  int popped = 0;
  // More than a ring can hold: reaching the bound means the consumer looped.
  for (std::size_t i = 0; i <= ring.capacity() / 8 + 1; ++i) {
    try {
      bool got = ring.try_pop([&](std::size_t n) {
        EXPECT_LE(n, ring.max_frame());
        buf.resize(n);
        return buf.data();
      });
      if (!got) {
        ++out.empty;
        return popped;
      }
      ++out.frames;
      ++popped;
    } catch (const shoal::CorruptFrameError&) {
      ++out.corrupt;
      return popped;
    } catch (const shoal::ClosedError&) {
      ++out.closed;
      return popped;
    }
  }
  ADD_FAILURE() << "the consumer popped more frames than the ring can hold";
  return popped;
}

}  // namespace

TEST(SpscRing, GarbageInTheRingHeaderYieldsFramesCorruptionOrEmptyNeverCrashesOrLoops) {
  std::mt19937_64 rng(1212);
  Outcomes out;
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  constexpr int kTrials = 6000;
#else
  constexpr int kTrials = 30000;
#endif
  for (int trial = 0; trial < kTrials; ++trial) {
    HeapRing mem;
    SpscRing producer = SpscRing::init(mem.mem, kGarbageCap);
    SpscRing consumer = SpscRing::attach(mem.mem, mem.bytes, kGarbageCap);
    // Some traffic first, so positions are anywhere (and frames wrap).
    const int before = static_cast<int>(rng() % 40);
    std::vector<std::byte> scratch;
    for (int k = 0; k < before; ++k) {
      auto f = make_frame(rng(), 60);
      if (!producer.try_push(std::span<const std::byte>(f))) consumer.pop_vector(scratch, Deadline::never());
    }
    auto* hdr = mem.header();
    const auto g = static_cast<Garbage>(rng() % 4);
    const unsigned fields = 1 + static_cast<unsigned>(rng() % 31);  // which of the five fields to overwrite
    const uint64_t head = hdr->head.load(), tail = hdr->tail.load();
    if (fields & 1) hdr->head.store(garbage_value(rng, g, head));
    if (fields & 2) hdr->tail.store(garbage_value(rng, g, tail));
    if (fields & 4) hdr->capacity = garbage_value(rng, g, kGarbageCap);
    if (fields & 8) hdr->closed.store(static_cast<uint32_t>(garbage_value(rng, g, 0)));
    if (fields & 16) hdr->magic.store(garbage_value(rng, g, shoal::RingHeader::kMagic));
    if (rng() % 4 == 0) {  // and garbage in the frames too, sometimes
      auto* data = reinterpret_cast<unsigned char*>(mem.mem) + (mem.bytes - kGarbageCap);
      for (int k = 0; k < 16; ++k) data[rng() % kGarbageCap] = static_cast<unsigned char>(rng());
    }

    // The consumer attached before: its bounds are its own, whatever capacity says now.
    drain_garbage(consumer, out);
    // A consumer attaching now either refuses the ring or reads within its bounds.
    try {
      SpscRing late = SpscRing::attach(mem.mem, mem.bytes);
      EXPECT_LE(late.capacity() + (mem.bytes - kGarbageCap), mem.bytes);
      drain_garbage(late, out);
    } catch (const shoal::CorruptFrameError&) {
      ++out.corrupt_at_attach;
    }
    // The producer: pushes within bounds, or reports the ring full, closed or corrupt.
    for (int k = 0; k < 3; ++k) {
      auto f = make_frame(rng(), 100);
      try {
        if (producer.try_push(std::span<const std::byte>(f)))
          ++out.pushed;
        else
          ++out.full;
      } catch (const shoal::CorruptFrameError&) {
        ++out.corrupt;
        break;
      } catch (const shoal::ClosedError&) {
        ++out.closed;
        break;
      }
    }
    // A blocking pop on garbage returns by its deadline at the latest.
    try {
      consumer.pop_vector(scratch, Deadline::after(0ms));
    } catch (const shoal::CorruptFrameError&) {
    } catch (const shoal::ClosedError&) {
    }
  }
  // Every outcome happened, and corruption was reported, not just survived.
  EXPECT_GT(out.frames, 0);
  EXPECT_GT(out.corrupt, kTrials / 4);
  EXPECT_GT(out.empty, 0);
  EXPECT_GT(out.closed, 0);
  EXPECT_GT(out.corrupt_at_attach, 0);
  EXPECT_GT(out.pushed, 0);
}

// Garbage written over the capacity, the magic or the closed word after both
// sides attached moves nothing: the frames already in the ring arrive intact
// (the bounds were read once, at attach), and closed only ends the stream.
TEST(SpscRing, GarbageCapacityOrMagicAfterAttachChangesNoFrame) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 500; ++trial) {
    HeapRing mem;
    SpscRing producer = SpscRing::init(mem.mem, kGarbageCap);
    SpscRing consumer = SpscRing::attach(mem.mem, mem.bytes, kGarbageCap);
    std::vector<std::vector<std::byte>> sent;
    for (;;) {
      auto f = make_frame(rng(), 40);
      if (!producer.try_push(std::span<const std::byte>(f))) break;
      sent.push_back(std::move(f));
    }
    mem.header()->capacity = rng();
    mem.header()->magic.store(rng());
    std::vector<std::byte> out;
    for (const auto& f : sent) {
      ASSERT_TRUE(consumer.pop_vector(out, Deadline::after(0ms)));
      ASSERT_EQ(out, f);
    }
    EXPECT_TRUE(consumer.empty());
    EXPECT_THROW(SpscRing::attach(mem.mem, mem.bytes), shoal::CorruptFrameError);
  }
}

// Positions the consumer cannot trust are reported by the producer too,
// before it writes anything.
TEST(SpscRing, ProducerReportsInconsistentPositions) {
  HeapRing mem;
  SpscRing ring = SpscRing::init(mem.mem, kGarbageCap);
  const char msg[] = "x";
  mem.header()->tail.store(8);  // ahead of head
  EXPECT_THROW(ring.try_push(std::as_bytes(std::span(msg, 1))), shoal::CorruptFrameError);
  mem.header()->tail.store(0);
  mem.header()->head.store(kGarbageCap + 8);  // more than the ring holds
  EXPECT_THROW(ring.try_push(std::as_bytes(std::span(msg, 1))), shoal::CorruptFrameError);
  mem.header()->head.store(3);  // not a frame boundary
  EXPECT_THROW(ring.try_push(std::as_bytes(std::span(msg, 1))), shoal::CorruptFrameError);
  mem.header()->head.store(0);
  EXPECT_TRUE(ring.try_push(std::as_bytes(std::span(msg, 1))));
}

TEST(SpscRing, AttachRefusesACapacityThatDoesNotFitItsMemory) {
  HeapRing mem;
  SpscRing::init(mem.mem, kGarbageCap);
  EXPECT_NO_THROW(SpscRing::attach(mem.mem, mem.bytes, kGarbageCap));
  EXPECT_THROW(SpscRing::attach(mem.mem, mem.bytes, 2 * kGarbageCap), shoal::CorruptFrameError);
  EXPECT_THROW(SpscRing::attach(mem.mem, mem.bytes - 1), shoal::CorruptFrameError);
  for (uint64_t cap : {uint64_t{0}, uint64_t{32}, uint64_t{300}, uint64_t{1} << 40, ~uint64_t{0}}) {
    mem.header()->capacity = cap;
    EXPECT_THROW(SpscRing::attach(mem.mem, mem.bytes), shoal::CorruptFrameError) << cap;
  }
}
