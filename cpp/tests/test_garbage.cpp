// Garbage in the pool's shared memory (issue 12): another process of the same
// user may write anything over the pool's segment (its header, a worker's
// outbox or inbox) or name any segment as a spilled payload. The engine must
// never crash: a corrupt header breaks the pool with a clear reason, a corrupt
// ring or frame fails over the one worker it belongs to (killed, replaced, its
// jobs retried or failed with worker_lost), every waiter wakes, shutdown
// returns. The garbage is written from a forked child process, as another
// program would (and out of the sanitizers' sight, as that program would be).
#include <gtest/gtest.h>
#include <stddef.h>
#include <signal.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <future>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "arena_test_access.hpp"
#include "child_process.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/base/fd.hpp"
#include "shoal/ipc/segment.hpp"
#include "shoal/mem/arena.hpp"
#include "shoal/wire/blob.hpp"
#include "shoal/engine/engine.hpp"
#include "engine_options.hpp"
#include "returns_within.hpp"
#include "shoal/engine/pool_layout.hpp"

using namespace std::chrono_literals;
using shoal::Completion;
using shoal::Deadline;
using shoal::Engine;
using shoal::EngineOptions;
using shoal::PoolLayout;
using shoal::SharedSegment;
using Status = shoal::proto::Status;
namespace proto = shoal::proto;

namespace {

using shoal_test::contains;
using shoal_test::eventually;
using shoal_test::options;
using shoal_test::returns_within;

constexpr uint32_t kCheck = 0x5a17f00dU;  // the ring's frame check word (ring.cpp)
constexpr const char* kCorrupted = "the pool's shared memory was corrupted";

// What a test collected from an engine: finished jobs by id, and log records.
struct Collected {
  std::map<uint64_t, Completion> done;
  std::vector<std::string> logs;

  // Takes one batch; false once the engine stopped and nothing is left.
  bool take(Engine& e) {
    std::vector<Completion> batch;
    const bool running = e.collect(batch, Deadline::after(50ms));
    for (auto& c : batch) {
      if (c.status == Status::log) {
        logs.push_back(c.payload);
        continue;
      }
      EXPECT_FALSE(done.count(c.job_id)) << "job " << c.job_id << " delivered twice";
      done[c.job_id] = std::move(c);
    }
    return running || !batch.empty();
  }
  bool has_log(const std::string& part) const {
    return std::any_of(logs.begin(), logs.end(), [&](const std::string& t) { return contains(t, part); });
  }
  bool has_log(const std::string& a, const std::string& b) const {
    return std::any_of(logs.begin(), logs.end(), [&](const std::string& t) { return contains(t, a) && contains(t, b); });
  }
  // Collects until every job in `ids` finished (or 30 s passed).
  void jobs(Engine& e, const std::vector<uint64_t>& ids) {
    const auto until = std::chrono::steady_clock::now() + 30s;
    auto missing = [&] {
      return std::any_of(ids.begin(), ids.end(), [&](uint64_t id) { return !done.count(id); });
    };
    while (missing() && std::chrono::steady_clock::now() < until)
      if (!take(e)) break;
    if (missing()) {
      auto st = e.stats();
      std::string m;
      for (uint64_t id : ids)
        if (!done.count(id)) m += " " + std::to_string(id) + (e.queued(id) ? "(queued)" : "");
      ADD_FAILURE() << "jobs never finished:" << m << "; pending " << st.pending << ", in flight " << st.in_flight
                    << ", workers started " << st.workers_started << ", lost " << st.workers_lost;
      for (const auto& l : logs) std::cerr << "  log: " << l << "\n";
    }
  }
  // Collects until a log record contains `part` (or 30 s passed).
  bool log(Engine& e, const std::string& part) {
    const auto until = std::chrono::steady_clock::now() + 30s;
    while (!has_log(part) && std::chrono::steady_clock::now() < until)
      if (!take(e)) break;
    return has_log(part);
  }
};

// The files the test worker's "sleep:<ms>:<path>" jobs leave: <path> as the
// job starts, <path>.done as it ends. A test waits for them to know that a
// worker runs a job, instead of sleeping and hoping it does.
class Markers {
 public:
  Markers() {
    static std::atomic<int> made{0};
    dir_ = std::filesystem::temp_directory_path() /
           ("shoal-garbage-" + std::to_string(getpid()) + "-" + std::to_string(made++));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  ~Markers() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  Markers(const Markers&) = delete;
  Markers& operator=(const Markers&) = delete;

  std::string path(int job) const { return (dir_ / std::to_string(job)).string(); }
  // The payload of a job that sleeps `ms` and leaves the markers of `job`.
  std::string sleep(int ms, int job) const { return "sleep:" + std::to_string(ms) + ":" + path(job); }
  bool started(int job) const { return std::filesystem::exists(path(job)); }
  bool ended(int job) const { return std::filesystem::exists(path(job) + ".done"); }
  // How many of jobs 0..n-1 run now. Each was seen started and then not yet
  // ended, so it ran all that time: jobs counted together run side by side,
  // each on a worker of its own.
  int running(int n) const {
    std::vector<int> seen;
    for (int j = 0; j < n; ++j)
      if (started(j)) seen.push_back(j);
    return static_cast<int>(std::count_if(seen.begin(), seen.end(), [&](int j) { return !ended(j); }));
  }
  // Forgets that `job` started (a job run again after a failover starts anew).
  void forget(int job) const { std::filesystem::remove(path(job)); }

 private:
  std::filesystem::path dir_;
};

// Where the rings of a slot lie in the pool's segment, learned from a valid layout.
struct RingOffsets {
  std::size_t inbox, outbox, capacity;
};
RingOffsets ring_offsets(const std::string& segment, uint32_t slot) {
  PoolLayout layout = PoolLayout::attach(segment);
  auto at = [&](const shoal::SpscRing& r) {
    return static_cast<std::size_t>(reinterpret_cast<std::byte*>(r.header()) - layout.segment().bytes());
  };
  return {at(layout.inbox(slot)), at(layout.outbox(slot)), layout.ring_capacity()};
}

// Runs `write(base, size)` in another process, over the pool's segment mapped there.
void scribble(const std::string& segment, const std::function<void(std::byte*, std::size_t)>& write) {
  shoal::testing::ChildProcess child([&] {
    SharedSegment seg = SharedSegment::attach(segment);
    write(seg.bytes(), seg.size());
    return 0;
  });
  ASSERT_TRUE(child.succeeded(10s)) << "the scribbling process failed";
}

void put_u64(std::byte* at, uint64_t v) { std::memcpy(at, &v, sizeof v); }
uint64_t get_u64(const std::byte* at) {
  uint64_t v;
  std::memcpy(&v, at, sizeof v);
  return v;
}

// The ring header's fields, by offset (RingHeader in ring.hpp).
constexpr std::size_t kHeadAt = offsetof(shoal::RingHeader, head);
constexpr std::size_t kTailAt = offsetof(shoal::RingHeader, tail);
constexpr std::size_t kRingData = (sizeof(shoal::RingHeader) + 63) & ~std::size_t{63};

// Writes a frame at the ring's read position and publishes it: a valid check
// word for `len` and `body` (up to len bytes) as the payload.
void plant_frame(std::byte* ring, std::size_t cap, uint32_t len, const void* body, std::size_t body_n,
                 std::size_t published) {
  const uint64_t tail = get_u64(ring + kTailAt);
  std::byte* data = ring + kRingData;
  const uint32_t header[2] = {len, len ^ kCheck};
  auto write_at = [&](uint64_t pos, const void* src, std::size_t n) {
    for (std::size_t k = 0; k < n; ++k) data[(pos + k) & (cap - 1)] = static_cast<const std::byte*>(src)[k];
  };
  write_at(tail, header, sizeof header);
  write_at(tail + 8, body, body_n);
  put_u64(ring + kHeadAt, tail + published);
}

enum class Pattern { all_ff, random, plausible, plausible_length };
const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::all_ff: return "AllFF";
    case Pattern::random: return "Random";
    case Pattern::plausible: return "Plausible";
    case Pattern::plausible_length: return "PlausibleLength";
  }
  return "?";
}

