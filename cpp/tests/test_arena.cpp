// SharedArena across real processes: references, growth, huge blocks, the
// limit, and processes that die holding references or the arena's lock.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "mem/arena_layout.hpp"
#include "mem/shm_file.hpp"
#include "arena_test_access.hpp"
#include "child_process.hpp"
#include "returns_within.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/mem/arena.hpp"

using shoal::ArenaLimitError;
using shoal::ArenaTestAccess;
using shoal::Block;
using shoal::SharedArena;
using shoal::testing::ChildProcess;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

// The segments of arenas `pid` owns: names in /dev/shm, and the memfds this
// process holds (an owner holds every memfd of its arenas, whoever made it).
std::set<std::string> shm_names_of(pid_t pid) {
  std::set<std::string> names;
  const std::string prefix = "shoal-" + std::to_string(pid) + "-";
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) {
    std::string name = entry.path().filename().string();
    if (name.starts_with(prefix)) names.insert(name);
  }
  const std::string memfd = "/memfd:" + prefix;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(entry.path(), ec).string();
    if (!ec && target.starts_with(memfd)) names.insert("memfd:" + entry.path().filename().string());
  }
  return names;
}

// eventually(pred) waits for `pred` (the owner closes a memfd another process
// freed on its service thread, a moment later).
using shoal_test::eventually;

// A pipe for handing small values between a parent and a forked child.
struct Channel {
  int fd[2] = {-1, -1};
  Channel() {
    if (pipe(fd) != 0) throw std::runtime_error("pipe");
  }
  ~Channel() {
    close(fd[0]);
    close(fd[1]);
  }
  template <class T>
  void send(const T& value) {
    if (write(fd[1], &value, sizeof value) != static_cast<ssize_t>(sizeof value)) throw std::runtime_error("write");
  }
  // Waits up to `timeout` for a value.
  template <class T>
  bool receive(T& value, std::chrono::milliseconds timeout = 30s) {
    auto until = std::chrono::steady_clock::now() + timeout;
    std::size_t got = 0;
    while (got < sizeof value) {
      if (std::chrono::steady_clock::now() > until) return false;
      fd_set set;
      FD_ZERO(&set);
      FD_SET(fd[0], &set);
      timeval tv{0, 10'000};
      if (select(fd[0] + 1, &set, nullptr, nullptr, &tv) <= 0) continue;
      ssize_t n = read(fd[0], reinterpret_cast<char*>(&value) + got, sizeof value - got);
      if (n <= 0) return false;
      got += static_cast<std::size_t>(n);
    }
    return true;
  }
};

void fill(SharedArena& a, const Block& b, unsigned char value) { std::memset(a.data(b), value, b.size); }

bool all_equal(SharedArena& a, const Block& b, unsigned char value) {
  const std::byte* p = a.data(b);
  return std::all_of(p, p + b.size, [value](std::byte x) { return x == std::byte{value}; });
}

}  // namespace

TEST(Arena, CreatesOwnedNamesAndUnlinksThemAllWhenDestroyed) {
  const auto before = shm_names_of(getpid());
  {
    auto arena = SharedArena::create(512 * kMiB);
    EXPECT_TRUE(arena->name().starts_with("shoal-" + std::to_string(getpid()) + "-"));
    EXPECT_TRUE(arena->owns_name());
    Block small = arena->alloc(1000);
    Block huge = arena->alloc(20 * kMiB);  // more than a quarter of a 64 MiB segment
    EXPECT_FALSE(small.dedicated());
    EXPECT_TRUE(huge.dedicated());
    EXPECT_EQ(arena->segment_count(), 2u);
    EXPECT_EQ(shm_names_of(getpid()).size(), before.size() + 3);  // control, pooled, dedicated
    EXPECT_EQ(reinterpret_cast<uintptr_t>(arena->data(small)) % SharedArena::kAlignment, 0u);
    EXPECT_TRUE(arena->contains(arena->data(small), small.size));
    EXPECT_TRUE(arena->contains(arena->data(huge), huge.size));
    int local = 0;
    EXPECT_FALSE(arena->contains(&local));
  }  // blocks still referenced: the names go all the same
  EXPECT_EQ(shm_names_of(getpid()), before);
}

TEST(Arena, AttachReturnsTheProcessHandleAndRefusesOtherSegments) {
  auto arena = SharedArena::create(64 * kMiB);
  EXPECT_EQ(SharedArena::attach(arena->name()).get(), arena.get());
  auto seg = shoal::SharedSegment::create(1 << 20);
  EXPECT_THROW(SharedArena::attach(seg.name()), std::invalid_argument);
  EXPECT_THROW(SharedArena::attach("shoal-1-doesnotexist"), shoal::NotFoundError);
}

TEST(Arena, ChildAttachesByNameAndWritesWhatTheParentAllocated) {
  auto arena = SharedArena::create(256 * kMiB);
  Block small = arena->alloc(100'000, true);
  Block huge = arena->alloc(17 * kMiB);
  EXPECT_TRUE(all_equal(*arena, small, 0));
  EXPECT_TRUE(all_equal(*arena, huge, 0));
  const std::string name = arena->name();
  ChildProcess child([&] {
    auto mine = SharedArena::attach(name);
    if (mine.get() == arena.get() || mine->owns_name()) return 2;
    for (const Block& b : {small, huge}) {
      mine->retain(b);
      fill(*mine, b, 0xab);
      mine->release(b);
    }
    return 0;
  });
  ASSERT_TRUE(child.succeeded());
  EXPECT_TRUE(all_equal(*arena, small, 0xab));
  EXPECT_TRUE(all_equal(*arena, huge, 0xab));
  EXPECT_EQ(arena->refcount(small), 1u);
  EXPECT_EQ(arena->refcount(huge), 1u);
  arena->release(small);
  arena->release(huge);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->check(), "");
}

TEST(Arena, TheLastReleaseFreesTheBlockInWhicheverProcessItHappens) {
  auto arena = SharedArena::create(256 * kMiB);
  const std::string name = arena->name();

  // The child holds the last reference.
  for (std::size_t size : {std::size_t{4096}, 20 * kMiB}) {
    Block b = arena->alloc(size);
    Channel to_child, to_parent;
    ChildProcess child([&] {
      auto mine = SharedArena::attach(name);
      mine->retain(b);
      to_parent.send(1);
      int go = 0;
      if (!to_child.receive(go)) return 3;
      if (mine->refcount(b) != 1) return 4;
      mine->release(b);
      return mine->used_bytes() == 0 ? 0 : 5;
    });
    int ready = 0;
    ASSERT_TRUE(to_parent.receive(ready));
    EXPECT_EQ(arena->refcount(b), 2u);
    arena->release(b);
    EXPECT_GT(arena->used_bytes(), 0u);
    to_child.send(1);
    ASSERT_TRUE(child.succeeded());
    EXPECT_EQ(arena->used_bytes(), 0u);
  }

  // The child allocates, hands its reference over and exits; the parent drops it.
  for (std::size_t size : {std::size_t{4096}, 20 * kMiB}) {
    Channel to_parent;
    ChildProcess child([&] {
      auto mine = SharedArena::attach(name);
      Block b = mine->alloc(size);
      fill(*mine, b, 7);
      mine->disown(b);
      to_parent.send(b);
      return 0;
    });
    Block b;
    ASSERT_TRUE(to_parent.receive(b));
    ASSERT_TRUE(child.succeeded());
    arena->adopt(b);
    EXPECT_TRUE(all_equal(*arena, b, 7));
    EXPECT_EQ(arena->refcount(b), 1u);
    arena->release(b);
    EXPECT_EQ(arena->used_bytes(), 0u);
  }
  EXPECT_EQ(arena->check(), "");
}

