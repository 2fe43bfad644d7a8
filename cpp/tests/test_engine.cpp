#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "shoal/base/errors.hpp"
#include "shoal/engine/engine.hpp"
#include "engine_options.hpp"

using namespace std::chrono_literals;
using shoal::Completion;
using shoal::Deadline;
using shoal::Engine;
using shoal::EngineOptions;
using Status = shoal::proto::Status;

namespace {

using shoal_test::contains;
using shoal_test::options;

// Collects into `done` while keep_going() holds and the engine runs; a job
// delivered twice fails the test.
template <class KeepGoing>
void collect_into(Engine& e, std::map<uint64_t, Completion>& done, KeepGoing keep_going) {
  std::vector<Completion> batch;
  while (keep_going()) {
    batch.clear();
    if (!e.collect(batch, Deadline::after(50ms))) return;
    for (auto& c : batch) {
      if (c.status == Status::log) continue;
      EXPECT_FALSE(done.count(c.job_id)) << "job " << c.job_id << " delivered twice";
      done[c.job_id] = std::move(c);
    }
  }
}

// Collects until `count` jobs finished (or 60 s passed); keyed by job id.
std::map<uint64_t, Completion> collect(Engine& e, std::size_t count) {
  std::map<uint64_t, Completion> done;
  const auto until = std::chrono::steady_clock::now() + 60s;
  collect_into(e, done, [&] { return done.size() < count && std::chrono::steady_clock::now() < until; });
  return done;
}

class EngineTest : public ::testing::TestWithParam<bool> {};

}  // namespace

TEST_P(EngineTest, EveryJobRunsExactlyOnceWithItsOwnResult) {
  Engine e(options(2, GetParam()));
  uint64_t fn = e.define_function("f");
  std::map<uint64_t, std::string> expected;
  for (int i = 0; i < 5000; ++i) {
    std::string text = std::to_string(i * 7919);
    expected[e.submit(fn, 0, "echo:" + text)] = text;
  }
  auto done = collect(e, expected.size());
  ASSERT_EQ(done.size(), expected.size());
  for (auto& [id, text] : expected) {
    EXPECT_EQ(done[id].status, Status::ok);
    EXPECT_EQ(done[id].payload, text);
  }
  e.shutdown(true, false);
  EXPECT_TRUE(e.worker_pids().empty());
}

TEST_P(EngineTest, PayloadsLargerThanTheRingTravelThroughSpillSegments) {
  Engine e(options(1, GetParam()));
  uint64_t fn = e.define_function("f");
  std::string big(1 << 20, 'x');
  uint64_t id = e.submit(fn, 0, "echo:" + big);
  auto done = collect(e, 1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[id].payload.size(), big.size());
  e.shutdown(true, false);
}

TEST_P(EngineTest, WorkerDeathFailsOnlyItsRunningJobAndIsReplaced) {
  Engine e(options(2, GetParam()));
  uint64_t fn = e.define_function("f");
  uint64_t doomed = e.submit(fn, 0, "die");
  std::vector<uint64_t> fine;
  for (int i = 0; i < 200; ++i) fine.push_back(e.submit(fn, 0, "echo:ok"));
  auto done = collect(e, 201);
  ASSERT_EQ(done.size(), 201u);
  EXPECT_EQ(done[doomed].status, Status::worker_lost);
  EXPECT_NE(done[doomed].payload.find("SIGKILL"), std::string::npos) << done[doomed].payload;
  for (uint64_t id : fine) EXPECT_EQ(done[id].status, Status::ok);
  EXPECT_GE(e.stats().workers_lost, 1u);
  // The other worker may finish every job before the replacement reports in.
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (e.stats().workers_started < 3 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(1ms);
  EXPECT_GE(e.stats().workers_started, 3u);
}

TEST_P(EngineTest, RetriedJobSucceedsOnAFreshWorker) {
  auto marker = std::filesystem::temp_directory_path() / ("shoal-die-once-" + std::to_string(getpid()));
  std::filesystem::remove(marker);
  Engine e(options(1, GetParam()));
  uint64_t fn = e.define_function("f");
  uint64_t id = e.submit(fn, 0, "die-once:" + marker.string(), /*retries=*/1);
  auto done = collect(e, 1);
  std::filesystem::remove(marker);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[id].status, Status::ok);
  EXPECT_EQ(done[id].payload, "survived");
  EXPECT_EQ(e.stats().retried, 1u);
}