// Garbage of each pattern over one ring (its header, or frames at its read position).
void garble_ring(std::byte* ring, std::size_t cap, Pattern p, uint64_t seed, bool inbox) {
  std::mt19937_64 rng(seed);
  switch (p) {
    case Pattern::all_ff:
      std::memset(ring, 0xff, sizeof(shoal::RingHeader));
      return;
    case Pattern::random: {
      const uint64_t tail = get_u64(ring + kTailAt);
      for (std::size_t k = 0; k < 4096; ++k) ring[kRingData + ((tail + k) & (cap - 1))] = std::byte(rng() & 0xff);
      put_u64(ring + kHeadAt, tail + 8 * (1 + rng() % (cap / 8 - 1)));
      return;
    }
    case Pattern::plausible: {
      // A well-formed frame with a wrong FrameHeader: a result for a job
      // nobody sent (outbox), a job calling a function never defined (inbox).
      const proto::FrameHeader h = inbox ? proto::FrameHeader{proto::Kind::job, 0, 777, 424242}
                                         : proto::FrameHeader{proto::Kind::result, 0, 987654321, 5};
      plant_frame(ring, cap, sizeof h, &h, sizeof h, 8 + sizeof h);
      return;
    }
    case Pattern::plausible_length: {
      // Right check words, lengths that do not fit: longer than what is
      // published, then (if that is taken as valid) shorter than a FrameHeader.
      const proto::FrameHeader h{inbox ? proto::Kind::job : proto::Kind::result, 0, 1, 1};
      if (seed % 2)
        plant_frame(ring, cap, static_cast<uint32_t>(cap - 8), &h, sizeof h, 64);
      else
        plant_frame(ring, cap, 16, &h, 16, 24);
      return;
    }
  }
}

class GarbageTest : public ::testing::TestWithParam<Pattern> {};

std::string param_name(const ::testing::TestParamInfo<Pattern>& info) { return pattern_name(info.param); }

}  // namespace

// ---- the pool's header --------------------------------------------------------

TEST_P(GarbageTest, CorruptPoolHeaderBreaksThePoolAndWakesEveryWaiter) {
  Engine e(options(2));
  const uint64_t fn = e.define_function("f");
  std::vector<uint64_t> ids;
  for (int i = 0; i < 2; ++i) ids.push_back(e.submit(fn, 0, "sleep:20000"));
  for (int i = 0; i < 10; ++i) ids.push_back(e.submit(fn, 0, "echo:" + std::to_string(i)));
  auto waiter = std::async(std::launch::async, [&] {
    std::optional<Completion> got;
    e.wait_for(ids[0], Deadline::after(30s), got);
    return got;
  });
  std::mt19937_64 rng(99);
  scribble(e.segment_name(), [&](std::byte* base, std::size_t) {
    auto* h = reinterpret_cast<shoal::PoolHeader*>(base);
    switch (GetParam()) {
      case Pattern::all_ff: std::memset(base, 0xff, offsetof(shoal::PoolHeader, doorbell) + 8); break;
      case Pattern::random:
        for (std::size_t k = 0; k < offsetof(shoal::PoolHeader, doorbell) + 8; ++k) base[k] = std::byte(rng() & 0xff);
        break;
      case Pattern::plausible: h->slots = 3; break;           // one slot more than there is
      case Pattern::plausible_length: h->ring_bytes *= 4; break;  // rings bigger than they are
    }
  });
  std::optional<Completion> got = waiter.get();
  ASSERT_TRUE(got.has_value()) << "the waiter was not woken";
  EXPECT_EQ(got->status, Status::broken);
  EXPECT_TRUE(contains(got->payload, kCorrupted)) << got->payload;
  Collected c;
  c.done[ids[0]] = *got;
  c.jobs(e, ids);
  auto& done = c.done;
  ASSERT_EQ(done.size(), ids.size()) << "jobs were left waiting";
  for (uint64_t id : ids) {
    const Completion& j = done[id];
    EXPECT_TRUE(j.status == Status::ok || j.status == Status::broken) << int(j.status) << " " << j.payload;
    if (j.status == Status::broken) {
      EXPECT_TRUE(contains(j.payload, kCorrupted)) << j.payload;
    }
  }
  ASSERT_TRUE(e.broken().has_value());
  EXPECT_TRUE(contains(*e.broken(), kCorrupted)) << *e.broken();
  const bool geometry = GetParam() == Pattern::plausible || GetParam() == Pattern::plausible_length;
  EXPECT_TRUE(contains(*e.broken(), geometry ? "slots" : "magic number")) << *e.broken();
  EXPECT_TRUE(c.log(e, kCorrupted));
  const uint64_t later = e.submit(fn, 0, "echo:late");
  c.jobs(e, {later});
  ASSERT_TRUE(done.count(later));
  EXPECT_EQ(done[later].status, Status::broken);
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
  EXPECT_TRUE(e.worker_pids().empty());
}

// ---- a worker's outbox ----------------------------------------------------------

TEST_P(GarbageTest, CorruptOutboxFailsOverOnlyItsWorker) {
  Markers m;
  Engine e(options(2));
  const uint64_t fn = e.define_function("f");
  // Warm: both workers up, and which one is slot 0 known by its pid.
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(e.submit(fn, 0, m.sleep(300, i), /*retries=*/1));
  for (int i = 0; i < 4; ++i) ids.push_back(e.submit(fn, 0, "echo:" + std::to_string(i)));
  ASSERT_TRUE(eventually([&] { return e.worker_pids().size() == 2; }));
  ASSERT_TRUE(eventually([&] { return m.running(4) == 2; })) << "the first jobs never ran side by side";
  const RingOffsets at = ring_offsets(e.segment_name(), 0);
  scribble(e.segment_name(), [&](std::byte* base, std::size_t) {
    garble_ring(base + at.outbox, at.capacity, GetParam(), 5, false);
  });
  Collected c;
  ASSERT_TRUE(c.log(e, kCorrupted)) << "the corrupt outbox went unnoticed";
  c.jobs(e, ids);
  auto& done = c.done;
  ASSERT_EQ(done.size(), ids.size()) << "jobs were left waiting";
  int lost = 0;
  for (uint64_t id : ids) {
    const Completion& j = done[id];
    if (j.status == Status::worker_lost) {
      ++lost;
      EXPECT_TRUE(contains(j.payload, kCorrupted) || contains(j.payload, "exited")) << j.payload;
    } else {
      EXPECT_EQ(j.status, Status::ok) << j.payload;
    }
  }
  EXPECT_TRUE(c.has_log(kCorrupted, "outbox")) << "no log says the outbox was corrupt";
  // The pool goes on, with a replacement worker.
  EXPECT_FALSE(e.broken().has_value()) << *e.broken();
  std::vector<uint64_t> after;
  for (int i = 0; i < 8; ++i) after.push_back(e.submit(fn, 0, "echo:after" + std::to_string(i)));
  c.jobs(e, after);
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(done.count(after[i]));
    EXPECT_EQ(done[after[i]].status, Status::ok) << done[after[i]].payload;
    EXPECT_EQ(done[after[i]].payload, "after" + std::to_string(i));
  }
  EXPECT_GE(e.stats().workers_started, 3u);
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
}

// ---- a worker's inbox -------------------------------------------------------------