TEST(Arena, GrowsNewSegmentsInAnyProcessAndOthersMapThemLazily) {
  auto arena = SharedArena::create(1024 * kMiB);
  std::vector<Block> blocks;
  for (int i = 0; i < 3; ++i) blocks.push_back(arena->alloc(kMiB));  // fits the first 4 MiB segment
  EXPECT_EQ(arena->segment_count(), 1u);
  blocks.push_back(arena->alloc(kMiB));  // does not: an 8 MiB segment follows
  EXPECT_EQ(arena->segment_count(), 2u);
  EXPECT_EQ(arena->mapped_bytes(), 12 * kMiB);

  const std::string name = arena->name();
  Channel to_parent;
  ChildProcess child([&] {
    auto mine = SharedArena::attach(name);
    std::vector<Block> made;
    for (int i = 0; i < 40; ++i) {  // well past the parent's segments
      Block b = mine->alloc(kMiB);
      fill(*mine, b, static_cast<unsigned char>(i));
      mine->disown(b);
      made.push_back(b);
    }
    for (const Block& b : made) to_parent.send(b);
    return 0;
  });
  std::vector<Block> from_child(40);
  for (Block& b : from_child) ASSERT_TRUE(to_parent.receive(b));
  ASSERT_TRUE(child.succeeded());
  EXPECT_GT(arena->segment_count(), 3u);
  for (std::size_t i = 0; i < from_child.size(); ++i) {
    arena->adopt(from_child[i]);
    EXPECT_TRUE(all_equal(*arena, from_child[i], static_cast<unsigned char>(i)));
    arena->release(from_child[i]);
  }
  for (const Block& b : blocks) arena->release(b);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->check(), "");
}

TEST(Arena, AHugeBlockHasASegmentThatIsUnlinkedAndUnmappedWhenFreed) {
  auto arena = SharedArena::create(512 * kMiB);
  const auto before = shm_names_of(getpid());
  Block huge = arena->alloc(40 * kMiB + 3);
  ASSERT_TRUE(huge.dedicated());
  const auto during = shm_names_of(getpid());
  ASSERT_EQ(during.size(), before.size() + 1);
  EXPECT_GE(arena->used_bytes(), 40 * kMiB);
  fill(*arena, huge, 1);
  std::byte* p = arena->data(huge);
  arena->release(huge);
  EXPECT_EQ(shm_names_of(getpid()), before);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->mapped_bytes(), 0u);
  EXPECT_FALSE(arena->contains(p));
  EXPECT_THROW(arena->data(huge), std::logic_error);
  EXPECT_FALSE(arena->try_retain(huge));
  EXPECT_THROW(arena->release(huge), std::invalid_argument);
  // Its slot is reused, under a new generation.
  Block again = arena->alloc(40 * kMiB);
  EXPECT_EQ(again.segment, huge.segment);
  EXPECT_NE(again.generation, huge.generation);
  arena->release(again);
}

// Restores the process-wide default (off) however a test ends.
struct MappingCacheOn {
  MappingCacheOn() { SharedArena::cache_idle_mappings(true); }
  ~MappingCacheOn() { SharedArena::cache_idle_mappings(false); }
};

TEST(Arena, WithTheMappingCacheAHugeBlockStaysMappedUntilItIsFreedElsewhere) {
  MappingCacheOn cache;
  auto arena = SharedArena::create(512 * kMiB);
  const auto before = shm_names_of(getpid());
  Block huge = arena->alloc(40 * kMiB);
  ASSERT_TRUE(huge.dedicated());
  fill(*arena, huge, 7);
  std::byte* first = arena->data(huge);
  arena->disown(huge);  // the reference travels elsewhere; the mapping stays cached here
  EXPECT_EQ(arena->idle_mappings(), 1u);
  EXPECT_FALSE(arena->contains(first));
  EXPECT_THROW(arena->data(huge), std::logic_error);
  arena->adopt(huge);
  EXPECT_EQ(arena->data(huge), first);  // the same mapping, not a new one
  EXPECT_EQ(arena->idle_mappings(), 0u);
  EXPECT_TRUE(all_equal(*arena, huge, 7));
  arena->disown(huge);

  ChildProcess child([&] {
    auto mine = SharedArena::attach(arena->name());
    mine->adopt(huge);
    const bool seen = all_equal(*mine, huge, 7);
    mine->release(huge);  // the last reference: frees the block
    return seen ? 0 : 1;
  });
  ASSERT_EQ(child.wait(10s), 0);
  EXPECT_TRUE(eventually([&] { return shm_names_of(getpid()) == before; }));  // the segment went with the block
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->idle_mappings(), 1u);  // stale until the next trim
  EXPECT_EQ(SharedArena::trim_idle_mappings(), 0u);
  EXPECT_EQ(arena->idle_mappings(), 0u);
}

TEST(Arena, TheMappingCacheKeepsOnlyTheMostRecentlyUsedIdleMappings) {
  MappingCacheOn cache;
  auto arena = SharedArena::create(512 * kMiB, kMiB);  // blocks past 256 KiB are huge
  std::vector<Block> blocks;
  for (int i = 0; i < 40; ++i) {
    blocks.push_back(arena->alloc(300 << 10));
    ASSERT_TRUE(blocks.back().dedicated());
    arena->disown(blocks.back());
  }
  EXPECT_LE(arena->idle_mappings(), 32u);
  EXPECT_GE(arena->idle_mappings(), 30u);
  for (const Block& b : blocks) {
    arena->adopt(b);  // an evicted mapping is simply mapped again
    arena->release(b);
  }
  EXPECT_EQ(arena->idle_mappings(), 0u);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->segment_count(), 0u);
}

