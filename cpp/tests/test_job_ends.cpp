// The engine owns a job from submit to its end: it hands back the owner the
// job was submitted with exactly once (in its Completion, from cancel(), or
// to EngineOptions::drop_owner when nobody took the end), and drops the arena
// references of a packed argument when the job ends for good, whichever way.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shoal/base/errors.hpp"
#include "shoal/engine/engine.hpp"
#include "shoal/mem/arena.hpp"
#include "shoal/wire/packed_payload.hpp"
#include "engine_options.hpp"

using namespace std::chrono_literals;
using shoal::Completion;
using shoal::Deadline;
using shoal::Engine;
using shoal::SharedArena;
using Status = shoal::proto::Status;

namespace {

// Everything the engine delivers until it stops (after shutdown), log records left out.
std::vector<Completion> collect_all(Engine& e) {
  std::vector<Completion> out, batch;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < until) {
    batch.clear();
    const bool running = e.collect(batch, Deadline::after(100ms));
    for (auto& c : batch)
      if (c.status != Status::log) out.push_back(std::move(c));
    if (!running) break;
  }
  return out;
}

// A packed payload holding the payload's own reference on one new block of `arena`.
std::string payload_holding_a_block(SharedArena& arena) {
  shoal::Block b = arena.alloc(1 << 16);
  arena.disown(b);  // the reference is the payload's now
  shoal::packed::Entry entry;
  entry.block = b;
  entry.view_length = b.size;
  return shoal::packed::encode({arena.name()}, {entry}, "echo:x");
}

class JobEnds : public ::testing::TestWithParam<bool> {};

}  // namespace

TEST_P(JobEnds, EveryOwnerComesBackExactlyOnceWhicheverWayItsJobEnds) {
  Engine e(shoal_test::options(1, GetParam()));
  const uint64_t fn = e.define_function("f");
  std::map<uint64_t, uint64_t> owner_of;  // job id -> owner
  owner_of[e.submit(fn, 0, "sleep:200", 0, 0, 7)] = 7;  // runs while the rest queue
  owner_of[e.submit(fn, 0, "die", 0, 0, 8)] = 8;        // its worker dies under it
  for (uint64_t owner = 100; owner < 140; ++owner) owner_of[e.submit(fn, 0, "echo:q", 0, 0, owner)] = owner;
  std::map<uint64_t, int> seen;  // owner -> times handed back
  uint64_t cancelled_owner = 0;
  const uint64_t last = owner_of.rbegin()->first;
  ASSERT_TRUE(e.cancel(last, &cancelled_owner));
  EXPECT_EQ(cancelled_owner, owner_of[last]);
  ++seen[cancelled_owner];
  uint64_t again = 0;
  EXPECT_FALSE(e.cancel(last, &again));
  EXPECT_EQ(again, 0u);
  e.shutdown(true, /*cancel_pending=*/true);  // what is still queued ends as cancelled
  for (const auto& c : collect_all(e)) {
    ASSERT_TRUE(owner_of.count(c.job_id)) << "unknown job " << c.job_id;
    EXPECT_EQ(c.owner, owner_of[c.job_id]) << "job " << c.job_id;
    ++seen[c.owner];
  }
  for (const auto& [id, owner] : owner_of) EXPECT_EQ(seen[owner], 1) << "owner " << owner << " of job " << id;
}

TEST_P(JobEnds, OwnersOfEndsNobodyTookGoToDropOwner) {
  std::vector<uint64_t> dropped;
  std::vector<uint64_t> submitted;
  {
    auto o = shoal_test::options(1, GetParam());
    o.drop_owner = [&](uint64_t owner) { dropped.push_back(owner); };
    Engine e(std::move(o));
    const uint64_t fn = e.define_function("f");
    for (uint64_t owner = 1; owner <= 20; ++owner) {
      e.submit(fn, 0, "echo:never collected", 0, 0, owner);
      submitted.push_back(owner);
    }
  }  // destroyed without a collect: queued jobs are cancelled, finished ones never taken
  std::sort(dropped.begin(), dropped.end());
  EXPECT_EQ(dropped, submitted);
}