TEST_P(GarbageTest, CorruptInboxMakesItsWorkerExitAndOnlyItIsFailedOver) {
  Markers m;
  Engine e(options(2));
  const uint64_t fn = e.define_function("f");
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(e.submit(fn, 0, m.sleep(300, i), /*retries=*/1));
  ASSERT_TRUE(eventually([&] { return e.worker_pids().size() == 2; }));
  // Each worker runs one and has the next in its inbox.
  ASSERT_TRUE(eventually([&] { return m.running(4) == 2; })) << "the first jobs never ran side by side";
  const RingOffsets at = ring_offsets(e.segment_name(), 1);
  scribble(e.segment_name(), [&](std::byte* base, std::size_t) {
    garble_ring(base + at.inbox, at.capacity, GetParam(), 6, true);
  });
  for (int i = 0; i < 6; ++i) ids.push_back(e.submit(fn, 0, "echo:" + std::to_string(i)));  // pushes wake the worker
  Collected c;
  ASSERT_TRUE(c.log(e, kCorrupted)) << "the corrupt inbox went unnoticed";
  EXPECT_TRUE(c.has_log(kCorrupted, "inbox")) << "no log says the inbox was corrupt";
  c.jobs(e, ids);
  auto& done = c.done;
  ASSERT_EQ(done.size(), ids.size()) << "jobs were left waiting";
  for (uint64_t id : ids) {
    const Completion& j = done[id];
    EXPECT_TRUE(j.status == Status::ok || j.status == Status::worker_lost) << int(j.status) << " " << j.payload;
  }
  EXPECT_FALSE(e.broken().has_value()) << *e.broken();
  std::vector<uint64_t> after;
  for (int i = 0; i < 8; ++i) after.push_back(e.submit(fn, 0, "echo:after"));
  c.jobs(e, after);
  for (uint64_t id : after) {
    ASSERT_TRUE(done.count(id));
    EXPECT_EQ(done[id].status, Status::ok) << done[id].payload;
  }
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
}

INSTANTIATE_TEST_SUITE_P(Patterns, GarbageTest,
                         ::testing::Values(Pattern::all_ff, Pattern::random, Pattern::plausible,
                                           Pattern::plausible_length),
                         param_name);

// The same with spawned workers, and a waiter blocked on the failed-over job.
TEST(Garbage, CorruptOutboxWithSpawnedWorkersWakesTheWaiter) {
  Markers m;
  Engine e(options(1, false));
  const uint64_t fn = e.define_function("f");
  const uint64_t slow = e.submit(fn, 0, m.sleep(2000, 0));
  ASSERT_TRUE(eventually([&] { return e.worker_pids().size() == 1; }));
  std::atomic<bool> waiting{false};
  auto waiter = std::async(std::launch::async, [&] {
    std::optional<Completion> got;
    waiting = true;  // a waiter not blocked yet by the garbage still finds the job failed over
    e.wait_for(slow, Deadline::after(30s), got);
    return got;
  });
  ASSERT_TRUE(eventually([&] { return waiting.load() && m.started(0); })) << "the job never ran";
  const RingOffsets at = ring_offsets(e.segment_name(), 0);
  scribble(e.segment_name(), [&](std::byte* base, std::size_t) {
    garble_ring(base + at.outbox, at.capacity, Pattern::plausible, 1, false);
  });
  auto got = waiter.get();
  ASSERT_TRUE(got.has_value()) << "the waiter was not woken";
  EXPECT_EQ(got->status, Status::worker_lost);
  EXPECT_TRUE(contains(got->payload, kCorrupted)) << got->payload;
  EXPECT_TRUE(contains(got->payload, "987654321")) << got->payload;  // the job id nobody sent
  Collected c;
  const uint64_t next = e.submit(fn, 0, "echo:next");
  c.jobs(e, {next});
  ASSERT_TRUE(c.done.count(next));
  EXPECT_EQ(c.done[next].payload, "next");
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
}

// A ring header overwritten (magic, capacity) changes nothing for the two
// ends already attached, but a worker attaching to it would refuse it: when
// the slot's worker dies, the pool blames the garbage, not a worker that
// cannot start, and the slot gets freshly formatted rings.
TEST(Garbage, GarbageRingHeaderIsBlamedWhenItsWorkerDies) {
  Markers m;
  Engine e(options(1));
  const uint64_t fn = e.define_function("f");
  const uint64_t job = e.submit(fn, 0, m.sleep(20000, 0));
  ASSERT_TRUE(eventually([&] { return e.worker_pids().size() == 1; }));
  ASSERT_TRUE(eventually([&] { return m.started(0); })) << "the job never ran";  // its worker attached the rings
  const RingOffsets at = ring_offsets(e.segment_name(), 0);
  scribble(e.segment_name(), [&](std::byte* base, std::size_t) { put_u64(base + at.inbox, 0x0123456789abcdefULL); });
  kill(e.worker_pids().front(), SIGKILL);
  Collected c;
  c.jobs(e, {job});
  ASSERT_TRUE(c.done.count(job));
  EXPECT_EQ(c.done[job].status, Status::worker_lost);
  EXPECT_TRUE(contains(c.done[job].payload, kCorrupted)) << c.done[job].payload;
  EXPECT_TRUE(contains(c.done[job].payload, "inbox header")) << c.done[job].payload;
  const uint64_t next = e.submit(fn, 0, "echo:next");
  c.jobs(e, {next});
  ASSERT_TRUE(c.done.count(next));
  EXPECT_EQ(c.done[next].payload, "next");
  EXPECT_FALSE(e.broken().has_value());
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
}

// ---- random bytes over everything ---------------------------------------------------

TEST(Garbage, RandomBytesOverTheWholeSegmentNeverCrashTheEngine) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Markers m;
    Engine e(options(2));
    const uint64_t fn = e.define_function("f");
    std::vector<uint64_t> ids;
    for (int i = 0; i < 2; ++i) ids.push_back(e.submit(fn, 0, m.sleep(20000, i)));
    for (int i = 0; i < 50; ++i) ids.push_back(e.submit(fn, 0, "echo:" + std::to_string(i)));
    std::atomic<bool> waiting{false};
    auto waiter = std::async(std::launch::async, [&] {
      std::optional<Completion> got;
      waiting = true;
      e.wait_for(ids[1], Deadline::after(30s), got);
      return got;
    });
    // Both workers busy, and a waiter on one of their jobs.
    ASSERT_TRUE(eventually([&] { return waiting.load() && m.running(2) == 2; })) << "the jobs never ran";
    scribble(e.segment_name(), [&](std::byte* base, std::size_t size) {
      std::mt19937_64 rng(seed);
      for (std::size_t k = 0; k + 8 <= size; k += 8) put_u64(base + k, rng());
    });
    std::optional<Completion> got = waiter.get();
    ASSERT_TRUE(got.has_value()) << "the waiter was not woken";
    Collected c;
    c.done[ids[1]] = *got;
    c.jobs(e, ids);
    EXPECT_EQ(c.done.size(), ids.size()) << "jobs were left waiting";
    ASSERT_TRUE(e.broken().has_value());
    EXPECT_TRUE(contains(*e.broken(), kCorrupted)) << *e.broken();
    EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
  }
}

// ---- garbage that keeps coming ------------------------------------------------------

TEST(Garbage, OutboxCorruptedAgainAndAgainBreaksThePoolInsteadOfReplacingWorkersForEver) {
  Markers m;
  Engine e(options(1));
  const uint64_t fn = e.define_function("f");
  const uint64_t job = e.submit(fn, 0, m.sleep(20000, 0), /*retries=*/100);
  for (uint64_t round = 1; round <= 3; ++round) {
    ASSERT_TRUE(eventually([&] { return e.stats().workers_started >= round && e.worker_pids().size() == 1; }));
    // The job runs (again, on the replacement worker): the last worker, killed, made no marker since.
    ASSERT_TRUE(eventually([&] { return m.started(0); })) << "the job never ran in round " << round;
    m.forget(0);
    const RingOffsets at = ring_offsets(e.segment_name(), 0);
    scribble(e.segment_name(), [&](std::byte* base, std::size_t) {
      garble_ring(base + at.outbox, at.capacity, Pattern::random, round, false);
    });
    ASSERT_TRUE(eventually([&] { return e.stats().workers_lost >= round || e.broken().has_value(); }));
  }
  ASSERT_TRUE(eventually([&] { return e.broken().has_value(); }));
  EXPECT_TRUE(contains(*e.broken(), kCorrupted)) << *e.broken();
  EXPECT_TRUE(contains(*e.broken(), "3 times in a row")) << *e.broken();
  Collected c;
  c.jobs(e, {job});
  ASSERT_TRUE(c.done.count(job));
  EXPECT_EQ(c.done[job].status, Status::broken);
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
}