constexpr uint32_t kMapOne = static_cast<uint32_t>(shoal::proto::CallMode::map_one);

std::vector<std::string> piece_payloads(const Completion& c) {
  std::vector<std::string> out;
  for (const auto& p : c.pieces) {
    EXPECT_EQ(p.status, Status::ok);
    EXPECT_EQ(p.items, 1u);
    out.push_back(p.payload);
  }
  return out;
}

TEST_P(EngineTest, AMapChunksResultsSentAheadArriveWithItsEndInOrder) {
  Engine e(options(1, GetParam()));
  const uint64_t fn = e.define_function("f");
  const uint64_t id = e.submit(fn, kMapOne, "parts:3:done");
  auto done = collect(e, 1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[id].status, Status::ok);
  EXPECT_EQ(done[id].payload, "rest");
  EXPECT_EQ(piece_payloads(done[id]), (std::vector<std::string>{"p0", "p1", "p2"}));
  EXPECT_EQ(done[id].failed_item, 0u);
}

TEST_P(EngineTest, WorkerDeathInsideAMapChunkEndsItWithWhatArrivedAndTheItemRunning) {
  Engine e(options(1, GetParam()));
  const uint64_t fn = e.define_function("f");
  // Re-run whole, the chunk would run its finished items again: the engine
  // leaves the re-run of the rest, and its retries, to the submitter.
  const uint64_t id = e.submit(fn, kMapOne, "parts:2:die", /*retries=*/2);
  const uint64_t after = e.submit(fn, 0, "echo:after");
  auto done = collect(e, 2);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[id].status, Status::worker_lost);
  EXPECT_EQ(piece_payloads(done[id]), (std::vector<std::string>{"p0", "p1"}));
  EXPECT_EQ(done[id].failed_item, 3u);  // 1 + the index of the item running
  EXPECT_EQ(done[id].retries_left, 2);
  EXPECT_EQ(e.stats().retried, 0u);
  EXPECT_EQ(done[after].payload, "after");
}

TEST_P(EngineTest, AMapChunkKilledForItsTimeLimitNamesTheItemRunning) {
  Engine e(options(1, GetParam()));
  const uint64_t fn = e.define_function("f");
  const uint64_t id = e.submit(fn, kMapOne, "parts:1:hang", 0, /*timeout_s=*/0.2);
  auto done = collect(e, 1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[id].status, Status::timed_out);
  EXPECT_EQ(piece_payloads(done[id]), (std::vector<std::string>{"p0"}));
  EXPECT_EQ(done[id].failed_item, 2u);
}

TEST_P(EngineTest, APartialResultForACallIsGarbageThatCostsOnlyItsWorker) {
  Engine e(options(1, GetParam()));
  const uint64_t fn = e.define_function("f");
  const uint64_t id = e.submit(fn, 0, "parts:1:done");
  auto done = collect(e, 1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[id].status, Status::worker_lost);
  EXPECT_TRUE(contains(done[id].payload, "no map chunk")) << done[id].payload;
  EXPECT_TRUE(done[id].pieces.empty());
  const uint64_t next = e.submit(fn, 0, "echo:next");
  auto later = collect(e, 1);
  EXPECT_EQ(later[next].payload, "next");
}

TEST_P(EngineTest, MaxTasksPerChildRecyclesWorkers) {
  auto o = options(1, GetParam());
  o.max_tasks_per_child = 2;
  Engine e(o);
  uint64_t fn = e.define_function("f");
  std::vector<uint64_t> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(e.submit(fn, 0, "pid"));
  auto done = collect(e, ids.size());
  ASSERT_EQ(done.size(), ids.size());
  std::map<std::string, int> per_pid;
  for (uint64_t id : ids) ++per_pid[done[id].payload];
  EXPECT_EQ(per_pid.size(), 3u);
  for (auto& [pid, n] : per_pid) EXPECT_EQ(n, 2) << pid;
}