TEST_P(JobEnds, APackedArgumentsBlocksAreFreedWhenItsJobEndsAndNotBefore) {
  auto arena = SharedArena::create(64 << 20);
  auto o = shoal_test::options(1, GetParam());
  o.arena = arena;
  Engine e(std::move(o));
  const uint64_t fn = e.define_function("f");
  // Behind a long job: one that runs (the worker prefetches it), one
  // cancelled while queued, one cancelled by shutdown.
  e.submit(fn, 0, "sleep:300");
  const uint64_t finished = e.submit(fn, 0, payload_holding_a_block(*arena));
  const uint64_t cancelled = e.submit(fn, 0, payload_holding_a_block(*arena));
  e.submit(fn, 0, payload_holding_a_block(*arena));
  EXPECT_GT(arena->used_bytes(), 3u << 16);
  ASSERT_TRUE(e.cancel(cancelled));
  e.shutdown(true, true);
  std::map<uint64_t, Status> status;
  for (const auto& c : collect_all(e)) status[c.job_id] = c.status;
  EXPECT_EQ(status.count(cancelled), 0u);
  EXPECT_TRUE(status.count(finished));
  EXPECT_EQ(arena->used_bytes(), 0u);  // every block freed once: a second release would throw and be logged
}

TEST_P(JobEnds, APackedFunctionsBlocksLiveUntilItIsDroppedOrTheEngineEnds) {
  auto arena = SharedArena::create(64 << 20);
  auto o = shoal_test::options(1, GetParam());
  o.arena = arena;
  {
    Engine e(std::move(o));
    const uint64_t dropped = e.define_function(payload_holding_a_block(*arena));
    const uint64_t kept = e.define_function(payload_holding_a_block(*arena));
    const uint64_t both = arena->used_bytes();  // two blocks of 64 KiB and their headers
    EXPECT_GT(both, 2u << 16);
    // Its worker is sent the definition before the job, and told to drop it after.
    const uint64_t job = e.submit(dropped, 0, "echo:x");
    std::optional<Completion> done;
    ASSERT_TRUE(e.wait_for(job, Deadline::after(60s), done) && done);
    EXPECT_EQ(done->status, Status::ok);
    e.drop_function(dropped);
    EXPECT_EQ(arena->used_bytes(), both / 2);  // the dropped one's block went at once
    e.drop_function(dropped);                   // a second drop releases nothing again
    EXPECT_EQ(arena->used_bytes(), both / 2);
    (void)kept;
  }
  EXPECT_EQ(arena->used_bytes(), 0u);  // the engine's end released what it still owned
}

TEST(PackedPayload, DecodesWhatItEncodesAndRefusesWhatIsCutShort) {
  shoal::packed::Entry a, b;
  a.block = shoal::Block{3, 1, 64, 1000, 9};
  a.view_offset = 8;
  a.view_length = 900;
  b.arena = 1;
  b.kind = shoal::packed::EntryKind::held;
  b.block = shoal::Block{4, 0, 128, 10, 11};
  const std::string p = shoal::packed::encode({"arena-a", "arena-b"}, {a, b}, "PICKLE");
  ASSERT_TRUE(shoal::packed::is_packed(p));
  auto c = shoal::packed::decode(p);
  EXPECT_EQ(c.names, (std::vector<std::string>{"arena-a", "arena-b"}));
  ASSERT_EQ(c.entries.size(), 2u);
  EXPECT_EQ(c.entries[0].block.generation, 9u);
  EXPECT_EQ(c.entries[0].view_length, 900u);
  EXPECT_EQ(c.entries[1].kind, shoal::packed::EntryKind::held);
  EXPECT_EQ(p.substr(c.pickle_offset), "PICKLE");
  auto refs = shoal::packed::references(p);
  ASSERT_EQ(refs.size(), 2u);
  EXPECT_EQ(refs[1].arena, "arena-b");
  for (std::size_t cut = 0; cut < p.size(); ++cut)
    EXPECT_THROW(shoal::packed::decode(std::string_view(p).substr(0, cut)), std::invalid_argument) << cut;
  EXPECT_TRUE(shoal::packed::references("\x80plain pickle").empty());
}

INSTANTIATE_TEST_SUITE_P(StartMethods, JobEnds, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "fork_server" : "spawn"; });