// ---- spilled payloads a frame names -------------------------------------------------

// A result that claims to be spilled into a segment that is not a spill (the
// pool's own segment, a segment of the arena, a name of another form) fails
// over its worker; no such segment is read as a payload or unlinked.
TEST(Garbage, SpilledResultNamingAnotherSegmentIsNeverReadOrUnlinked) {
  Engine e(options(1));
  const uint64_t fn = e.define_function("f");
  SharedSegment other = SharedSegment::create(1 << 16);  // ours, of the right name form, no spill
  std::memset(other.data(), 0x5a, other.size());
  const std::string spill_like = shoal::spill_for(getpid(), "a spill whose length word lies");
  {
    auto seg = SharedSegment::attach(spill_like);
    put_u64(seg.bytes() + 8, 1 << 20);  // more than the segment holds
  }
  const std::vector<std::string> names = {e.segment_name(), other.name(), "../../etc/passwd",
                                          "shoal-" + std::to_string(getpid()) + "-zzzzzzzzzzzzzzzz", spill_like};
  Collected c;
  auto& done = c.done;
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    const uint64_t id = e.submit(fn, 0, "spill-name:" + name);
    c.jobs(e, {id});
    ASSERT_TRUE(done.count(id));
    EXPECT_EQ(done[id].status, Status::worker_lost);
    EXPECT_TRUE(contains(done[id].payload, kCorrupted)) << done[id].payload;
    EXPECT_TRUE(contains(done[id].payload, "spilled payload")) << done[id].payload;
    ASSERT_FALSE(e.broken().has_value()) << *e.broken();
    // A result in between: corruption that does not keep coming never breaks the pool.
    const uint64_t fine = e.submit(fn, 0, "echo:fine");
    c.jobs(e, {fine});
    ASSERT_TRUE(done.count(fine));
    EXPECT_EQ(done[fine].status, Status::ok) << done[fine].payload;
  }
  EXPECT_TRUE(std::filesystem::exists("/dev/shm/" + e.segment_name()));
  EXPECT_TRUE(std::filesystem::exists("/dev/shm/" + other.name()));
  EXPECT_FALSE(std::filesystem::exists("/dev/shm/" + spill_like));  // a spill: read no further, but removed
  // A real spill still works, on a replacement worker.
  const std::string big(e.inline_payload_limit() * 2, 'b');
  const uint64_t fine = e.submit(fn, 0, "echo:" + big);
  c.jobs(e, {fine});
  ASSERT_TRUE(done.count(fine));
  EXPECT_EQ(done[fine].status, Status::ok);
  EXPECT_EQ(done[fine].payload, big);
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
}

// ---- what a worker checks ---------------------------------------------------------

TEST(Garbage, PoolLayoutAttachRefusesAHeaderThatDoesNotFitItsSegment) {
  PoolLayout layout = PoolLayout::create(2, 4096);
  EXPECT_FALSE(layout.header_fault().has_value());
  auto& h = layout.header();
  struct Fields {
    uint64_t magic;
    uint32_t version, slots;
    uint64_t ring_bytes, segment_bytes;
  };
  const Fields saved{h.magic, h.version, h.slots, h.ring_bytes, h.segment_bytes};
  auto restore = [&] {
    h.magic = saved.magic;
    h.version = saved.version;
    h.slots = saved.slots;
    h.ring_bytes = saved.ring_bytes;
    h.segment_bytes = saved.segment_bytes;
  };
  for (int field = 0; field < 5; ++field) {
    restore();
    switch (field) {
      case 0: h.magic ^= 1; break;
      case 1: h.version = 99; break;
      case 2: h.slots = 0xffffffff; break;
      case 3: h.ring_bytes = uint64_t{1} << 39; break;
      case 4: h.segment_bytes = 1; break;
    }
    EXPECT_THROW(PoolLayout::attach(layout.segment().name()), shoal::CorruptFrameError) << field;
    const auto fault = layout.header_fault();
    ASSERT_TRUE(fault.has_value()) << field;
  }
  restore();
  EXPECT_FALSE(layout.header_fault().has_value());
  EXPECT_NO_THROW(PoolLayout::attach(layout.segment().name()));
  // The geometry is the layout's own: garbage in the header moves no ring.
  auto* before = layout.outbox(1).header();
  h.ring_bytes = 1 << 30;
  h.slots = 7;
  EXPECT_EQ(layout.outbox(1).header(), before);
  EXPECT_EQ(layout.slots(), 2u);
}

TEST(Garbage, SpillNamesMustBeOfThePoolsForm) {
  const pid_t me = getpid();
  const std::string ok = "shoal-" + std::to_string(me) + "-0123456789abcdef";
  EXPECT_TRUE(shoal::is_spill_name(ok, me));
  EXPECT_FALSE(shoal::is_spill_name(ok, me + 1));
  EXPECT_FALSE(shoal::is_spill_name(ok + "0", me));
  EXPECT_FALSE(shoal::is_spill_name("shoal-" + std::to_string(me) + "-0123456789ABCDEF", me));
  EXPECT_FALSE(shoal::is_spill_name("shoal-" + std::to_string(me) + "-0123456789abcde/", me));
  EXPECT_FALSE(shoal::is_spill_name("", me));
  EXPECT_FALSE(shoal::is_spill_name(std::string("shoal-1-0123456789abcdef\0", 25), 1));
}

// ---- the arena's metadata -------------------------------------------------------
//
// The pool's SharedArena lives in shared memory too: its control block (fixed
// fields, counters, free-list heads, the mutex), its slot table (each
// segment's kind, name, size, memfd number and inode), the header in front of
// every block of a pooled segment, and the block descriptors that travel in
// payloads. Garbage in any of them must end in an exception (CorruptFrameError
// naming the arena, or std::invalid_argument for a descriptor that names
// nothing live), never in SIGSEGV, SIGBUS, an abort or a hang. The garbage is
// written by a forked child, through the mappings it shares with the parent.

namespace {

using shoal::ArenaTestAccess;
using shoal::Block;
using shoal::CorruptFrameError;
using shoal::SharedArena;
using shoal::SegmentBacking;
namespace ad = shoal::arena_detail;

constexpr std::size_t kKiB = 1024, kMiB = 1024 * 1024;
constexpr const char* kArenaCorrupted = "was corrupted";

// Runs `write` in another process (a fork: it writes through the mappings it shares with us).
void scribble_arena(const std::function<void()>& write) {
  shoal::testing::ChildProcess child([&] {
    write();
    return 0;
  });
  ASSERT_TRUE(child.succeeded(10s)) << "the scribbling process failed";
}

// Shortens what a corrupt lock or an unanswered handoff costs, for one test.
struct ShortWaits {
  ShortWaits() {
    ArenaTestAccess::set_lock_timeout(50ms);
    ArenaTestAccess::set_handoff_timeout(200ms);
  }
  ~ShortWaits() {
    ArenaTestAccess::set_lock_timeout(30s);
    ArenaTestAccess::set_handoff_timeout(10s);
  }
};

// The names in /dev/shm that carry `pid`.
std::set<std::string> names_of(pid_t pid) {
  std::set<std::string> names;
  const std::string prefix = "shoal-" + std::to_string(pid) + "-";
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) {
    std::string name = entry.path().filename().string();
    if (name.starts_with(prefix)) names.insert(name);
  }
  return names;
}

