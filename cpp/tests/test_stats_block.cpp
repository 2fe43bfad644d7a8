// A pool's stats block (shoal/obs/stats_block.hpp): what readers in other
// processes rely on. Found by listing /dev/shm, mapped read-only, refused when
// of another layout version or not a stats block; a worker's writer keeps its
// counters, histogram, slowest tasks and recent errors; the engine keeps the
// pool's counters and each slot's pid and restarts; trace rings drop (and
// count) what a slow consumer leaves no room for.
#include <gtest/gtest.h>
#include <unistd.h>


#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine_options.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/engine/engine.hpp"
#include "shoal/ipc/segment.hpp"
#include "shoal/obs/stats_block.hpp"

using namespace std::chrono_literals;
using namespace shoal::obs;
using shoal::Completion;
using shoal::Deadline;
using shoal::Engine;
using Status = shoal::proto::Status;

namespace {

bool listed(const std::string& name, pid_t pid) {
  const auto names = list_stats_blocks(pid);
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Collects until `count` jobs ended (or 60 s passed).
std::map<uint64_t, Completion> collect(Engine& e, std::size_t count) {
  std::map<uint64_t, Completion> done;
  std::vector<Completion> batch;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (done.size() < count && std::chrono::steady_clock::now() < until) {
    batch.clear();
    if (!e.collect(batch, Deadline::after(50ms))) break;
    for (auto& c : batch)
      if (c.status != Status::log) done[c.job_id] = std::move(c);
  }
  return done;
}

// A slow task's argument text (appended piecewise: GCC 12 warns falsely on `"(" + s + ",)"`).
std::string args_of(uint64_t job) {
  std::string text = "(";
  text += std::to_string(job);
  text += ",)";
  return text;
}

std::string error_of(uint64_t job) {
  std::string text = "Traceback ... ValueError: ";
  text += std::to_string(job);
  return text;
}

template <class Pred>
bool eventually(Pred pred) {
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

}  // namespace

TEST(StatsBlock, IsListedForItsPidAndReadableReadOnlyUntilUnlinked) {
  auto block = StatsBlock::create(3, "Executor", "my-job");
  EXPECT_TRUE(listed(block->name(), getpid()));
  EXPECT_TRUE(listed(block->name(), 0));
  EXPECT_FALSE(listed(block->name(), getpid() + 100000));

  auto reader = StatsBlock::open_readonly(block->name());
  EXPECT_EQ(reader->slots(), 3u);
  EXPECT_STREQ(reader->header().kind, "Executor");
  EXPECT_STREQ(reader->header().label, "my-job");
  EXPECT_EQ(reader->header().owner_pid, static_cast<uint32_t>(getpid()));
  bump(block->header().pool.submitted, 7);
  EXPECT_EQ(reader->header().pool.submitted.load(), 7u);  // the same memory

  block->unlink();
  EXPECT_FALSE(listed(block->name(), getpid()));
  EXPECT_THROW(StatsBlock::open_readonly(block->name()), shoal::NotFoundError);
  EXPECT_EQ(reader->header().pool.submitted.load(), 7u);  // a mapping outlives the name
}

// The permissions of this process's mappings of /dev/shm/<name> ("rw-s", "r--s"), from /proc/self/maps.
std::vector<std::string> mapping_permissions(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  std::vector<std::string> perms;
  for (std::string line; std::getline(maps, line);) {
    if (line.size() < name.size() || line.compare(line.size() - name.size(), name.size(), name) != 0) continue;
    std::istringstream fields(line);
    std::string range, p;
    fields >> range >> p;
    perms.push_back(p);
  }
  return perms;
}

TEST(StatsBlock, AReaderMapsTheBlockReadOnly) {
  auto block = StatsBlock::create(1, "Pool", "");
  EXPECT_EQ(mapping_permissions(block->name()), std::vector<std::string>{"rw-s"});
  auto reader = StatsBlock::open_readonly(block->name());
  auto perms = mapping_permissions(block->name());
  std::sort(perms.begin(), perms.end());
  EXPECT_EQ(perms, (std::vector<std::string>{"r--s", "rw-s"}));  // a reader can never disturb the pool
}

TEST(StatsBlock, ABlockOfAnotherLayoutVersionIsRefusedSayingSo) {
  auto block = StatsBlock::create(2, "Executor", "");
  block->header().version = StatsHeader::kVersion + 1;  // as a newer shoal would make it
  try {
    StatsBlock::open_readonly(block->name());
    FAIL() << "a block of another version was read";
  } catch (const StatsVersionError& e) {
    EXPECT_EQ(e.found, StatsHeader::kVersion + 1);
    EXPECT_NE(std::string(e.what()).find("another version of shoal"), std::string::npos) << e.what();
  }
  EXPECT_THROW(StatsBlock::attach(block->name()), StatsVersionError);
}

TEST(StatsBlock, SegmentsThatAreNoStatsBlockAreRefusedAndNotListed) {
  shoal::SharedSegment other = shoal::SharedSegment::create(4096);  // some other shoal segment
  EXPECT_FALSE(listed(other.name(), getpid()));
  EXPECT_THROW(StatsBlock::open_readonly(other.name()), shoal::CorruptFrameError);

  auto block = StatsBlock::create(2, "Executor", "");
  block->header().slots = 1u << 20;  // more slots than the segment holds
  EXPECT_THROW(StatsBlock::open_readonly(block->name()), shoal::CorruptFrameError);
}

TEST(StatsBlock, AWorkersWriterCountsTasksTimesBytesAndDurations) {
  auto block = StatsBlock::create(2, "Executor", "");
  WorkerStatsWriter writer(block, 1);
  const WorkerStats& w = block->worker(1);
  EXPECT_EQ(w.pid.load(), static_cast<uint32_t>(getpid()));
  writer.ready(5'000);
  EXPECT_EQ(w.state.load(), static_cast<uint32_t>(WorkerState::idle));
  EXPECT_EQ(w.initializer_ns.load(), 5'000u);

  writer.job_taken(11, monotonic_ns() - 5'000'000, 100);  // taken 5 ms ago
  EXPECT_EQ(w.state.load(), static_cast<uint32_t>(WorkerState::running));
  EXPECT_EQ(w.job.load(), 11u);
  writer.job_done(11, 0, 3'000, 1, 0, 40);  // one task of 3 µs, by the worker's own measure (no marks)
  writer.job_taken(12, monotonic_ns(), 1'000);
  writer.args_loaded();
  writer.call_returned();
  writer.job_done(12, 1, 2'000'000, 10, 3, 500);  // a chunk of 10 items, 3 raised, its call between the marks
  EXPECT_EQ(w.state.load(), static_cast<uint32_t>(WorkerState::idle));
  EXPECT_EQ(w.job.load(), 0u);
  EXPECT_EQ(w.jobs_completed.load(), 2u);
  EXPECT_EQ(w.tasks_completed.load(), 1u + 7u);
  EXPECT_EQ(w.tasks_failed.load(), 3u);
  EXPECT_GE(w.busy_ns.load(), 5'000'000u);  // from taking each job to its result
  EXPECT_EQ(w.bytes_in.load(), 1'100u);
  EXPECT_EQ(w.bytes_out.load(), 540u);
  uint64_t counted = 0;
  for (const Counter& b : w.duration_buckets) counted += b.load();
  EXPECT_EQ(counted, 11u);
  EXPECT_GE(w.duration_buckets[duration_bucket(3'000)].load(), 1u);
  // Bucket i holds durations up to 2^i µs.
  EXPECT_EQ(duration_bucket(1'000), 0u);
  EXPECT_EQ(duration_bucket(3'000), 2u);
  EXPECT_EQ(duration_bucket(4'000), 2u);
  EXPECT_EQ(duration_bucket(4'001), 3u);
  EXPECT_EQ(duration_bucket(UINT64_MAX / 2), kDurationBuckets - 1);
  writer.exiting();
  EXPECT_EQ(w.state.load(), static_cast<uint32_t>(WorkerState::exiting));
}

TEST(StatsBlock, TheSlowestTasksAreKeptWithTheirArguments) {
  auto block = StatsBlock::create(1, "Executor", "");
  WorkerStatsWriter writer(block, 0);
  for (uint64_t job = 1; job <= 20; ++job) {
    const uint64_t ns = (job * 7919) % 1000 + 1;  // every duration differs
    if (ns > writer.slow_floor()) writer.note_slow(job, ns, 1, args_of(job));
  }
  std::vector<uint64_t> expected;
  for (uint64_t job = 1; job <= 20; ++job) expected.push_back((job * 7919) % 1000 + 1);
  std::sort(expected.rbegin(), expected.rend());
  expected.resize(kSlowest);
  auto kept = read_slowest(block->worker(0));
  ASSERT_EQ(kept.size(), kSlowest);
  std::vector<uint64_t> got;
  for (const auto& t : kept) {
    got.push_back(t.ns);
    EXPECT_EQ(t.args, args_of(t.job));
    EXPECT_EQ((t.job * 7919) % 1000 + 1, t.ns);
  }
  std::sort(got.rbegin(), got.rend());
  EXPECT_EQ(got, expected);
  EXPECT_EQ(writer.slow_floor(), expected.back());
  // An argument text longer than its field is cut, never overrun.
  writer.note_slow(99, 1'000'000, 1, std::string(10'000, 'a'));
  kept = read_slowest(block->worker(0));
  auto longest = std::max_element(kept.begin(), kept.end(), [](auto& a, auto& b) { return a.ns < b.ns; });
  EXPECT_EQ(longest->args, std::string(kArgsText - 1, 'a'));
}

TEST(StatsBlock, RecentErrorsKeepTheNewestFewAndAHalfWrittenOneIsSkipped) {
  auto block = StatsBlock::create(1, "Executor", "");
  WorkerStatsWriter writer(block, 0);
  EXPECT_TRUE(writer.wants_error());
  for (uint64_t job = 1; job <= 6; ++job) writer.note_error(job, error_of(job));
  auto errors = read_errors(block->worker(0));
  ASSERT_EQ(errors.size(), kRecentErrors);
  for (std::size_t i = 0; i < errors.size(); ++i) {
    EXPECT_EQ(errors[i].job, 6 - i);  // newest first
    EXPECT_EQ(errors[i].text, error_of(6 - i));
  }
  EXPECT_FALSE(writer.wants_error());  // a few a second once the ring is full
  // An entry whose sequence word is odd is being written: readers leave it out.
  ErrorRecord& newest = block->worker(0).errors[(6 - 1) % kRecentErrors];
  newest.seq.store(newest.seq.load() | 1);
  errors = read_errors(block->worker(0));
  ASSERT_EQ(errors.size(), kRecentErrors - 1);
  EXPECT_EQ(errors[0].job, 5u);
}

TEST(StatsBlock, AWriterWithoutABlockWritesNowhereAndNeverFails) {
  WorkerStatsWriter writer(nullptr, 3);
  writer.job_taken(1, monotonic_ns(), 10);
  writer.job_done(1, 0, 10, 1, 0, 10);
  EXPECT_EQ(writer.slow_floor(), UINT64_MAX);  // nothing is ever slow enough to note
  EXPECT_FALSE(writer.wants_error());
  auto block = StatsBlock::create(1, "Executor", "");
  WorkerStatsWriter out_of_range(block, 5);  // a slot the block lacks: private too
  out_of_range.job_done(1, 0, 10, 1, 0, 10);
  EXPECT_EQ(block->worker(0).jobs_completed.load(), 0u);
}

TEST(StatsBlock, ATraceRingDropsAndCountsWhatDoesNotFitAndClampsGarbagePositions) {
  auto block = StatsBlock::create(1, "Executor", "");
  TraceRing& ring = block->worker(0).trace;
  for (uint64_t i = 0; i < kTraceEvents + 10; ++i) trace_push(ring, TraceEvent{i + 1, i, i, i, i, 1, 0});
  EXPECT_EQ(ring.dropped.load(), 10u);
  std::vector<TraceEvent> events;
  ASSERT_EQ(trace_drain(ring, events), kTraceEvents);
  EXPECT_EQ(events.front().job, 1u);
  EXPECT_EQ(events.back().job, kTraceEvents);
  EXPECT_EQ(trace_drain(ring, events), 0u);
  EXPECT_TRUE(trace_push(ring, TraceEvent{42, 0, 0, 0, 0, 1, 0}));
  ASSERT_EQ(trace_drain(ring, events), 1u);
  EXPECT_EQ(events.back().job, 42u);
  ring.head.store(ring.head.load() + (uint64_t{1} << 40));  // written by someone else
  EXPECT_EQ(trace_drain(ring, events), kTraceEvents);  // never more than the ring holds
}

TEST(StatsBlock, AnEnginesBlockCountsJobsWorkersAndRestarts) {
  Engine e(shoal_test::options(2));
  const std::string name = e.stats_name();
  EXPECT_TRUE(listed(name, getpid()));
  auto reader = StatsBlock::open_readonly(name);
  const uint64_t fn = e.define_function("f");
  std::vector<uint64_t> ids;
  for (int i = 0; i < 50; ++i) ids.push_back(e.submit(fn, 0, "echo:x"));
  ids.push_back(e.submit(fn, 0, "die"));
  auto done = collect(e, ids.size());
  ASSERT_EQ(done.size(), ids.size());
  const PoolCounters& c = reader->header().pool;
  EXPECT_EQ(c.submitted.load(), ids.size());
  EXPECT_EQ(c.completed.load(), 50u);
  EXPECT_EQ(c.failed.load(), 1u);  // the worker died under it
  EXPECT_EQ(c.workers_lost.load(), 1u);
  EXPECT_EQ(c.pending.load(), 0u);
  EXPECT_EQ(c.in_flight.load(), 0u);
  uint64_t tasks = 0, restarts = 0, signals = 0;
  for (uint32_t s = 0; s < reader->slots(); ++s) {
    const WorkerStats& w = reader->worker(s);
    tasks += w.tasks_completed.load();
    restarts += w.restarts.load();
    signals += w.restart_causes[static_cast<std::size_t>(ExitCause::signal)].load();
  }
  EXPECT_EQ(tasks, 50u);  // the test worker reports through its endpoint, as Python's does
  EXPECT_EQ(restarts, 1u);
  EXPECT_EQ(signals, 1u);
  // The replacement reports its pid once it is running.
  EXPECT_TRUE(eventually([&] {
    const auto pids = e.worker_pids();
    for (uint32_t s = 0; s < reader->slots(); ++s)
      if (std::find(pids.begin(), pids.end(), static_cast<pid_t>(reader->worker(s).pid.load())) == pids.end())
        return false;
    return pids.size() == 2;
  }));
  e.shutdown(true, false);
  EXPECT_EQ(reader->header().state.load(), static_cast<uint32_t>(PoolState::closed));
  EXPECT_FALSE(listed(name, getpid()));  // a closed pool is not listed
}