TEST_P(EngineTest, FailedInitializerBreaksThePoolWithItsReason) {
  auto o = options(1, GetParam());
  o.init_payload = "fail";
  Engine e(o);
  uint64_t fn = e.define_function("f");
  uint64_t id = e.submit(fn, 0, "echo:x");
  auto done = collect(e, 1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[id].status, Status::broken);
  EXPECT_NE(done[id].payload.find("initializer failed"), std::string::npos);
  ASSERT_TRUE(e.broken().has_value());
  // Once broken, a submit is answered with the reason (whether or not the pool
  // broke before the first submit, as it may with a fast fork server).
  uint64_t later = e.submit(fn, 0, "echo:y");
  done = collect(e, 1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[later].status, Status::broken);
  EXPECT_NE(done[later].payload.find("initializer failed"), std::string::npos);
}

TEST_P(EngineTest, CancelRemovesQueuedJobsAndShutdownCancelsTheRest) {
  Engine e(options(1, GetParam()));
  uint64_t fn = e.define_function("f");
  uint64_t slow = e.submit(fn, 0, "sleep:300");
  std::vector<uint64_t> queued;
  for (int i = 0; i < 50; ++i) queued.push_back(e.submit(fn, 0, "echo:q"));
  EXPECT_TRUE(e.cancel(queued.back()));
  EXPECT_FALSE(e.cancel(queued.back()));
  e.shutdown(true, true);
  std::vector<Completion> out;
  while (e.collect(out, Deadline::after(1s))) {
  }
  std::map<uint64_t, Status> status;
  for (auto& c : out)
    if (c.status != Status::log) status[c.job_id] = c.status;
  EXPECT_EQ(status[slow], Status::ok);
  EXPECT_FALSE(status.count(queued.back()));
  int cancelled = 0;
  for (std::size_t i = 0; i + 1 < queued.size(); ++i) {
    ASSERT_TRUE(status.count(queued[i]));
    cancelled += status[queued[i]] == Status::cancelled;
  }
  EXPECT_GT(cancelled, 0);
  EXPECT_THROW(e.submit(fn, 0, "echo:late"), shoal::ClosedError);
}

TEST_P(EngineTest, TerminateKillsBusyWorkersAtOnce) {
  // Each job leaves a file when it starts, another when it ends.
  const auto dir = std::filesystem::temp_directory_path() /
                   ("shoal-terminate-" + std::to_string(getpid()) + (GetParam() ? "-fs" : "-spawn"));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto marker = [&](int i) { return (dir / std::to_string(i)).string(); };
  Engine e(options(2, GetParam()));
  uint64_t fn = e.define_function("f");
  for (int i = 0; i < 4; ++i) e.submit(fn, 0, "sleep:20000:" + marker(i));
  auto running = [&] {
    int n = 0;
    for (int i = 0; i < 4; ++i) n += std::filesystem::exists(marker(i));
    return n;
  };
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (running() < 2 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(running(), 2) << "both workers busy";
  e.terminate();
  EXPECT_TRUE(e.worker_pids().empty());
  for (int i = 0; i < 4; ++i)  // killed in their sleep, not waited for
    EXPECT_FALSE(std::filesystem::exists(marker(i) + ".done")) << "job " << i << " ran to its end";
  std::filesystem::remove_all(dir);
}

TEST_P(EngineTest, ShutdownLeavesNoSegmentBehind) {
  std::string name;
  {
    Engine e(options(2, GetParam()));
    name = e.segment_name();
    EXPECT_TRUE(std::filesystem::exists("/dev/shm/" + name));
    e.shutdown(true, false);
    EXPECT_FALSE(std::filesystem::exists("/dev/shm/" + name));
  }
}

TEST_P(EngineTest, JobPastItsTimeLimitEndsTimedOutAndOthersGoOn) {
  Engine e(options(1, GetParam()));
  uint64_t fn = e.define_function("f");
  const uint64_t slow = e.submit(fn, 0, "sleep:20000", 0, /*timeout_s=*/0.2);
  const uint64_t quick = e.submit(fn, 0, "echo:after", 0, 5.0);
  auto done = collect(e, 2);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[slow].status, Status::timed_out);  // at 0.2 s: it would have slept 20 s
  EXPECT_NE(done[slow].payload.find("time limit"), std::string::npos) << done[slow].payload;
  EXPECT_EQ(done[quick].status, Status::ok);
  EXPECT_EQ(done[quick].payload, "after");
}