// What became of the calls of one exercise.
struct Outcome {
  int calls = 0, corrupt = 0, other = 0, unexpected = 0;
  std::vector<std::string> unclear;  // CorruptFrameErrors that do not say what they are
};

template <class F>
void attempt(Outcome& o, F f) {
  ++o.calls;
  try {
    f();
  } catch (const CorruptFrameError& e) {
    ++o.corrupt;
    // "... was corrupted: <what>", or (a header that is none: garbage, or a stale descriptor) "... overwritten ..."
    if (!contains(e.what(), "shared-memory arena") || (!contains(e.what(), kArenaCorrupted) && !contains(e.what(), "overwritten")))
      o.unclear.push_back(e.what());
  } catch (const std::exception&) {
    ++o.other;
  } catch (...) {
    ++o.unexpected;
  }
}

// Everything a process does with an arena, on fresh allocations and on the
// blocks `held` (this process holds a reference on each, or did before the
// garbage): any call may throw, none may crash or hang.
Outcome exercise(SharedArena& a, const std::vector<Block>& held, uint64_t seed) {
  Outcome o;
  std::mt19937_64 rng(seed);
  for (std::size_t size : {std::size_t{100}, 100 * kKiB, a.segment_bytes() / 4 + 1}) {
    attempt(o, [&] {
      Block b = a.alloc(size, rng() % 2 == 0);
      std::memset(a.data(b), 0x5a, b.size);
      attempt(o, [&] {
        a.retain(b);
        a.release(b);
      });
      attempt(o, [&] { (void)a.map_private(b, 0, std::min<std::size_t>(b.size, 8192)); });
      a.release(b);
    });
  }
  for (const Block& b : held) {
    attempt(o, [&] {
      if (a.try_retain(b)) a.release(b);
    });
    attempt(o, [&] {
      a.retain(b);
      a.release(b);
    });
    attempt(o, [&] { (void)a.refcount(b); });
    attempt(o, [&] {
      volatile std::byte* p = a.data(b);
      (void)p[0];
      (void)p[b.size - 1];
    });
    attempt(o, [&] {
      auto m = a.map_private(b, 0, std::min<std::size_t>(b.size, 3 * 4096));
      volatile std::byte* p = m.data();
      (void)p[m.size() - 1];
    });
  }
  attempt(o, [&] { (void)a.check(); });
  attempt(o, [&] {
    (void)a.segment_count();
    (void)a.used_bytes();
    (void)a.closed();
  });
  return o;
}

// An arena as a pool's is after a while: pooled blocks of several sizes, some
// freed (so the free lists hold blocks), a huge block with a segment of its
// own, a second pooled segment.
struct Populated {
  std::shared_ptr<SharedArena> arena;
  std::vector<Block> held;
  explicit Populated(SegmentBacking backing = SegmentBacking::automatic) {
    arena = SharedArena::create(256 * kMiB, 4 * kMiB, backing);
    std::vector<Block> freed;
    for (int i = 0; i < 24; ++i) {
      Block b = arena->alloc(std::size_t{1000} << (i % 8));
      std::memset(arena->data(b), i, b.size);
      (i % 3 == 0 ? freed : held).push_back(b);
    }
    for (int i = 0; i < 4; ++i) held.push_back(arena->alloc(1000 * kKiB));  // the fourth: a second segment
    held.push_back(arena->alloc(3 * kMiB));  // a huge block (past a quarter of 4 MiB)
    for (const Block& b : freed) arena->release(b);
  }
  ad::Control& control() const { return ArenaTestAccess::control(*arena); }
  ad::BlockHeader* header(const Block& b) const { return ArenaTestAccess::header(*arena, b); }
  const Block& huge() const { return held.back(); }
};

void expect_clean(const Outcome& o, const std::string& what) {
  EXPECT_EQ(o.unexpected, 0) << what << ": a call threw something that is no std::exception";
  EXPECT_TRUE(o.unclear.empty()) << what << ": " << (o.unclear.empty() ? "" : o.unclear.front());
}

// The same exercise in a process that attaches the arena afresh (and never
// mapped its segments): it must exit normally, whatever it met.
void expect_another_process_survives(Populated& p, uint64_t seed, const std::string& what) {
  shoal::testing::ChildProcess child([&] {
    std::shared_ptr<SharedArena> a;
    try {
      a = SharedArena::attach(p.arena->name());
    } catch (const std::exception&) {  // refused at attach: fine
      return 0;
    }
    const Outcome o = exercise(*a, p.held, seed);
    return o.unexpected == 0 && o.unclear.empty() ? 0 : 3;
  });
  const int status = child.wait(60s);
  ASSERT_NE(status, -1) << what << ": another process hung";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << what << ": another process " << (WIFSIGNALED(status) ? "died of signal " + std::to_string(WTERMSIG(status))
                                                            : "exited with " + std::to_string(WEXITSTATUS(status)));
}

}  // namespace

TEST(ArenaGarbage, AControlBlockOverwrittenFailsEveryLockedCallWithAClearError) {
  ShortWaits short_waits;
  Populated p;
  ad::Control& c = p.control();
  const ad::Control* saved = &c;
  const uint64_t magic = saved->magic, limit = saved->limit_bytes, seg = saved->segment_bytes;
  const uint32_t version = saved->version, backing = saved->backing;
  const int32_t owner = saved->owner_pid;
  for (int field = 0; field < 6; ++field) {
    SCOPED_TRACE("field " + std::to_string(field));
    scribble_arena([&] {
      switch (field) {
        case 0: c.magic = 0x0123456789abcdefULL; break;
        case 1: c.version = 77; break;
        case 2: c.limit_bytes = ~uint64_t{0}; break;
        case 3: c.segment_bytes = 4096; break;
        case 4: c.owner_pid = 1; break;
        case 5: c.backing = 9; break;
      }
    });
    try {
      p.arena->alloc(100);
      ADD_FAILURE() << "alloc went on over a corrupt control block";
    } catch (const CorruptFrameError& e) {
      EXPECT_TRUE(contains(e.what(), kArenaCorrupted)) << e.what();
      EXPECT_TRUE(contains(e.what(), p.arena->name())) << e.what();
      EXPECT_TRUE(contains(e.what(), "control block")) << e.what();
    }
    EXPECT_THROW(p.arena->check(), CorruptFrameError);
    EXPECT_THROW(p.arena->try_retain(p.held.front()), CorruptFrameError);
    // A new handle refuses it outright where the field cannot be right (a limit
    // or a segment size could be: they are checked against the segments).
    if (field != 2 && field != 3) {
      shoal::testing::ChildProcess other([&] {
        try {
          SharedArena::attach(p.arena->name());
        } catch (const std::exception&) {
          return 0;
        }
        return 1;
      });
      EXPECT_TRUE(other.succeeded(30s)) << "another process attached a corrupt arena";
    }
    expect_another_process_survives(p, field, "control field " + std::to_string(field));
    // Calls that need no lock, on blocks already mapped, read no control field and go on.
    const Block& b = p.held.front();
    p.arena->retain(b);
    EXPECT_EQ(p.arena->refcount(b), 2u);
    p.arena->release(b);
    c.magic = magic;
    c.version = version;
    c.limit_bytes = limit;
    c.segment_bytes = seg;
    c.owner_pid = owner;
    c.backing = backing;
    EXPECT_NO_THROW(p.arena->release(p.arena->alloc(100)));
    EXPECT_EQ(p.arena->check(), "");
  }
}

