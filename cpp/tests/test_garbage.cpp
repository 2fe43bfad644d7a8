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
#include <sys/mman.h>
#include <unistd.h>

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
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "shoal/ipc/segment.hpp"
#include "shoal/wire/blob.hpp"
#include "shoal/engine/engine.hpp"
#include "engine_options.hpp"
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
using shoal_test::options;

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

template <class F>
bool returns_within(std::chrono::seconds limit, F f) {
  auto done = std::async(std::launch::async, std::move(f));
  if (done.wait_for(limit) == std::future_status::ready) return true;
  ADD_FAILURE() << "call did not return within " << limit.count() << " s";
  std::_Exit(1);
}

template <class Pred>
bool eventually(Pred pred, std::chrono::seconds limit = 30s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

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
  Engine e(options(2));
  const uint64_t fn = e.define_function("f");
  // Warm: both workers up, and which one is slot 0 known by its pid.
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(e.submit(fn, 0, "sleep:300", /*retries=*/1));
  for (int i = 0; i < 4; ++i) ids.push_back(e.submit(fn, 0, "echo:" + std::to_string(i)));
  ASSERT_TRUE(eventually([&] { return e.worker_pids().size() == 2; }));
  std::this_thread::sleep_for(50ms);  // the first jobs are running
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
  Engine e(options(2));
  const uint64_t fn = e.define_function("f");
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(e.submit(fn, 0, "sleep:300", /*retries=*/1));
  ASSERT_TRUE(eventually([&] { return e.worker_pids().size() == 2; }));
  std::this_thread::sleep_for(50ms);  // each worker runs one and has the next in its inbox
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
  Engine e(options(1, false));
  const uint64_t fn = e.define_function("f");
  const uint64_t slow = e.submit(fn, 0, "sleep:2000");
  ASSERT_TRUE(eventually([&] { return e.worker_pids().size() == 1; }));
  auto waiter = std::async(std::launch::async, [&] {
    std::optional<Completion> got;
    e.wait_for(slow, Deadline::after(30s), got);
    return got;
  });
  std::this_thread::sleep_for(50ms);
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
  Engine e(options(1));
  const uint64_t fn = e.define_function("f");
  const uint64_t job = e.submit(fn, 0, "sleep:20000");
  ASSERT_TRUE(eventually([&] { return e.worker_pids().size() == 1; }));
  std::this_thread::sleep_for(50ms);
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
    Engine e(options(2));
    const uint64_t fn = e.define_function("f");
    std::vector<uint64_t> ids;
    for (int i = 0; i < 2; ++i) ids.push_back(e.submit(fn, 0, "sleep:20000"));
    for (int i = 0; i < 50; ++i) ids.push_back(e.submit(fn, 0, "echo:" + std::to_string(i)));
    auto waiter = std::async(std::launch::async, [&] {
      std::optional<Completion> got;
      e.wait_for(ids[1], Deadline::after(30s), got);
      return got;
    });
    std::this_thread::sleep_for(20ms);
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
  Engine e(options(1));
  const uint64_t fn = e.define_function("f");
  const uint64_t job = e.submit(fn, 0, "sleep:20000", /*retries=*/100);
  for (uint64_t round = 1; round <= 3; ++round) {
    ASSERT_TRUE(eventually([&] { return e.stats().workers_started >= round && e.worker_pids().size() == 1; }));
    std::this_thread::sleep_for(20ms);
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