TEST_P(EngineTest, WorkerDeathsAreLogged) {
  Engine e(options(1, GetParam()));
  uint64_t fn = e.define_function("f");
  e.submit(fn, 0, "die");
  std::vector<Completion> out;
  bool logged = false;
  auto until = std::chrono::steady_clock::now() + 30s;
  while (!logged && std::chrono::steady_clock::now() < until) {
    out.clear();
    e.collect(out, Deadline::after(1s));
    for (auto& c : out)
      logged |= c.status == Status::log && c.payload.find("SIGKILL") != std::string::npos;
  }
  EXPECT_TRUE(logged);
}

TEST_P(EngineTest, WaitForTakesOneJobsResultWhichCollectNeverDelivers) {
  Engine e(options(2, GetParam()));
  uint64_t fn = e.define_function("f");
  std::vector<uint64_t> others;
  for (int i = 0; i < 100; ++i) others.push_back(e.submit(fn, 0, "echo:" + std::to_string(i)));
  const uint64_t mine = e.submit(fn, 0, "echo:mine");
  for (int i = 100; i < 200; ++i) others.push_back(e.submit(fn, 0, "echo:" + std::to_string(i)));

  std::optional<Completion> got;
  ASSERT_TRUE(e.wait_for(mine, Deadline::after(30s), got));
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->job_id, mine);
  EXPECT_EQ(got->payload, "mine");
  // It is taken: waiting again finds nothing to wait for.
  std::optional<Completion> again;
  EXPECT_FALSE(e.wait_for(mine, Deadline::after(1s), again));
  EXPECT_FALSE(again.has_value());
  // Every other result still reaches collect(), once.
  auto done = collect(e, others.size());
  ASSERT_EQ(done.size(), others.size());
  EXPECT_FALSE(done.count(mine));
  for (std::size_t i = 0; i < others.size(); ++i) EXPECT_EQ(done[others[i]].payload, std::to_string(i));
}

TEST_P(EngineTest, WaitersGetTheirOwnResultsWhileACollectorTakesEveryOther) {
  // A collector thread drains the outboxes itself while other threads wait
  // for single jobs: each awaited result goes to its waiter, every other one
  // to the collector, and none is lost or delivered twice.
  Engine e(options(2, GetParam()));
  uint64_t fn = e.define_function("f");
  std::map<uint64_t, Completion> collected;
  std::atomic<bool> stop{false};
  std::thread collector([&] { collect_into(e, collected, [&] { return !stop.load(); }); });
  std::vector<uint64_t> others;
  std::vector<std::thread> waiters;
  std::atomic<int> waited_ok{0};
  std::vector<uint64_t> awaited;
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 500; ++i) others.push_back(e.submit(fn, 0, "echo:" + std::to_string(others.size())));
    const uint64_t mine = e.submit(fn, 0, "echo:mine" + std::to_string(round));
    awaited.push_back(mine);
    waiters.emplace_back([&e, &waited_ok, mine, round] {
      std::optional<Completion> got;
      if (e.wait_for(mine, Deadline::after(30s), got) && got && got->payload == "mine" + std::to_string(round))
        ++waited_ok;
    });
  }
  for (auto& t : waiters) t.join();
  stop = true;
  collector.join();
  // What the collector thread had not taken yet is still there for collect().
  const std::size_t total = others.size() + awaited.size();
  const auto until = std::chrono::steady_clock::now() + 30s;
  collect_into(e, collected, [&] {
    return collected.size() + waited_ok.load() < total && std::chrono::steady_clock::now() < until;
  });
  // A waiter normally takes its own result; if the collector drained it
  // before the waiter began to wait, the collector has it. Exactly once.
  EXPECT_EQ(waited_ok.load() + static_cast<int>(std::count_if(awaited.begin(), awaited.end(),
                                                              [&](uint64_t id) { return collected.count(id) > 0; })),
            4);
  for (std::size_t i = 0; i < others.size(); ++i) {
    ASSERT_TRUE(collected.count(others[i])) << "result of job " << others[i] << " lost";
    EXPECT_EQ(collected[others[i]].payload, std::to_string(i));
  }
  e.shutdown(true, false);
}