TEST(ArenaGarbage, GarbageInTheFreeListsAndCountersIsRebuiltFromTheHeadersAndAllocationGoesOn) {
  for (int what = 0; what < 6; ++what) {
    SCOPED_TRACE("case " + std::to_string(what));
    Populated p;
    const uint64_t before = p.arena->recoveries();
    ad::Control& c = p.control();
    std::byte* seg0 = ArenaTestAccess::pooled_base(*p.arena, 0);
    ASSERT_NE(seg0, nullptr);
    scribble_arena([&] {
      std::mt19937_64 rng(what);
      switch (what) {
        case 0:  // every list head anywhere
          for (auto& b : c.bins) b = rng();
          break;
        case 1:  // heads inside the segment, at offsets that are no headers
          for (auto& b : c.bins) b = ad::block_ref(0, 64 * (1 + rng() % 1000));
          break;
        case 2:  // heads naming slots past the table, or the huge block's slot
          for (int b = 0; b < ad::kBins; ++b) c.bins[b] = ad::block_ref(b % 2 ? 5000 : p.huge().segment, 0);
          break;
        case 3:  // the counters past the limit
          c.used_bytes = ~uint64_t{0} - 5;
          c.pooled_bytes = ~uint64_t{0} - 5;
          break;
        case 4:  // each listed block's next link to itself (a cycle), its bin out of range
          for (int b = 0; b < ad::kBins; ++b)
            if (c.bins[b] != ad::kNil && ad::ref_slot(c.bins[b]) == 0) {
              auto* h = reinterpret_cast<ad::BlockHeader*>(seg0 + ad::ref_offset(c.bins[b]));
              h->next_free = c.bins[b];
              h->prev_free = c.bins[b];
              h->bin = 1000;
            }
          break;
        case 5:  // the next generation 0, the recovering word set
          c.next_generation = 0;
          c.recovering = 0xdead;
          break;
      }
    });
    std::vector<Block> got;
    for (int i = 0; i < 20; ++i) {
      ASSERT_NO_THROW(got.push_back(p.arena->alloc(std::size_t{900} << (i % 6))));
      EXPECT_NE(got.back().generation, 0u);
      std::memset(p.arena->data(got.back()), 1, got.back().size);
    }
    for (const Block& b : got) p.arena->release(b);
    EXPECT_GT(p.arena->recoveries(), before) << "the garbage was used as it was";
    for (const Block& b : p.held) EXPECT_EQ(p.arena->refcount(b), 1u);
    EXPECT_EQ(p.arena->check(), "");
  }
}

TEST(ArenaGarbage, AnOverwrittenBlockHeaderFailsOnlyThatBlock) {
  for (int field = 0; field < 6; ++field) {
    SCOPED_TRACE("field " + std::to_string(field));
    Populated p;
    const Block victim = p.held[1], other = p.held[2];
    ASSERT_FALSE(victim.dedicated());
    scribble_arena([&] {
      ad::BlockHeader* h = p.header(victim);
      switch (field) {
        case 0: h->state = 0x1234; break;            // neither used nor free
        case 1: h->span = 1; break;                  // a span no block has
        case 2: h->span = uint64_t{1} << 50; break;  // past the segment
        case 3: h->generation = victim.generation + 1; break;
        case 4: h->refs = 0xffffffffu; break;        // one more would overflow
        case 5: std::memset(static_cast<void*>(h), 0xff, sizeof *h); break;
      }
    });
    if (field == 4) {
      EXPECT_THROW(p.arena->retain(victim), CorruptFrameError);
      EXPECT_THROW(p.arena->try_retain(victim), CorruptFrameError);
      EXPECT_EQ(p.arena->refcount(victim), 0xffffffffu);
    } else {
      EXPECT_ANY_THROW(p.arena->retain(victim));
      EXPECT_ANY_THROW(p.arena->release(victim));
      bool took = false;
      try {
        took = p.arena->try_retain(victim);  // false (no such block), or CorruptFrameError
      } catch (const CorruptFrameError&) {
      }
      EXPECT_FALSE(took);
      try {
        p.arena->refcount(victim);
        ADD_FAILURE() << "no error";
      } catch (const CorruptFrameError& e) {  // the header's words garbled
        EXPECT_TRUE(field <= 2 || field == 5) << e.what();
        EXPECT_TRUE(contains(e.what(), "header")) << e.what();
      } catch (const std::invalid_argument& e) {  // only the generation garbled: the block reads as gone
        EXPECT_EQ(field, 3) << e.what();
      }
    }
    // Every other block, and the allocator, go on.
    p.arena->retain(other);
    EXPECT_EQ(p.arena->refcount(other), 2u);
    p.arena->release(other);
    for (int i = 0; i < 10; ++i) p.arena->release(p.arena->alloc(5000));
    if (field != 3 && field != 4) {  // a generation or a count is no invariant check() can judge
      EXPECT_NE(p.arena->check(), "") << "check() did not see the garbage";
    }
  }
}

TEST(ArenaGarbage, ABlockFreedNextToAGarbledFreeNeighbourIsNotMergedWithIt) {
  for (int what = 0; what < 3; ++what) {
    SCOPED_TRACE("case " + std::to_string(what));
    auto arena = SharedArena::create(64 * kMiB, 4 * kMiB);
    Block keep = arena->alloc(100);
    Block a = arena->alloc(4000), b = arena->alloc(4000);
    Block after = arena->alloc(100);
    ASSERT_EQ(b.segment, a.segment);
    ASSERT_EQ(b.offset, a.offset + 4032 + 64);
    arena->release(b);  // a's neighbour is now free
    scribble_arena([&] {
      auto* n = reinterpret_cast<ad::BlockHeader*>(arena->data(a) + 4032);
      auto* h = reinterpret_cast<ad::BlockHeader*>(arena->data(a) - 64);
      switch (what) {
        case 0: n->span = 3; break;  // no span a block can have
        case 1: n->next_free = 0x42; n->prev_free = ad::block_ref(7, 64); break;  // links to nowhere
        case 2: h->prev_span = 64 * 3; break;  // a boundary tag naming no block
      }
    });
    EXPECT_NO_THROW(arena->release(a));
    std::vector<Block> got;
    for (int i = 0; i < 10; ++i) ASSERT_NO_THROW(got.push_back(arena->alloc(100 + 1000 * i)));
    for (const Block& g : got) arena->release(g);
    EXPECT_EQ(arena->refcount(keep), 1u);
    EXPECT_EQ(arena->refcount(after), 1u);
    if (what != 0) {  // the derived garbage is gone; a bad span is authoritative, and stays out of use
      EXPECT_EQ(arena->check(), "");
    }
  }
}

TEST(ArenaGarbage, AnOverwrittenSlotTableIsNeverReadPastItsEnd) {
  ShortWaits short_waits;
  for (int field = 0; field < 7; ++field) {
    SCOPED_TRACE("field " + std::to_string(field));
    Populated p;
    const Block huge = p.huge();
    ASSERT_TRUE(huge.dedicated());
    ad::Control& c = p.control();
    scribble_arena([&] {
      ad::SlotRecord& s = c.slots[huge.segment];
      switch (field) {
        case 0: c.slot_count = 0xfffffff0u; break;               // past the table
        case 1: std::memset(s.name, 'x', sizeof s.name); break;  // no NUL, not of the arena's form
        case 2: s.bytes = uint64_t{1} << 60; break;
        case 3: s.bytes = 0; break;
        case 4: s.kind = 77; break;
        case 5: s.owner_fd = 0; s.file_ino = 12345; break;  // another descriptor, another file
        case 6: c.slots[0].bytes = 1000; break;             // a pooled segment shorter than a page
      }
    });
    const Outcome o = exercise(*p.arena, p.held, field);
    expect_clean(o, "this process");
    expect_another_process_survives(p, field + 100, "slot garbage " + std::to_string(field));
    if (field == 0) {
      try {
        p.arena->alloc(5 * kMiB);  // a huge block: needs a new slot
        ADD_FAILURE() << "a slot was claimed past a corrupt slot count";
      } catch (const CorruptFrameError& e) {
        EXPECT_TRUE(contains(e.what(), "slot count")) << e.what();
      }
      EXPECT_EQ(p.arena->segment_count(), 3u);  // read up to the table's end only
    }
  }
}