TEST(Arena, PastTheLimitThrowsNamingTheSizeTheLimitAndHowToRaiseIt) {
  auto arena = SharedArena::create(kMiB);
  try {
    arena->alloc(2 * kMiB);
    FAIL() << "expected ArenaLimitError";
  } catch (const ArenaLimitError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("2097152"), std::string::npos) << what;
    EXPECT_NE(what.find("1048576"), std::string::npos) << what;
    EXPECT_NE(what.find("shm_limit="), std::string::npos) << what;
    EXPECT_EQ(e.requested(), 2 * kMiB);
    EXPECT_EQ(e.limit(), kMiB);
  }
  std::vector<Block> blocks;
  try {
    for (int i = 0; i < 100; ++i) blocks.push_back(arena->alloc(100'000));
    FAIL() << "expected ArenaLimitError";
  } catch (const ArenaLimitError&) {
  }
  EXPECT_GE(blocks.size(), 9u);
  EXPECT_LE(arena->used_bytes(), kMiB);
  for (const Block& b : blocks) arena->release(b);
  Block ok = arena->alloc(500'000);  // still usable
  arena->release(ok);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->check(), "");
}

TEST(Arena, TenThousandCyclesOfOneMiBLeaveNothingUsed) {
  auto arena = SharedArena::create(1024 * kMiB);
  for (int i = 0; i < 10'000; ++i) {
    Block b = arena->alloc(kMiB);
    arena->data(b)[0] = std::byte{1};
    arena->release(b);
  }
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->segment_count(), 1u);

  // Mixed sizes and lifetimes, then everything freed: one free block per segment.
  std::mt19937 rng(42);
  std::vector<Block> live;
  for (int i = 0; i < 5'000; ++i) {
    if (live.size() > 200 || (!live.empty() && rng() % 2 == 0)) {
      std::swap(live[rng() % live.size()], live.back());
      arena->release(live.back());
      live.pop_back();
    } else {
      live.push_back(arena->alloc(1 + rng() % (3 * kMiB)));
    }
  }
  EXPECT_EQ(arena->check(), "");
  for (const Block& b : live) arena->release(b);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->check(), "");
}

TEST(Arena, ThreadsAllocateAndReleaseConcurrently) {
  auto arena = SharedArena::create(1024 * kMiB);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<Block> mine;
      for (int i = 0; i < 2'000; ++i) {
        if (!mine.empty() && rng() % 2 == 0) {
          const Block b = mine.back();
          mine.pop_back();
          if (arena->data(b)[0] != std::byte(t)) ++failures;
          arena->retain(b);
          arena->release(b);
          arena->release(b);
        } else {
          Block b = arena->alloc(64 + rng() % 300'000);
          arena->data(b)[0] = std::byte(t);
          mine.push_back(b);
        }
      }
      for (const Block& b : mine) arena->release(b);
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->check(), "");
}

TEST(Arena, ADescriptorWithoutAReferenceCanBeRetainedOnlyWhileItsBlockLives) {
  auto arena = SharedArena::create(64 * kMiB);
  Block b = arena->alloc(1000);
  EXPECT_TRUE(arena->try_retain(b));
  EXPECT_EQ(arena->refcount(b), 2u);
  arena->release(b);
  arena->release(b);
  EXPECT_FALSE(arena->try_retain(b));
  EXPECT_THROW(arena->release(b), std::invalid_argument);
  Block other = arena->alloc(1000);  // reuses the memory under a new generation
  EXPECT_EQ(other.offset, b.offset);
  EXPECT_FALSE(arena->try_retain(b));
  Block forged = other;
  forged.offset += 1;
  EXPECT_FALSE(arena->try_retain(forged));
  arena->release(other);
  EXPECT_EQ(arena->used_bytes(), 0u);
}

TEST(Arena, AChildKilledWhileHoldingAReferenceLeaksOnlyThatBlock) {
  auto arena = SharedArena::create(256 * kMiB);
  Block b = arena->alloc(kMiB);
  const std::string name = arena->name();
  Channel to_parent;
  ChildProcess child([&] {
    auto mine = SharedArena::attach(name);
    mine->retain(b);
    to_parent.send(1);
    pause();
    return 0;
  });
  int ready = 0;
  ASSERT_TRUE(to_parent.receive(ready));
  child.kill_now();
  child.wait();
  arena->release(b);
  EXPECT_EQ(arena->refcount(b), 1u);  // the dead child's reference stays: the documented leak
  std::vector<Block> more;
  for (int i = 0; i < 50; ++i) more.push_back(arena->alloc(100'000));
  for (const Block& m : more) arena->release(m);
  EXPECT_EQ(arena->used_bytes(), shoal::arena_detail::kHeaderBytes + kMiB);
  EXPECT_EQ(arena->check(), "");
}

TEST(Arena, AProcessDyingMidAllocationWithTheLockHeldIsRecovered) {
  auto arena = SharedArena::create(256 * kMiB);
  Block keep = arena->alloc(kMiB);
  Block doomed = arena->alloc(kMiB);
  Block after = arena->alloc(kMiB);
  const std::size_t used = arena->used_bytes();
  const std::string name = arena->name();
  ChildProcess child([&] {
    auto mine = SharedArena::attach(name);
    auto& c = ArenaTestAccess::control(*mine);
    c.mutex.lock();
    // Half an operation: a block unlinked from its list, a remainder header
    // written but never committed, the counters off, and the lock never let go.
    for (auto& bin : c.bins) bin = shoal::arena_detail::kNil;
    auto* h = ArenaTestAccess::header(*mine, after);
    auto* next = reinterpret_cast<shoal::arena_detail::BlockHeader*>(reinterpret_cast<std::byte*>(h) + h->span);
    next->prev_span = 12345;
    c.used_bytes.store(1);
    // And the last reference of `doomed` dropped, its free never done.
    ArenaTestAccess::header(*mine, doomed)->refs.store(0);
    _exit(0);
    return 0;
  });
  ASSERT_TRUE(child.succeeded());
  Block b = arena->alloc(2 * kMiB);  // takes the lock: recovery first
  EXPECT_EQ(arena->recoveries(), 1u);
  EXPECT_EQ(arena->check(), "");
  EXPECT_EQ(arena->used_bytes(), used - (kMiB + 64) + (2 * kMiB + 64));
  arena->release(b);
  arena->release(keep);
  arena->release(after);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->check(), "");
}

TEST(Arena, AProcessDyingMidSegmentCreationLeavesNoName) {
  auto arena = SharedArena::create(256 * kMiB);
  const std::string name = arena->name();
  const auto before = shm_names_of(getpid());
  ChildProcess child([&] {
    auto mine = SharedArena::attach(name);
    auto& c = ArenaTestAccess::control(*mine);
    c.mutex.lock();
    // As grow_locked() would: the slot is claimed and the segment exists, not yet committed.
    const uint32_t slot = c.slot_count.load();
    auto& s = c.slots[slot];
    std::string seg = shoal::arena_detail::segment_name(c.owner_pid);
    std::strcpy(s.name, seg.c_str());
    s.bytes = 4 * kMiB;
    s.creator = getpid();
    s.purpose = shoal::arena_detail::kForPool;
    s.kind.store(shoal::arena_detail::kCreating);
    c.slot_count.store(slot + 1);
    shoal::arena_detail::create_named_segment(seg, 4 * kMiB);
    _exit(0);
    return 0;
  });
  ASSERT_TRUE(child.succeeded());
  EXPECT_EQ(shm_names_of(getpid()).size(), before.size() + 1);
  Block b = arena->alloc(1000);
  EXPECT_EQ(arena->recoveries(), 1u);
  EXPECT_EQ(shm_names_of(getpid()).size(), before.size() + 1);  // the orphan went, the new pool came
  EXPECT_EQ(arena->segment_count(), 1u);
  arena->release(b);
  EXPECT_EQ(arena->check(), "");
}

TEST(Arena, ChildrenKilledAtRandomMomentsNeverCorruptTheAllocator) {
  auto arena = SharedArena::create(1024 * kMiB);
  const std::string name = arena->name();
  std::mt19937 rng(7);
  std::vector<Block> mine;
  for (int round = 0; round < 12; ++round) {
    Channel to_parent;
    ChildProcess child([&] {
      auto a = SharedArena::attach(name);
      std::mt19937 r(round);
      std::vector<Block> held;
      to_parent.send(1);
      for (;;) {
        if (!held.empty() && r() % 2 == 0) {
          a->release(held.back());
          held.pop_back();
        } else {
          held.push_back(a->alloc(64 + r() % (2 * kMiB)));
        }
        if (held.size() > 64) {
          for (const Block& b : held) a->release(b);
          held.clear();
        }
      }
      return 0;
    });
    int ready = 0;
    ASSERT_TRUE(to_parent.receive(ready));
    std::this_thread::sleep_for(std::chrono::microseconds(2'000 + rng() % 20'000));
    child.kill_now();
    child.wait();
    // The parent goes on allocating and freeing, and the invariants hold.
    for (int i = 0; i < 20; ++i) mine.push_back(arena->alloc(1 + rng() % kMiB));
    for (int i = 0; i < 10; ++i) {
      arena->release(mine.back());
      mine.pop_back();
    }
    ASSERT_EQ(arena->check(), "") << "after round " << round;
  }
  std::printf("recoveries after killing children at random: %llu\n",
              static_cast<unsigned long long>(arena->recoveries()));
  for (const Block& b : mine) arena->release(b);
  EXPECT_EQ(arena->check(), "");
}

TEST(Arena, CloseUnlinksEverythingButKeepsLiveBlocksUsable) {
  const auto before = shm_names_of(getpid());
  auto arena = SharedArena::create(256 * kMiB);
  Block a = arena->alloc(1000);
  Block h = arena->alloc(30 * kMiB);
  fill(*arena, a, 3);
  arena->close();
  EXPECT_TRUE(arena->closed());
  EXPECT_EQ(shm_names_of(getpid()), before);
  EXPECT_TRUE(all_equal(*arena, a, 3));
  EXPECT_THROW(arena->alloc(10), shoal::ClosedError);
  arena->release(a);
  arena->release(h);
  EXPECT_EQ(arena->used_bytes(), 0u);
}

// --- private (copy-on-write) mappings ------------------------------------------

namespace {

// Anonymous (private, copied-on-write) memory in the mapping that holds `address`, in KiB; -1 if none.
long anonymous_kib(const void* address) {
  const auto at = reinterpret_cast<uintptr_t>(address);
  FILE* f = std::fopen("/proc/self/smaps", "r");
  if (!f) return -1;
  char line[512];
  bool inside = false;
  long found = -1;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && std::strchr(line, ':') != nullptr &&
        std::strchr(line, '-') < std::strchr(line, ' ')) {
      inside = at >= lo && at < hi;
      continue;
    }
    long kib = 0;
    if (inside && std::sscanf(line, "Anonymous: %ld kB", &kib) == 1) {
      found = kib;
      break;
    }
  }
  std::fclose(f);
  return found;
}