TEST_P(EngineTest, SpilledResultsReachTheirWaitersAndTheCollectorOnceEach) {
  // A spilled result is read without the engine's lock, after its job left
  // its worker: a waiter for it must still find it unfinished (with no
  // collector running, nobody else can have taken it), the results behind it
  // from the same worker must be judged against the jobs after it, and each
  // must arrive once, with its own payload.
  Engine e(options(2, GetParam()));
  const uint64_t fn = e.define_function("f");
  const std::size_t big = e.inline_payload_limit() * 3;
  std::map<uint64_t, std::string> expected;
  std::vector<std::vector<uint64_t>> awaited(3);
  for (int i = 0; i < 150; ++i) {
    const std::string payload = i % 3 == 0 ? std::string(big + i, static_cast<char>('a' + i % 26)) : std::to_string(i);
    const uint64_t id = e.submit(fn, 0, "echo:" + payload);
    expected[id] = payload;
    if (i % 5 == 0) awaited[i % 3].push_back(id);
  }
  std::vector<std::map<uint64_t, Completion>> waited(awaited.size());
  std::vector<std::thread> waiters;
  for (std::size_t w = 0; w < awaited.size(); ++w)
    waiters.emplace_back([&, w] {
      for (uint64_t id : awaited[w]) {
        std::optional<Completion> got;
        EXPECT_TRUE(e.wait_for(id, Deadline::after(30s), got)) << "job " << id << " was not waiting to finish";
        if (got) waited[w][id] = std::move(*got);
      }
    });
  for (auto& t : waiters) t.join();
  std::map<uint64_t, Completion> done;
  for (std::size_t w = 0; w < awaited.size(); ++w) {
    EXPECT_EQ(waited[w].size(), awaited[w].size());
    done.insert(waited[w].begin(), waited[w].end());
  }
  const auto until = std::chrono::steady_clock::now() + 30s;
  collect_into(e, done, [&] { return done.size() < expected.size() && std::chrono::steady_clock::now() < until; });
  ASSERT_EQ(done.size(), expected.size());
  for (const auto& [id, payload] : expected) {
    EXPECT_EQ(done[id].status, Status::ok) << done[id].payload;
    EXPECT_EQ(done[id].payload, payload) << "job " << id;
  }
  e.shutdown(true, false);
}

TEST_P(EngineTest, WaitForGivesUpAtItsDeadlineAndSeesAWorkerDeath) {
  Engine e(options(1, GetParam()));
  uint64_t fn = e.define_function("f");
  const uint64_t slow = e.submit(fn, 0, "sleep:500");
  std::optional<Completion> got;
  const Deadline deadline = Deadline::after(50ms);
  EXPECT_TRUE(e.wait_for(slow, deadline, got));  // still running
  EXPECT_FALSE(got.has_value());
  EXPECT_TRUE(deadline.expired());  // it gave up at its deadline, not before
  const uint64_t doomed = e.submit(fn, 0, "die");
  ASSERT_TRUE(e.wait_for(doomed, Deadline::after(30s), got));
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::worker_lost);
  EXPECT_FALSE(e.wait_for(12345678, Deadline::after(1s), got));  // no such job
  e.terminate();
}

INSTANTIATE_TEST_SUITE_P(Launchers, EngineTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "ForkServer" : "Spawn"; });