TEST(ArenaGarbage, ASlotsNameOfAnotherFormIsNeverOpenedOrUnlinked) {
  ShortWaits short_waits;
  // /dev/shm backing, where segments are reached by name: a slot's name turned
  // into that of some other program's segment.
  const std::string victim = "shoal-test-victim-" + std::to_string(getpid());
  {
    shoal::UniqueFd fd(shm_open(("/" + victim).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600));
    ASSERT_TRUE(fd);
    ASSERT_EQ(ftruncate(fd.get(), 3 * kMiB), 0);
  }
  std::string real_name;
  {
    Populated p(SegmentBacking::dev_shm);
    ad::SlotRecord& s = p.control().slots[p.huge().segment];
    real_name = s.name;
    scribble_arena([&] {
      std::memset(s.name, 0, sizeof s.name);
      std::memcpy(s.name, victim.data(), victim.size());
    });
    shoal::testing::ChildProcess child([&] {
      auto a = SharedArena::attach(p.arena->name());
      try {
        a->try_retain(p.huge());
        return 5;  // the victim was opened as the huge block's segment
      } catch (const CorruptFrameError& e) {
        return contains(e.what(), "not of the arena's form") ? 0 : 6;
      } catch (const std::exception&) {
        return 7;
      }
    });
    EXPECT_TRUE(child.succeeded(30s));
    p.arena->release(p.huge());  // frees the slot: its name is not removed, being no name of ours
  }  // and the arena's close does not remove it either
  EXPECT_TRUE(std::filesystem::exists("/dev/shm/" + victim)) << "garbage made the arena unlink another segment";
  shm_unlink(("/" + victim).c_str());
  // The huge block's own segment lost its name in the slot table: it stays
  // until reclaimed (this test removes it).
  EXPECT_TRUE(std::filesystem::exists("/dev/shm/" + real_name));
  shm_unlink(("/" + real_name).c_str());
  // A name of the arena's form that is not the slot's segment (another of
  // ours, smaller than the slot says) is opened, but never mapped past its end.
  {
    Populated p(SegmentBacking::dev_shm);
    SharedSegment small = SharedSegment::create(4096);
    ad::SlotRecord& s = p.control().slots[p.huge().segment];
    real_name = s.name;
    scribble_arena([&] { std::memcpy(s.name, small.name().data(), small.name().size() + 1); });
    shoal::testing::ChildProcess child([&] {
      auto a = SharedArena::attach(p.arena->name());
      try {
        if (!a->try_retain(p.huge())) return 8;
        volatile std::byte* at = a->data(p.huge());
        (void)at[p.huge().size - 1];  // past the 4 KiB file: SIGBUS
        return 5;
      } catch (const std::invalid_argument& e) {
        return contains(e.what(), "outside its segment") ? 0 : 6;
      } catch (const std::exception&) {
        return 7;
      }
    });
    EXPECT_TRUE(child.succeeded(30s));
    small.unlink();
    shm_unlink(("/" + real_name).c_str());
  }
}

TEST(ArenaGarbage, AnOverwrittenMutexFailsCallsInsteadOfAbortingOrHanging) {
  ShortWaits short_waits;
  for (int what = 0; what < 4; ++what) {
    SCOPED_TRACE("case " + std::to_string(what));
    Populated p;
    auto* m = reinterpret_cast<pthread_mutex_t*>(&p.control().mutex);
    const uint64_t recoveries = p.arena->recoveries();
    scribble_arena([&] {
      std::mt19937_64 rng(what);
      switch (what) {
        case 0:  // random bytes over all of it
          for (std::size_t k = 0; k < sizeof *m; ++k) reinterpret_cast<std::byte*>(m)[k] = std::byte(rng() & 0xff);
          break;
        case 1:  // robust + priority inheritance, "held" by a thread that does not exist:
                 // glibc asserts (aborts) when it meets that
          m->__data.__kind = 16 | 32 | 128 | 2;  // ROBUST | PRIO_INHERIT | PSHARED | ERRORCHECK
          m->__data.__lock = 0x3ffffff0;
          break;
        case 2:  // held by a thread that does not exist; the type word intact
          m->__data.__lock = 0x3ffffff0;
          break;
        case 3:  // its holder died (the kernel's mark): the next locker recovers
          m->__data.__lock = 0x40000000;
          break;
      }
    });
    if (what == 3) {
      EXPECT_NO_THROW(p.arena->release(p.arena->alloc(100)));
      EXPECT_GT(p.arena->recoveries(), recoveries);
      EXPECT_EQ(p.arena->check(), "");
      continue;
    }
    try {
      p.arena->alloc(100);
      ADD_FAILURE() << "alloc went on";
    } catch (const CorruptFrameError& e) {
      EXPECT_NE(what, 2) << e.what();
      EXPECT_TRUE(contains(e.what(), "lock")) << e.what();
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(what, 2) << e.what();
      EXPECT_TRUE(contains(e.what(), "timed out")) << e.what();
    }
    const Outcome o = exercise(*p.arena, p.held, what);
    expect_clean(o, "this process");
    expect_another_process_survives(p, what + 10, "mutex garbage");
  }  // and the arena goes without waiting long for the mutex
}

TEST(ArenaGarbage, DescriptorsWithRandomFieldsNeverTouchALiveBlock) {
  Populated p;
  SharedArena& a = *p.arena;
  std::mt19937_64 rng(7);
  auto names_a_held_block = [&](const Block& d) {
    return std::any_of(p.held.begin(), p.held.end(), [&](const Block& h) {
      return h.segment == d.segment && h.dedicated() == d.dedicated() && h.offset == d.offset &&
             h.generation == d.generation;
    });
  };
  int refused = 0;
  for (int i = 0; i < 4000; ++i) {
    Block d;
    if (i % 2 == 0) {  // all fields random, from wild to near-plausible
      d.segment = rng() % 3 == 0 ? static_cast<uint32_t>(rng()) : static_cast<uint32_t>(rng() % 8);
      d.flags = static_cast<uint32_t>(rng() % 4);
      d.offset = rng() % 2 ? rng() : 64 * (rng() % 200000);
      d.size = rng() % 2 ? rng() : rng() % 100000;
      d.generation = rng() % 2 ? rng() : rng() % 64;
    } else {  // a live block's descriptor with one field changed
      d = p.held[rng() % p.held.size()];
      switch (rng() % 6) {
        case 0: d.segment = static_cast<uint32_t>(rng() % 2 ? rng() : d.segment + 1 + rng() % 4); break;
        case 1: d.flags ^= Block::kDedicated; break;
        case 2: d.offset = rng() % 2 ? rng() : d.offset + 64 * (1 + rng() % 64); break;
        case 3: d.size = (uint64_t{1} << 40) + rng() % (uint64_t{1} << 60); break;  // past any block
        case 4: d.generation += 1 + rng() % 1000; break;
        case 5: d.generation = 0; break;
      }
    }
    if (names_a_held_block(d)) continue;
    SCOPED_TRACE(std::to_string(d.segment) + "/" + std::to_string(d.flags) + "/" + std::to_string(d.offset) + "/" +
                 std::to_string(d.size) + "/" + std::to_string(d.generation));
    bool took = false;
    try {
      took = a.try_retain(d);
    } catch (const std::exception&) {
    }
    EXPECT_FALSE(took) << "try_retain took a reference through garbage";
    if (took) a.release(d);
    EXPECT_ANY_THROW(a.retain(d));
    EXPECT_ANY_THROW(a.release(d));
    EXPECT_ANY_THROW(a.release_disowned(d));
    EXPECT_ANY_THROW(a.refcount(d));
    try {  // local bookkeeping only: a pooled segment's bytes are in bounds, or refused
      a.adopt(d);
      try {
        volatile std::byte* at = a.data(d);
        if (d.size > 0) (void)at[d.size - 1];
        (void)a.hold_mapping(d);
        auto m = a.map_private(d, 0, std::min<std::size_t>(d.size, 8192));
        if (m.valid()) (void)static_cast<volatile std::byte*>(m.data())[m.size() - 1];
      } catch (const std::exception&) {
      }
      a.disown(d);
    } catch (const std::exception&) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 100);
  for (const Block& h : p.held) EXPECT_EQ(a.refcount(h), 1u);
  EXPECT_EQ(a.check(), "");
}