bool mapped_here(const void* address) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  unsigned char vec = 0;
  void* start = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(address) / page * page);
  return mincore(start, page, &vec) == 0;
}

void fill_pattern(std::byte* p, std::size_t n, unsigned seed) {
  for (std::size_t i = 0; i < n; ++i) p[i] = std::byte(static_cast<unsigned char>((i * 131 + seed) >> 3));
}

bool has_pattern(const std::byte* p, std::size_t n, unsigned seed, std::size_t from = 0) {
  for (std::size_t i = 0; i < n; ++i)
    if (p[i] != std::byte(static_cast<unsigned char>(((i + from) * 131 + seed) >> 3))) return false;
  return true;
}

}  // namespace

TEST(ArenaPrivate, AWindowReadsTheBlockWithoutACopyAndWritesStayInTheMapping) {
  auto arena = SharedArena::create(256 * kMiB);
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  Block pooled = arena->alloc(300'000);
  Block huge = arena->alloc(20 * kMiB + 5);
  ASSERT_FALSE(pooled.dedicated());
  ASSERT_TRUE(huge.dedicated());
  for (const Block& b : {pooled, huge}) {
    fill_pattern(arena->data(b), b.size, 7);
    // A window that starts inside a page (block offsets are 64-aligned, the window's own offset is odd).
    const std::size_t off = 4097, len = b.size - off - 3;
    shoal::PrivateMapping m = arena->map_private(b, off, len);
    ASSERT_TRUE(m.valid());
    EXPECT_FALSE(m.copied());
    EXPECT_EQ(m.size(), len);
    EXPECT_NE(m.data(), arena->data(b) + off);  // a mapping of its own
    EXPECT_TRUE(arena->contains(m.data(), m.size()));
    EXPECT_TRUE(has_pattern(m.data(), len, 7, off));
    EXPECT_EQ(anonymous_kib(m.data()), 0) << "reading copied pages";
    // One write: one page copied, into this mapping only.
    m.data()[10] = std::byte{0xEE};
    EXPECT_EQ(anonymous_kib(m.data()), static_cast<long>(page / 1024));
    EXPECT_TRUE(has_pattern(arena->data(b), b.size, 7)) << "the write reached the block";
    shoal::PrivateMapping other = arena->map_private(b, off, len);
    EXPECT_TRUE(has_pattern(other.data(), len, 7, off)) << "another mapping saw the write";
    std::memset(m.data(), 0x55, len);
    EXPECT_TRUE(has_pattern(arena->data(b), b.size, 7));
    EXPECT_TRUE(has_pattern(other.data(), len, 7, off));
    // A whole-block window, to the block's end by default.
    shoal::PrivateMapping whole = arena->map_private(b);
    EXPECT_EQ(whole.size(), b.size);
    EXPECT_TRUE(has_pattern(whole.data(), b.size, 7));
  }
  arena->release(pooled);
  arena->release(huge);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->check(), "");
}

TEST(ArenaPrivate, TheMappingLivesExactlyAsLongAsItsOwner) {
  auto arena = SharedArena::create(256 * kMiB);
  Block b = arena->alloc(1 * kMiB);
  fill_pattern(arena->data(b), b.size, 3);
  std::byte* p = nullptr;
  {
    shoal::PrivateMapping m = arena->map_private(b, 100, 1000);
    p = m.data();
    shoal::PrivateMapping moved = std::move(m);
    EXPECT_FALSE(m.valid());
    EXPECT_EQ(m.data(), nullptr);
    EXPECT_EQ(moved.data(), p);
    EXPECT_TRUE(has_pattern(moved.data(), 1000, 3, 100));
    shoal::PrivateMapping assigned;
    assigned = std::move(moved);
    EXPECT_EQ(assigned.data(), p);
    EXPECT_TRUE(mapped_here(p));
    EXPECT_TRUE(arena->contains(p, 1000));
    EXPECT_FALSE(arena->contains(p, 1001));  // past the window
  }
  EXPECT_FALSE(mapped_here(p));
  EXPECT_FALSE(arena->contains(p));
  shoal::PrivateMapping m = arena->map_private(b, 0, 10);
  p = m.data();
  m.reset();
  m.reset();  // idempotent
  EXPECT_FALSE(m.valid());
  EXPECT_FALSE(mapped_here(p));
  // A mapping keeps its arena handle alive.
  std::weak_ptr<SharedArena> weak = arena;
  m = arena->map_private(b, 0, 10);
  arena->release(b);
  EXPECT_EQ(arena->used_bytes(), 0u);
  arena.reset();
  EXPECT_FALSE(weak.expired());
  m.reset();
  EXPECT_TRUE(weak.expired());
}

TEST(ArenaPrivate, RefusesWindowsOutsideTheBlockAndBlocksNotHeldHere) {
  auto arena = SharedArena::create(256 * kMiB);
  Block b = arena->alloc(100'000);
  Block huge = arena->alloc(20 * kMiB);
  EXPECT_THROW(arena->map_private(b, 100'001, 0), std::invalid_argument);
  EXPECT_THROW(arena->map_private(b, 50'000, 50'001), std::invalid_argument);
  EXPECT_FALSE(arena->map_private(b, 100'000).valid());  // empty: nothing mapped
  arena->disown(huge);  // the reference is elsewhere now
  EXPECT_THROW(arena->map_private(huge), std::logic_error);
  arena->adopt(huge);
  EXPECT_TRUE(arena->map_private(huge).valid());
  Block forged = b;
  forged.segment = SharedArena::kMaxSegments;
  EXPECT_THROW(arena->map_private(forged), std::invalid_argument);
  arena->release(b);
  arena->release(huge);
}

TEST(ArenaPrivate, ProcessesWritingTheirPrivateCopiesLeaveTheBlockAndEachOtherAlone) {
  auto arena = SharedArena::create(256 * kMiB);
  Block pooled = arena->alloc(2 * kMiB);
  Block huge = arena->alloc(24 * kMiB);
  for (const Block& b : {pooled, huge}) {
    fill_pattern(arena->data(b), b.size, 11);
    shoal::PrivateMapping mine = arena->map_private(b);
    for (int round = 0; round < 2; ++round) {
      ChildProcess child([&] {
        // As a pool worker: attach by name, take a reference, map privately, write everything.
        auto theirs = SharedArena::attach(arena->name());
        if (theirs.get() == arena.get()) return 2;
        theirs->retain(b);
        int rc = 0;
        {
          shoal::PrivateMapping m = theirs->map_private(b);
          if (!has_pattern(m.data(), b.size, 11)) rc = 3;  // a previous child's write showed
          if (m.copied()) rc = 4;
          std::memset(m.data(), 0xA5 + round, b.size);
          if (!has_pattern(theirs->data(b), b.size, 11)) rc = 5;
        }
        theirs->release(b);
        return rc;
      });
      ASSERT_EQ(child.wait(30s), 0) << "round " << round;
    }
    EXPECT_TRUE(has_pattern(arena->data(b), b.size, 11));
    EXPECT_TRUE(has_pattern(mine.data(), b.size, 11));
    EXPECT_EQ(arena->refcount(b), 1u);
  }
  arena->release(pooled);
  arena->release(huge);
  EXPECT_EQ(arena->used_bytes(), 0u);
}

TEST(ArenaPrivate, AfterTheOwnerClosedTheArenaWindowsAreStillPrivate) {
  auto arena = SharedArena::create(256 * kMiB);
  Block early = arena->alloc(100'000);
  Block late = arena->alloc(200'000);  // the same pooled segment
  Block huge = arena->alloc(20 * kMiB);
  for (const Block& b : {early, late, huge}) fill_pattern(arena->data(b), b.size, 5);
  { shoal::PrivateMapping opened = arena->map_private(early); }  // opens the pooled segment
  arena->close();  // unlinks every name
  // The pooled segment's descriptor was kept: still a mapping, no copy.
  shoal::PrivateMapping a = arena->map_private(late);
  EXPECT_FALSE(a.copied());
  // The huge block's name is gone: its window is copied instead, just as private.
  shoal::PrivateMapping h = arena->map_private(huge, 10, 1 * kMiB);
  EXPECT_TRUE(h.copied());
  EXPECT_GE(anonymous_kib(h.data()), 1024) << "a copy shows as anonymous memory";
  EXPECT_EQ(anonymous_kib(a.data()), 0);
  EXPECT_TRUE(arena->contains(h.data(), h.size()));
  for (auto* m : {&a, &h}) {
    const bool is_huge = m == &h;
    EXPECT_TRUE(has_pattern(m->data(), m->size(), 5, is_huge ? 10 : 0));
    std::memset(m->data(), 0, m->size());
  }
  EXPECT_TRUE(has_pattern(arena->data(late), late.size, 5));
  EXPECT_TRUE(has_pattern(arena->data(huge), huge.size, 5));
  arena->release(early);
  arena->release(late);
  arena->release(huge);
}

// --- references that travel in payloads (issue 12) ---------------------------

// A worker makes a block, sends it by reference in a result (the payload holds
// a reference it disowned) and lets go of its own; the caller takes a
// reference of its own (its array's view) and then drops the payload's. That
// must not touch the view's pin: with release() instead, the last pin went and
// a huge block's segment was unmapped under the caller's array (SIGSEGV).
TEST(Arena, APayloadsReferenceIsDroppedWithoutUnmappingTheReceiversView) {
  auto arena = SharedArena::create(512 * kMiB);
  const std::string name = arena->name();
  for (std::size_t size : {std::size_t{4096}, 40 * kMiB}) {
    Channel to_parent;
    ChildProcess worker([&] {
      auto mine = SharedArena::attach(name);
      Block b = mine->alloc(size);
      fill(*mine, b, 9);
      mine->retain(b);   // the result payload's reference ...
      mine->disown(b);   // ... belongs to the payload, not to this process
      mine->release(b);  // the worker's own array goes
      to_parent.send(b);
      return 0;
    });
    Block b;
    ASSERT_TRUE(to_parent.receive(b));
    ASSERT_TRUE(worker.succeeded());
    ASSERT_EQ(b.dedicated(), size > kMiB);
    ASSERT_TRUE(arena->try_retain(b));  // the caller's array
    EXPECT_EQ(arena->refcount(b), 2u);
    arena->release_disowned(b);  // the payload's reference, never adopted here
    EXPECT_EQ(arena->refcount(b), 1u);
    EXPECT_TRUE(arena->contains(arena->data(b), b.size));
    EXPECT_TRUE(all_equal(*arena, b, 9));
    arena->release(b);
    EXPECT_EQ(arena->used_bytes(), 0u);
  }
  EXPECT_EQ(arena->segment_count(), 1u);  // the pooled one; the huge block's went with it
  EXPECT_EQ(arena->check(), "");
}

TEST(Arena, ReleaseDisownedOfTheLastReferenceFreesTheBlockAndDropsItsIdleMapping) {
  MappingCacheOn cache;
  auto arena = SharedArena::create(512 * kMiB);
  const auto before = shm_names_of(getpid());
  Block huge = arena->alloc(40 * kMiB);
  arena->disown(huge);  // into a payload; the mapping stays cached here
  EXPECT_EQ(arena->idle_mappings(), 1u);
  arena->release_disowned(huge);  // the payload is released, here
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->idle_mappings(), 0u);
  EXPECT_EQ(shm_names_of(getpid()), before);
  EXPECT_THROW(arena->release_disowned(huge), std::invalid_argument);  // once too often
}

TEST(Arena, AnUnmatchedDisownIsIgnoredOnceTheBlockHasNoPinHere) {
  MappingCacheOn cache;
  auto arena = SharedArena::create(512 * kMiB);
  Block huge = arena->alloc(40 * kMiB);
  fill(*arena, huge, 4);
  arena->disown(huge);  // an idle cached mapping
  arena->disown(huge);  // one too many: no pin left to undo (it used to wrap the count around)
  EXPECT_EQ(arena->idle_mappings(), 1u);
  arena->adopt(huge);
  EXPECT_TRUE(all_equal(*arena, huge, 4));
  EXPECT_EQ(arena->idle_mappings(), 0u);
  arena->release(huge);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(SharedArena::trim_idle_mappings(), 0u);
}

TEST(Arena, HoldMappingKeepsTheBytesMappedPastTheBlocksLastPin) {
  auto arena = SharedArena::create(512 * kMiB);
  const auto before = shm_names_of(getpid());
  Block huge = arena->alloc(40 * kMiB);
  fill(*arena, huge, 6);
  std::shared_ptr<std::byte> held = arena->hold_mapping(huge);
  EXPECT_EQ(held.get(), arena->data(huge));
  arena->release(huge);  // freed: its name goes, this process's bookkeeping lets go of it
  EXPECT_EQ(shm_names_of(getpid()), before);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_FALSE(arena->contains(held.get()));
  EXPECT_TRUE(std::all_of(held.get(), held.get() + huge.size, [](std::byte x) { return x == std::byte{6}; }));
  EXPECT_TRUE(mapped_here(held.get()));
  const void* where = held.get();
  held.reset();  // the last owner: unmapped now
  EXPECT_FALSE(mapped_here(where));

  Block small = arena->alloc(1000);  // a pooled block's holder keeps the handle (and its segments)
  fill(*arena, small, 8);
  held = arena->hold_mapping(small);
  std::weak_ptr<SharedArena> handle = arena;
  arena->release(small);
  arena.reset();
  EXPECT_FALSE(handle.expired());
  EXPECT_EQ(*held, std::byte{8});
  held.reset();
  EXPECT_TRUE(handle.expired());
  EXPECT_THROW(SharedArena::create(kMiB)->hold_mapping(Block{0, Block::kDedicated, 0, 10, 99}),
               std::logic_error);
}

// --- memfd-backed segments (issue 12: Docker's 64 MB /dev/shm) -----------------

namespace {

bool memfd_backed() { return SharedArena::default_backing() == shoal::SegmentBacking::memfd; }

#define SKIP_WITHOUT_MEMFD() \
  if (!memfd_backed()) GTEST_SKIP() << "memfds cannot be shared through /proc here: the arena uses /dev/shm"

std::set<std::string> dev_shm_names_of(pid_t pid) {
  std::set<std::string> names;
  const std::string prefix = "shoal-" + std::to_string(pid) + "-";
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) {
    std::string name = entry.path().filename().string();
    if (name.starts_with(prefix)) names.insert(name);
  }
  return names;
}

// This process's descriptors of memfds labelled after `pid`'s arenas.
std::vector<int> memfds_of(pid_t pid) {
  std::vector<int> fds;
  const std::string memfd = "/memfd:shoal-" + std::to_string(pid) + "-";
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(entry.path(), ec).string();
    if (!ec && target.starts_with(memfd)) fds.push_back(std::stoi(entry.path().filename().string()));
  }
  return fds;
}

struct Name {
  char text[64] = {};
  explicit Name(const std::string& s = "") { std::strncpy(text, s.c_str(), sizeof text - 1); }
};

}  // namespace

// This process's threads named `name` (the arena's service names itself first thing).
int threads_named(const std::string& name) {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(entry.path() / "comm");
    std::string text;
    if (std::getline(comm, text) && text == name) ++n;
  }
  return n;
}

// A fork of the owner while the new service thread was still starting could
// inherit a lock of its start-up held forever (a hung child under ASan). So
// create() returns only once the service runs our code, ready to fork from.
TEST(ArenaMemfd, CreateReturnsOnlyOnceItsSegmentServiceRuns) {
  SKIP_WITHOUT_MEMFD();
  for (int round = 0; round < 20; ++round) {
    const int before = threads_named("shoal-arena");
    auto arena = SharedArena::create(64 * kMiB);
    EXPECT_EQ(threads_named("shoal-arena"), before + 1) << "round " << round;
  }
}

TEST(ArenaMemfd, SegmentsAreSealedMemfdsTheOwnerHoldsNotNamesInDevShm) {
  SKIP_WITHOUT_MEMFD();
  const auto names_before = dev_shm_names_of(getpid());
  const std::size_t fds_before = memfds_of(getpid()).size();
  auto arena = SharedArena::create(512 * kMiB);
  EXPECT_EQ(arena->backing(), shoal::SegmentBacking::memfd);
  Block small = arena->alloc(1000);
  Block huge = arena->alloc(20 * kMiB);
  ASSERT_TRUE(huge.dedicated());
  fill(*arena, small, 1);
  fill(*arena, huge, 2);
  // Only the control segment has a name in /dev/shm; the segments are memfds this process holds.
  EXPECT_EQ(dev_shm_names_of(getpid()).size(), names_before.size() + 1);
  const std::vector<int> fds = memfds_of(getpid());
  ASSERT_EQ(fds.size(), fds_before + 2);
  // Nobody can shrink a segment under the others' mappings (SIGBUS): it is sealed.
  for (int fd : fds) {
    shoal::UniqueFd again(open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(again);
    EXPECT_NE(ftruncate(again.get(), 4096), 0);
    EXPECT_EQ(errno, EPERM);
  }
  arena->release(huge);  // the owner frees it: its descriptor goes at once
  EXPECT_EQ(memfds_of(getpid()).size(), fds_before + 1);
  arena->release(small);
  arena.reset();
  EXPECT_EQ(memfds_of(getpid()).size(), fds_before);
  EXPECT_EQ(dev_shm_names_of(getpid()), names_before);
}

// A worker grows the pool's arena and makes a huge block for its result, then
// exits: the segments must outlive it, for the caller and for other workers.
TEST(ArenaMemfd, SegmentsAChildMakesOutliveItAndReachEveryOtherProcess) {
  SKIP_WITHOUT_MEMFD();
  auto arena = SharedArena::create(1024 * kMiB);
  Block mine = arena->alloc(kMiB);  // the parent's first pooled segment
  const std::string name = arena->name();
  const std::size_t fds_before = memfds_of(getpid()).size();
  Channel to_parent;
  ChildProcess maker([&] {
    auto a = SharedArena::attach(name);
    for (int i = 0; i < 12; ++i) {  // past the parent's segment: new pooled segments, made here
      Block b = a->alloc(kMiB);
      fill(*a, b, static_cast<unsigned char>(i));
      a->disown(b);
      to_parent.send(b);
    }
    Block huge = a->alloc(40 * kMiB);
    fill(*a, huge, 0x5a);
    a->disown(huge);
    to_parent.send(huge);
    return a->segment_count() > 2 ? 0 : 7;
  });
  std::vector<Block> blocks(13);
  for (Block& b : blocks) ASSERT_TRUE(to_parent.receive(b));
  ASSERT_TRUE(maker.succeeded());  // the child that made the segments is gone
  EXPECT_GT(memfds_of(getpid()).size(), fds_before + 2);  // the owner holds what the child made
  EXPECT_EQ(dev_shm_names_of(getpid()).size(), 1u);       // nothing fell back to /dev/shm
  // Another process maps them all now, the parent too.
  ChildProcess reader([&] {
    auto a = SharedArena::attach(name);
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      a->retain(blocks[i]);
      if (!all_equal(*a, blocks[i], i < 12 ? static_cast<unsigned char>(i) : 0x5a)) return 10 + static_cast<int>(i);
      shoal::PrivateMapping m = a->map_private(blocks[i]);
      if (m.copied()) return 40;  // reopened through the owner's /proc/<pid>/fd, not copied
      a->release(blocks[i]);
    }
    return 0;
  });
  ASSERT_EQ(reader.wait(30s), 0);
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    arena->adopt(blocks[i]);
    EXPECT_TRUE(all_equal(*arena, blocks[i], i < 12 ? static_cast<unsigned char>(i) : 0x5a)) << i;
    arena->release(blocks[i]);
  }
  arena->release(mine);
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->check(), "");
}

TEST(ArenaMemfd, AHugeBlockFreedInAnotherProcessHasItsDescriptorClosedByTheOwner) {
  SKIP_WITHOUT_MEMFD();
  auto arena = SharedArena::create(512 * kMiB);
  const std::string name = arena->name();
  const std::size_t fds_before = memfds_of(getpid()).size();
  // Made here, freed in a child.
  Block huge = arena->alloc(30 * kMiB);
  arena->disown(huge);
  EXPECT_EQ(memfds_of(getpid()).size(), fds_before + 1);
  ChildProcess freer([&] {
    auto a = SharedArena::attach(name);
    a->adopt(huge);
    a->release(huge);
    return 0;
  });
  ASSERT_TRUE(freer.succeeded());
  EXPECT_TRUE(eventually([&] { return memfds_of(getpid()).size() == fds_before; }));
  // Made and freed in a child: handed over, then dropped.
  ChildProcess both([&] {
    auto a = SharedArena::attach(name);
    for (int i = 0; i < 5; ++i) a->release(a->alloc(30 * kMiB));
    return 0;
  });
  ASSERT_TRUE(both.succeeded());
  EXPECT_TRUE(eventually([&] { return memfds_of(getpid()).size() == fds_before; }));
  EXPECT_EQ(arena->used_bytes(), 0u);
  EXPECT_EQ(arena->mapped_bytes(), 0u);
}

// The owner holds the only descriptors: when it exits, mappings made stay
// valid, and nothing can be opened anew (cleanly, not the wrong memory).
TEST(ArenaMemfd, AfterTheOwnerExitsMappingsStayAndNewAttachesFailCleanly) {
  SKIP_WITHOUT_MEMFD();
  Channel to_parent, to_owner;
  ChildProcess owner([&] {  // forked before this process has any thread
    auto a = SharedArena::create(256 * kMiB);
    Block small = a->alloc(100'000);
    Block other = a->alloc(100'000);
    Block huge = a->alloc(20 * kMiB);
    for (const Block& b : {small, other, huge}) fill(*a, b, 0x33);
    to_parent.send(Name(a->name()));
    for (const Block& b : {small, other, huge}) to_parent.send(b);
    int go = 0;
    if (!to_owner.receive(go)) return 2;
    _exit(0);  // as if killed: no close(), the control segment's name stays behind
  });
  Name name;
  Block small, other, huge;
  ASSERT_TRUE(to_parent.receive(name));
  ASSERT_TRUE(to_parent.receive(small));
  ASSERT_TRUE(to_parent.receive(other));
  ASSERT_TRUE(to_parent.receive(huge));
  {
    auto a = SharedArena::attach(name.text);
    EXPECT_EQ(a->backing(), shoal::SegmentBacking::memfd);
    ASSERT_TRUE(a->try_retain(small));  // maps the pooled segment while the owner lives
    EXPECT_TRUE(all_equal(*a, small, 0x33));
    to_owner.send(1);
    ASSERT_TRUE(owner.succeeded());
    EXPECT_TRUE(all_equal(*a, small, 0x33));  // the mapping outlives the owner
    fill(*a, small, 0x44);
    EXPECT_TRUE(all_equal(*a, small, 0x44));
    // A segment never mapped here cannot be reached any more: a clean error, no reference left.
    EXPECT_THROW(a->try_retain(huge), shoal::NotFoundError);
    EXPECT_EQ(a->refcount(huge), 1u);
    // A private window of the mapped segment is copied (its descriptor cannot be opened).
    ASSERT_TRUE(a->try_retain(other));
    shoal::PrivateMapping m = a->map_private(other);
    EXPECT_TRUE(m.copied());
    EXPECT_EQ(static_cast<unsigned char>(m.data()[0]), 0x33);
    EXPECT_EQ(static_cast<unsigned char>(m.data()[99'999]), 0x33);
    m.reset();
    a->release(other);
    a->release(small);
  }
  // What the dead owner left (its control segment and token) goes with the next cleanup.
  shoal::reclaim_stale_segments();
  EXPECT_TRUE(dev_shm_names_of(owner.pid()).empty());
  EXPECT_THROW(SharedArena::attach(name.text), shoal::NotFoundError);
}

TEST(ArenaMemfd, AfterTheOwnerClosedTheArenaNoSegmentCanBeOpenedAnew) {
  SKIP_WITHOUT_MEMFD();
  auto arena = SharedArena::create(256 * kMiB);
  Block small = arena->alloc(1000);
  Block huge = arena->alloc(20 * kMiB);
  fill(*arena, huge, 9);
  const std::string name = arena->name();
  Channel to_parent, to_child;
  ChildProcess child([&] {
    auto a = SharedArena::attach(name);
    if (!a->try_retain(small)) return 2;
    to_parent.send(1);
    int go = 0;
    if (!to_child.receive(go)) return 3;
    try {
      a->try_retain(huge);
      return 4;  // reached a segment of a closed arena
    } catch (const shoal::NotFoundError&) {
    }
    try {
      a->alloc(10);
      return 5;
    } catch (const shoal::ClosedError&) {
    }
    a->release(small);
    return 0;
  });
  int ready = 0;
  ASSERT_TRUE(to_parent.receive(ready));
  const std::size_t fds = memfds_of(getpid()).size();
  arena->close();
  EXPECT_EQ(memfds_of(getpid()).size(), fds - 2);
  EXPECT_TRUE(all_equal(*arena, huge, 9));  // the owner's own mapping stays
  to_child.send(1);
  ASSERT_EQ(child.wait(30s), 0);
  arena->release(small);
  arena->release(huge);
}

// An owner that cannot take a memfd (its service gone or stuck): the child's
// segment goes to /dev/shm instead, named after the owner, and works the same.
TEST(ArenaMemfd, ANonOwnerPutsItsSegmentInDevShmWhenTheOwnerCannotTakeIt) {
  SKIP_WITHOUT_MEMFD();
  for (bool stuck : {false, true}) {
    auto arena = SharedArena::create(512 * kMiB);
    const std::string name = arena->name();
    ArenaTestAccess::stop_service(*arena, stuck);
    ArenaTestAccess::set_handoff_timeout(200ms);
    const auto names_before = dev_shm_names_of(getpid());
    Channel to_parent;
    ChildProcess child([&] {
      auto a = SharedArena::attach(name);
      Block b = a->alloc(20 * kMiB);
      // Which way it went, as the segment's slot records it. Stuck: it asked
      // the owner and gave up waiting for the answer (the owner alive and its
      // service said to run, only the hand-off deadline ends that wait); gone:
      // it never asked.
      const uint32_t handoff = ArenaTestAccess::control(*a).slots[b.segment].handoff.load();
      fill(*a, b, 0x77);
      a->disown(b);
      to_parent.send(b);
      if (stuck && handoff != shoal::arena_detail::kHandoffAbandoned) return 3;
      if (!stuck && handoff != shoal::arena_detail::kHandoffNone) return 4;
      return 0;
    });
    Block b;
    ASSERT_TRUE(to_parent.receive(b));
    ASSERT_EQ(child.wait(30s), 0) << (stuck ? "stuck" : "gone");
    ArenaTestAccess::set_handoff_timeout(10s);
    EXPECT_EQ(dev_shm_names_of(getpid()).size(), names_before.size() + 1);
    arena->adopt(b);
    EXPECT_TRUE(all_equal(*arena, b, 0x77));
    arena->release(b);
    EXPECT_EQ(dev_shm_names_of(getpid()), names_before);
    EXPECT_EQ(arena->check(), "");
  }
}

TEST(ArenaMemfd, AForkedCopyOfTheOwnerHoldsNoneOfItsDescriptors) {
  SKIP_WITHOUT_MEMFD();
  auto arena = SharedArena::create(512 * kMiB);
  Block huge = arena->alloc(20 * kMiB);
  fill(*arena, huge, 5);
  ASSERT_FALSE(memfds_of(getpid()).empty());
  const pid_t owner = getpid();
  ChildProcess child([&] {
    if (!memfds_of(owner).empty()) return 2;  // it would keep freed blocks' memory alive
    if (!all_equal(*arena, huge, 5)) return 3;  // the inherited mapping
    auto again = SharedArena::attach(arena->name());  // and through the owner, as any process
    if (again.get() == arena.get() || !again->try_retain(huge)) return 4;
    if (!all_equal(*again, huge, 5)) return 5;
    again->release(huge);
    return 0;
  });
  ASSERT_EQ(child.wait(30s), 0);
  arena->release(huge);
}

TEST(ArenaMemfd, AnArenaInDevShmNamesItsSegmentsThereAsBefore) {
  const auto before = dev_shm_names_of(getpid());
  auto arena = SharedArena::create(512 * kMiB, SharedArena::kDefaultSegmentBytes, shoal::SegmentBacking::dev_shm);
  EXPECT_EQ(arena->backing(), shoal::SegmentBacking::dev_shm);
  Block small = arena->alloc(1000, true);
  Block huge = arena->alloc(20 * kMiB, true);
  EXPECT_EQ(dev_shm_names_of(getpid()).size(), before.size() + 3);  // control, pooled, dedicated
  const std::string name = arena->name();
  ChildProcess child([&] {
    auto a = SharedArena::attach(name);
    for (const Block& b : {small, huge}) {
      a->retain(b);
      fill(*a, b, 0x21);
      a->release(b);
    }
    Block made = a->alloc(30 * kMiB);  // a child's segment: named after the owner too
    a->release(made);
    return 0;
  });
  ASSERT_TRUE(child.succeeded());
  EXPECT_TRUE(all_equal(*arena, small, 0x21));
  EXPECT_TRUE(all_equal(*arena, huge, 0x21));
  arena->release(huge);
  EXPECT_EQ(dev_shm_names_of(getpid()).size(), before.size() + 2);
  arena.reset();
  EXPECT_EQ(dev_shm_names_of(getpid()), before);
}

TEST(ArenaMemfd, TheDefaultLimitFollowsTheBacking) {
  std::size_t avail_kib = 0;
  {
    std::ifstream meminfo("/proc/meminfo");
    std::string key, unit;
    std::size_t kib = 0;
    while (meminfo >> key >> kib >> unit)
      if (key == "MemAvailable:") avail_kib = kib;
  }
  ASSERT_GT(avail_kib, 0u);
  const std::size_t memfd_limit = SharedArena::default_limit(shoal::SegmentBacking::memfd);
  EXPECT_LE(memfd_limit, avail_kib * 1024 / 2 * 11 / 10);  // half of MemAvailable (or less, in a cgroup)
  EXPECT_GT(memfd_limit, 0u);
  struct statvfs st {};
  ASSERT_EQ(statvfs("/dev/shm", &st), 0);
  const double shm_half = static_cast<double>(st.f_bavail) * static_cast<double>(st.f_frsize) / 2;
  EXPECT_NEAR(static_cast<double>(SharedArena::default_limit(shoal::SegmentBacking::dev_shm)), shm_half,
              shm_half * 0.1 + (64 << 20));
  // SHOAL_ARENA_BACKING=shm asks for /dev/shm.
  setenv("SHOAL_ARENA_BACKING", "shm", 1);
  EXPECT_EQ(SharedArena::default_backing(), shoal::SegmentBacking::dev_shm);
  auto arena = SharedArena::create(64 * kMiB);
  EXPECT_EQ(arena->backing(), shoal::SegmentBacking::dev_shm);
  unsetenv("SHOAL_ARENA_BACKING");
  if (memfd_backed()) {
    EXPECT_EQ(SharedArena::create(64 * kMiB)->backing(), shoal::SegmentBacking::memfd);
    EXPECT_NEAR(static_cast<double>(SharedArena::default_limit()), static_cast<double>(memfd_limit),
                static_cast<double>(memfd_limit) * 0.1);
  }
}

// A descriptor number the owner has since reused for another file is not the
// segment: openers check the inode, and find it gone rather than map the wrong file.
TEST(ArenaMemfd, AnOwnerDescriptorNowNamingAnotherFileReadsAsGone) {
  SKIP_WITHOUT_MEMFD();
  auto arena = SharedArena::create(256 * kMiB);
  Block huge = arena->alloc(20 * kMiB);
  auto& slot = ArenaTestAccess::control(*arena).slots[huge.segment];
  const uint64_t ino = slot.file_ino.load();
  slot.file_ino.store(ino + 1);  // as if the owner's descriptor now named another file
  const std::string name = arena->name();
  ChildProcess child([&] {
    auto a = SharedArena::attach(name);
    try {
      a->try_retain(huge);
      return 2;
    } catch (const shoal::NotFoundError&) {
      return a->refcount(huge) == 1 ? 0 : 3;
    }
  });
  EXPECT_EQ(child.wait(30s), 0);
  slot.file_ino.store(ino);
  arena->release(huge);
  EXPECT_EQ(arena->used_bytes(), 0u);
}