namespace {

// Garbage of one kind over the arena of `p`, chosen by `seed`; says what it did.
std::string garble_at_random(Populated& p, uint64_t seed) {
  std::mt19937_64 rng(seed * 7919 + 17);
  ad::Control& c = p.control();
  auto value = [&]() -> uint64_t {
    switch (rng() % 6) {
      case 0: return 0;
      case 1: return 1;
      case 2: return ~uint64_t{0};
      case 3: return rng();
      case 4: return rng() % 4096;
      default: return rng() % (uint64_t{1} << 40);
    }
  };
  auto* base = reinterpret_cast<std::byte*>(&c);
  const std::size_t mutex_at = reinterpret_cast<std::byte*>(&c.mutex) - base;
  const std::size_t mutex_end = mutex_at + sizeof c.mutex;
  const std::size_t slots_at = reinterpret_cast<std::byte*>(&c.slots[0]) - base;
  std::vector<Block> pooled;
  for (const Block& b : p.held)
    if (!b.dedicated()) pooled.push_back(b);
  const Block b = pooled[rng() % pooled.size()];
  const uint32_t slot = static_cast<uint32_t>(rng() % (c.slot_count.load() + 1));
  const uint64_t v = value();
  const int field = static_cast<int>(rng() % 18);
  std::string what;
  std::function<void()> write;
  auto put = [](void* at, uint64_t x, std::size_t n) { std::memcpy(at, &x, n); };
  switch (seed % 7) {
    case 0: {
      what = "control field " + std::to_string(field) + " = " + std::to_string(v);
      write = [&c, field, v, put, &rng] {
        void* at[] = {&c.magic, &c.version, &c.max_segments, &c.limit_bytes, &c.segment_bytes, &c.owner_pid,
                      &c.closed, &c.used_bytes, &c.mapped_bytes, &c.slot_count, &c.pooled_segments,
                      &c.next_generation, &c.recovering, &c.backing, &c.pooled_bytes, &c.service_seq,
                      &c.service_alive, &c.bins[rng() % ad::kBins]};
        const std::size_t n[] = {8, 4, 4, 8, 8, 4, 4, 8, 8, 4, 4, 8, 4, 4, 8, 4, 4, 8};
        put(at[field], v, n[field]);
      };
      break;
    }
    case 1:
      what = "random bytes over the control block's head (all but the mutex) and bins";
      write = [=, &rng] {
        for (std::size_t k = 0; k < slots_at; ++k)
          if (k < mutex_at || k >= mutex_end) base[k] = std::byte(rng() & 0xff);
      };
      break;
    case 2: {
      what = "slot " + std::to_string(slot) + " field " + std::to_string(field % 15) + " = " + std::to_string(v);
      ad::SlotRecord& s = c.slots[slot];
      write = [&s, field, v, put, &rng] {
        void* at[] = {&s.kind, &s.refs, &s.generation, &s.bytes, &s.block_size, &s.creator, &s.purpose,
                      &s.name[rng() % sizeof s.name], &s.backing, &s.owner_fd, &s.file_ino, &s.file_dev,
                      &s.handoff, &s.creator_fd, &s.adopted_fd};
        const std::size_t n[] = {4, 4, 8, 8, 8, 4, 4, 1, 4, 4, 8, 8, 4, 4, 4};
        put(at[field % 15], v, n[field % 15]);
      };
      break;
    }
    case 3:
      what = "random bytes over slot " + std::to_string(slot);
      write = [&c, slot, &rng] {
        auto* s = reinterpret_cast<std::byte*>(&c.slots[slot]);
        for (std::size_t k = 0; k < sizeof(ad::SlotRecord); ++k) s[k] = std::byte(rng() & 0xff);
      };
      break;
    case 4: {
      // The block's own header, or the one after it (often a free block).
      ad::BlockHeader* h = p.header(b);
      if (rng() % 2) {
        const uint64_t next = b.offset - ad::kHeaderBytes + h->span;
        if (next < ArenaTestAccess::pooled_size(*p.arena, b.segment))
          h = reinterpret_cast<ad::BlockHeader*>(ArenaTestAccess::pooled_base(*p.arena, b.segment) + next);
      }
      what = "header field " + std::to_string(field % 9) + " = " + std::to_string(v);
      write = [h, field, v, put] {
        void* at[] = {&h->state, &h->span, &h->prev_span, &h->generation, &h->refs, &h->bin,
                      &h->next_free, &h->prev_free, &h->size};
        const std::size_t n[] = {8, 8, 8, 8, 4, 4, 8, 8, 8};
        put(at[field % 9], v, n[field % 9]);
      };
      break;
    }
    case 5: {
      std::byte* seg = ArenaTestAccess::pooled_base(*p.arena, b.segment);
      const std::size_t size = ArenaTestAccess::pooled_size(*p.arena, b.segment);
      const std::size_t at = rng() % 2 ? b.offset - ad::kHeaderBytes : 64 * (rng() % (size / 64));
      const std::size_t n = std::min<std::size_t>(rng() % 2 ? 64 : 4096, size - at);
      what = "random bytes over " + std::to_string(n) + " bytes at offset " + std::to_string(at) + " of segment " +
             std::to_string(b.segment);
      write = [seg, at, n, &rng] {
        for (std::size_t k = 0; k < n; ++k) seg[at + k] = std::byte(rng() & 0xff);
      };
      break;
    }
    default:
      what = "random bytes over the mutex";
      write = [=, &rng] {
        for (std::size_t k = mutex_at; k < mutex_end; ++k) base[k] = std::byte(rng() & 0xff);
      };
      break;
  }
  scribble_arena(write);
  return what;
}

}  // namespace

// The randomized test: a few hundred arenas, each given one kind of garbage
// (a field of the control block, random bytes over it, a slot record, a block
// header, random bytes over a segment's blocks, the mutex), then used by this
// process and by another one that attaches afresh, then closed.
TEST(ArenaGarbage, RandomGarbageOverTheArenasMetadataNeverCrashesAnyProcess) {
  ShortWaits short_waits;
  constexpr int kRounds = 210;
  int corrupt_seen = 0;
  const auto before = names_of(getpid());
  for (int round = 0; round < kRounds; ++round) {
    std::string what;
    {
      Populated p(round % 5 == 4 ? SegmentBacking::dev_shm : SegmentBacking::automatic);
      what = garble_at_random(p, round);
      SCOPED_TRACE("round " + std::to_string(round) + ": " + what);
      Outcome mine;
      returns_within(60s, [&] { mine = exercise(*p.arena, p.held, round); });
      expect_clean(mine, what);
      corrupt_seen += mine.corrupt > 0;
      expect_another_process_survives(p, round + 1000, what);
      returns_within(60s, [&] { p.arena.reset(); });  // close and destroy
    }
    // Garbage over a slot's name can strand its segment's name (it is no
    // longer known): this test removes it, as the owner's reclaim would.
    for (const std::string& name : names_of(getpid()))
      if (!before.count(name)) shm_unlink(("/" + name).c_str());
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_GT(corrupt_seen, kRounds / 4) << "the garbage was seldom noticed";
}
