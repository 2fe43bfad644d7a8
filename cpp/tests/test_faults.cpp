// Faults on the pool's own threads (engine, supervisor) and in its launchers:
// each one fails the jobs it concerns, or breaks the pool, with a clear reason;
// none ends the process or leaves a waiter hanging.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "shoal/proc/launcher.hpp"
#include "shoal/proc/supervisor.hpp"
#include "shoal/engine/engine.hpp"
#include "engine_options.hpp"
#include "returns_within.hpp"

using namespace std::chrono_literals;
using shoal::Completion;
using shoal::Deadline;
using shoal::Engine;
using shoal::EngineOptions;
using shoal::ProcessEvent;
using shoal::TestFault;
using Status = shoal::proto::Status;

namespace {

using shoal_test::contains;
using shoal_test::options;

// Collects until `count` jobs finished (or 30 s passed); log records go to `logs`.
std::map<uint64_t, Completion> collect(Engine& e, std::size_t count, std::vector<std::string>* logs = nullptr) {
  std::map<uint64_t, Completion> done;
  const auto until = std::chrono::steady_clock::now() + 30s;
  std::vector<Completion> batch;
  while (done.size() < count && std::chrono::steady_clock::now() < until) {
    batch.clear();
    if (!e.collect(batch, Deadline::after(50ms))) break;
    for (auto& c : batch) {
      if (c.status == Status::log) {
        if (logs) logs->push_back(c.payload);
        continue;
      }
      EXPECT_FALSE(done.count(c.job_id)) << "job " << c.job_id << " delivered twice";
      done[c.job_id] = std::move(c);
    }
  }
  return done;
}

// Log records until one contains `part` (or 30 s passed).
bool logged(Engine& e, const std::string& part, std::vector<std::string>& logs) {
  const auto until = std::chrono::steady_clock::now() + 30s;
  for (;;) {
    for (const auto& text : logs)
      if (contains(text, part)) return true;
    if (std::chrono::steady_clock::now() > until) return false;
    std::vector<Completion> batch;
    const bool running = e.collect(batch, Deadline::after(50ms));
    for (auto& c : batch)
      if (c.status == Status::log) logs.push_back(c.payload);
    if (!running && batch.empty()) {
      for (const auto& text : logs)
        if (contains(text, part)) return true;
      return false;
    }
  }
}

using shoal_test::returns_within;

// Waits (up to 30 s) until `pred` holds.
template <class Pred>
bool eventually(Pred pred) {
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

class FaultTest : public ::testing::TestWithParam<bool> {};  // fork server?

}  // namespace

// A result spilled into a segment of its own, whose name is gone when the
// parent comes to read it (removed by another process's cleanup): taken by the
// engine thread (nobody collects meanwhile), it used to end the process.
TEST_P(FaultTest, LostSpilledResultOnTheEngineThreadFailsOnlyItsJob) {
  Engine e(options(1, GetParam()));
  uint64_t fn = e.define_function("f");
  const uint64_t lost = e.submit(fn, 0, "spill-gone");
  ASSERT_TRUE(eventually([&] { return e.stats().completed >= 1; })) << "the lost result was never accounted for";
  std::vector<std::string> logs;
  auto done = collect(e, 1, &logs);
  ASSERT_TRUE(done.count(lost));
  EXPECT_EQ(done[lost].status, Status::worker_lost);
  EXPECT_TRUE(contains(done[lost].payload, "result was lost")) << done[lost].payload;
  EXPECT_TRUE(contains(done[lost].payload, "does not exist")) << done[lost].payload;
  EXPECT_TRUE(logged(e, "result was lost", logs));
  // The pool goes on.
  const uint64_t next = e.submit(fn, 0, "echo:after");
  done = collect(e, 1);
  ASSERT_TRUE(done.count(next));
  EXPECT_EQ(done[next].payload, "after");
  EXPECT_FALSE(e.broken().has_value());
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
}

// The same, taken by a caller in wait_for() and by a collector: neither sees
// an exception, and neither waits for a result that will never come.
TEST_P(FaultTest, LostSpilledResultReachesWaiterAndCollectorAsAFailedJob) {
  Engine e(options(2, GetParam()));
  uint64_t fn = e.define_function("f");
  const uint64_t awaited = e.submit(fn, 0, "spill-gone");
  std::optional<Completion> got;
  ASSERT_NO_THROW(ASSERT_TRUE(e.wait_for(awaited, Deadline::after(30s), got)));
  ASSERT_TRUE(got.has_value()) << "wait_for() timed out on a lost result";
  EXPECT_EQ(got->status, Status::worker_lost);
  EXPECT_TRUE(contains(got->payload, "result was lost")) << got->payload;

  const uint64_t collected = e.submit(fn, 0, "spill-gone");
  const uint64_t fine = e.submit(fn, 0, "echo:fine");
  std::map<uint64_t, Completion> done;
  ASSERT_NO_THROW(done = collect(e, 2));
  ASSERT_TRUE(done.count(collected));
  EXPECT_EQ(done[collected].status, Status::worker_lost);
  ASSERT_TRUE(done.count(fine));
  EXPECT_EQ(done[fine].payload, "fine");
}

// The test hook the Python tests use: the segment of a real, big result is
// removed just before the parent reads it.
TEST_P(FaultTest, InjectedLossOfASpilledResult) {
  Engine e(options(1, GetParam()));
  uint64_t fn = e.define_function("f");
  const std::string big(e.inline_payload_limit() * 2, 'b');
  e.inject_fault_for_testing(TestFault::lose_next_spilled_result);
  const uint64_t lost = e.submit(fn, 0, "echo:" + big);
  const uint64_t kept = e.submit(fn, 0, "echo:" + big);
  auto done = collect(e, 2);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[lost].status, Status::worker_lost);
  EXPECT_TRUE(contains(done[lost].payload, "result was lost")) << done[lost].payload;
  EXPECT_EQ(done[kept].status, Status::ok);
  EXPECT_EQ(done[kept].payload.size(), big.size());
}

// An error on the engine thread breaks the pool with its reason: queued and
// running jobs fail, a waiter wakes, later submits are answered, and
// shutdown returns. Before, it ended the process.
TEST_P(FaultTest, ErrorOnTheEngineThreadBreaksThePoolAndWakesEveryWaiter) {
  Engine e(options(2, GetParam()));
  uint64_t fn = e.define_function("f");
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(e.submit(fn, 0, "sleep:60000"));
  auto waiter = std::async(std::launch::async, [&] {
    std::optional<Completion> got;
    e.wait_for(ids.back(), Deadline::after(30s), got);
    return got;
  });
  e.inject_fault_for_testing(TestFault::engine_thread_throws);
  std::vector<std::string> logs;
  auto got = waiter.get();
  ASSERT_TRUE(got.has_value()) << "the waiter was not woken";
  auto done = collect(e, ids.size() - 1, &logs);
  done[got->job_id] = *got;
  ASSERT_EQ(done.size(), ids.size());
  for (uint64_t id : ids) {
    EXPECT_EQ(done[id].status, Status::broken);
    EXPECT_TRUE(contains(done[id].payload, "internal error on the pool's engine thread")) << done[id].payload;
    EXPECT_TRUE(contains(done[id].payload, "fault injected by a test")) << done[id].payload;
  }
  ASSERT_TRUE(e.broken().has_value());
  EXPECT_TRUE(logged(e, "internal error on the pool's engine thread", logs));
  const uint64_t later = e.submit(fn, 0, "echo:late");
  done = collect(e, 1);
  ASSERT_TRUE(done.count(later));
  EXPECT_EQ(done[later].status, Status::broken);
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
  EXPECT_TRUE(e.worker_pids().empty());
}

// An error on the supervisor thread: nothing watches the workers any more, so
// the pool breaks with the reason and stops without waiting for exits that
// nobody will report.
TEST_P(FaultTest, ErrorOnTheSupervisorThreadBreaksThePool) {
  Engine e(options(2, GetParam()));
  uint64_t fn = e.define_function("f");
  const uint64_t running = e.submit(fn, 0, "sleep:60000");
  e.inject_fault_for_testing(TestFault::supervisor_thread_throws);
  std::vector<std::string> logs;
  auto done = collect(e, 1, &logs);
  ASSERT_TRUE(done.count(running));
  EXPECT_EQ(done[running].status, Status::broken);
  EXPECT_TRUE(contains(done[running].payload, "supervisor thread")) << done[running].payload;
  ASSERT_TRUE(e.broken().has_value());
  EXPECT_TRUE(logged(e, "supervisor thread", logs));
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
  EXPECT_TRUE(e.worker_pids().empty());
}

// A job whose payload cannot be spilled (no descriptor left for its segment)
// fails alone; the submit does not throw, and the pool goes on.
TEST_P(FaultTest, PayloadThatCannotBeSpilledFailsOnlyItsJob) {
  Engine e(options(1, GetParam()));
  uint64_t fn = e.define_function("f");
  const std::string big(e.inline_payload_limit() * 2, 'p');
  const uint64_t warm = e.submit(fn, 0, "echo:warm");  // the worker is up: no descriptor needed for it
  ASSERT_EQ(collect(e, 1).count(warm), 1u);
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  const int lowest_free = dup(0);
  ASSERT_GE(lowest_free, 0);
  close(lowest_free);
  rlimit none_left = saved;
  none_left.rlim_cur = static_cast<rlim_t>(lowest_free);  // every new descriptor fails with EMFILE
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &none_left), 0);
  uint64_t doomed = 0;
  bool threw = false;
  try {
    doomed = e.submit(fn, 0, "echo:" + big);
  } catch (...) {
    threw = true;
  }
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  ASSERT_FALSE(threw) << "submit threw";
  const uint64_t fine = e.submit(fn, 0, "echo:" + big);
  auto done = collect(e, 2);
  ASSERT_TRUE(done.count(doomed));
  EXPECT_EQ(done[doomed].status, Status::broken);
  EXPECT_TRUE(contains(done[doomed].payload, "could not be handed to a worker")) << done[doomed].payload;
  EXPECT_TRUE(contains(done[doomed].payload, "could not be spilled to /dev/shm")) << done[doomed].payload;
  ASSERT_TRUE(done.count(fine));
  EXPECT_EQ(done[fine].status, Status::ok);
  EXPECT_FALSE(e.broken().has_value());
}

// A result that cannot be spilled (here its worker has no descriptor left for
// the segment; a full /dev/shm is tested in tests/test_small_shm.py) fails its
// job alone: the worker is told (SpillError) before anything is sent, reports
// the job as failed through the result path, and goes on. No name is left.
TEST_P(FaultTest, ResultThatCannotBeSpilledFailsOnlyItsJobAndItsWorkerGoesOn) {
  Engine e(options(1, GetParam()));
  uint64_t fn = e.define_function("f");
  const std::size_t n = e.inline_payload_limit() * 2 + 7;
  const uint64_t warm = e.submit(fn, 0, "pid");
  auto first = collect(e, 1);
  ASSERT_EQ(first.count(warm), 1u);
  auto names = [] {
    std::vector<std::string> found;
    const std::string prefix = "shoal-" + std::to_string(getpid()) + "-";
    for (const auto& entry : std::filesystem::directory_iterator("/dev/shm"))
      if (entry.path().filename().string().starts_with(prefix)) found.push_back(entry.path().filename().string());
    std::sort(found.begin(), found.end());
    return found;
  };
  const auto before = names();
  const uint64_t doomed = e.submit(fn, 0, "big-nofd:" + std::to_string(n));
  const std::string big(n, 'q');
  const uint64_t fine = e.submit(fn, 0, "echo:" + big);
  auto done = collect(e, 2);
  ASSERT_TRUE(done.count(doomed));
  EXPECT_EQ(done[doomed].status, Status::error);
  EXPECT_TRUE(contains(done[doomed].payload, "the result (" + std::to_string(n) + " bytes) could not be spilled to "
                                             "/dev/shm: Too many open files"))
      << done[doomed].payload;
  ASSERT_TRUE(done.count(fine));
  EXPECT_EQ(done[fine].status, Status::ok);
  EXPECT_EQ(done[fine].payload, big);  // spilled
  const uint64_t again = e.submit(fn, 0, "pid");
  auto last = collect(e, 1);
  ASSERT_EQ(last.count(again), 1u);
  EXPECT_EQ(last[again].payload, first[warm].payload) << "the worker was replaced";
  EXPECT_EQ(e.stats().workers_lost, 0u);
  EXPECT_FALSE(e.broken().has_value());
  EXPECT_EQ(names(), before);
}

INSTANTIATE_TEST_SUITE_P(Launchers, FaultTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "ForkServer" : "Spawn"; });

// ---- fork servers that keep dying --------------------------------------------

// A fork server that exits at once (an interpreter that cannot import shoal)
// used to be restarted in an endless loop while the pool waited for good.
TEST(ForkServerFaults, ServerThatExitsAtOnceBreaksThePoolWithItsExitStatus) {
  auto o = options(2, true);
  o.argv = {"/bin/sh", "-c", "exit 7"};
  Engine e(o);
  uint64_t fn = e.define_function("f");
  const uint64_t id = e.submit(fn, 0, "echo:x");
  std::vector<std::string> logs;
  auto done = collect(e, 1, &logs);
  ASSERT_TRUE(done.count(id)) << "the job waited for a fork server that never came";
  EXPECT_EQ(done[id].status, Status::broken);
  const std::string& reason = done[id].payload;
  EXPECT_TRUE(contains(reason, "fork server keeps dying")) << reason;
  EXPECT_TRUE(contains(reason, "exited with code 7")) << reason;
  ASSERT_TRUE(e.broken().has_value());
  EXPECT_TRUE(contains(*e.broken(), "fork server keeps dying"));
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
  // Logged as an error, and no worker "replacement" is promised for it.
  std::vector<Completion> rest;
  while (e.collect(rest, Deadline::after(1s))) {
  }
  for (const auto& c : rest)
    if (c.status == Status::log) logs.push_back(c.payload);
  EXPECT_TRUE(std::any_of(logs.begin(), logs.end(), [](const std::string& t) { return contains(t, "keeps dying"); }));
  for (const auto& text : logs) EXPECT_FALSE(contains(text, "starting a replacement")) << text;
}

// A server that cannot even be started again (its program was removed):
// the error used to escape the supervisor thread and end the process.
TEST(ForkServerFaults, ServerThatCannotBeStartedAgainBreaksThePool) {
  const auto program = std::filesystem::temp_directory_path() / ("shoal-test-worker-" + std::to_string(getpid()));
  std::filesystem::copy_file(SHOAL_TEST_WORKER, program, std::filesystem::copy_options::overwrite_existing);
  auto o = options(1, true);
  o.argv = {program.string(), "forkserver"};
  Engine e(o);
  uint64_t fn = e.define_function("f");
  const uint64_t first = e.submit(fn, 0, "ppid");
  auto done = collect(e, 1);
  ASSERT_TRUE(done.count(first));
  ASSERT_EQ(done[first].status, Status::ok) << done[first].payload;
  const pid_t server = static_cast<pid_t>(std::stol(done[first].payload));
  ASSERT_GT(server, 1);
  ASSERT_NE(server, getpid());
  std::filesystem::remove(program);
  kill(server, SIGKILL);
  ASSERT_TRUE(eventually([&] { return e.broken().has_value(); }));
  EXPECT_TRUE(contains(*e.broken(), "fork server keeps dying")) << *e.broken();
  EXPECT_TRUE(contains(*e.broken(), "could not be started")) << *e.broken();
  EXPECT_TRUE(contains(*e.broken(), "No such file or directory")) << *e.broken();
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
}

// At launcher level: after giving up, every request is answered (spawn_failed
// with the reason), the queued ones and later ones alike.
TEST(ForkServerFaults, LauncherAnswersEveryRequestOnceItGaveUp) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<ProcessEvent> events;
  shoal::Supervisor sup(shoal::make_fork_server_launcher({"/bin/false"}, "ctx"), [&](const ProcessEvent& ev) {
    std::lock_guard lk(mu);
    events.push_back(ev);
    cv.notify_all();
  });
  sup.request_spawn(0);
  sup.request_spawn(1);
  auto count = [&](ProcessEvent::Type t) {
    return std::count_if(events.begin(), events.end(), [&](const ProcessEvent& ev) { return ev.type == t; });
  };
  {
    std::unique_lock lk(mu);
    ASSERT_TRUE(cv.wait_for(lk, 30s, [&] {
      return count(ProcessEvent::Type::failed) == 1 && count(ProcessEvent::Type::spawn_failed) == 2;
    }));
  }
  sup.request_spawn(0);
  {
    std::unique_lock lk(mu);
    ASSERT_TRUE(cv.wait_for(lk, 30s, [&] { return count(ProcessEvent::Type::spawn_failed) == 3; }));
    for (const auto& ev : events) {
      EXPECT_NE(ev.type, ProcessEvent::Type::spawned);
      if (ev.type != ProcessEvent::Type::exited) {
        EXPECT_TRUE(contains(ev.reason, "fork server keeps dying"));
      }
    }
    EXPECT_EQ(count(ProcessEvent::Type::failed), 1);
  }
  EXPECT_TRUE(returns_within(30s, [&] { sup.stop(); }));
}

// A server that dies while spawn requests wait in its socket: a fresh server
// gets them, instead of the slots waiting for good for a worker nobody forks.
TEST(ForkServerFaults, RequestsADeadServerLeftUnansweredGoToItsSuccessor) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds), 0);
  const pid_t server = fork();
  ASSERT_GE(server, 0);
  if (server == 0) {
    dup2(fds[1], 3);
    execl(SHOAL_TEST_WORKER, SHOAL_TEST_WORKER, "forkserver", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  kill(server, SIGSTOP);  // it reads no request
  auto o = options(2, true);
  o.fork_server_handle = shoal::ForkServerHandle{server, fds[0]};
  Engine e(o);  // asks the stopped server for both workers
  uint64_t fn = e.define_function("f");
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(e.submit(fn, 0, "echo:" + std::to_string(i)));
  kill(server, SIGKILL);
  auto done = collect(e, ids.size());
  ASSERT_EQ(done.size(), ids.size()) << "jobs waited for workers the dead server was asked for";
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(done[ids[i]].status, Status::ok);
    EXPECT_EQ(done[ids[i]].payload, std::to_string(i));
  }
  EXPECT_FALSE(e.broken().has_value());
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
}

// A server that did its work and is then killed is replaced, however often:
// only servers that fork nobody count against it.
TEST(ForkServerFaults, KilledServerThatForkedWorkersIsReplacedEachTime) {
  Engine e(options(1, true));
  uint64_t fn = e.define_function("f");
  uint32_t killed = 0;
  for (int round = 0; killed < shoal::kFailedForkServerStarts + 2; ++round) {
    ASSERT_LT(round, 100) << "no live server's worker answered";
    // Retried if it reaches the last server's worker as that dies with it.
    const uint64_t id = e.submit(fn, 0, "ppid", /*retries=*/3);
    auto done = collect(e, 1);
    ASSERT_TRUE(done.count(id));
    ASSERT_EQ(done[id].status, Status::ok) << done[id].payload;
    const pid_t server = static_cast<pid_t>(std::stol(done[id].payload));
    // 1: it reached the last server's worker orphaned, before its death
    // signal (PR_SET_PDEATHSIG) arrived; ask again.
    if (server == 1) continue;
    ASSERT_NE(server, getpid());
    kill(server, SIGKILL);
    ++killed;
  }
  const uint64_t last = e.submit(fn, 0, "echo:still here", /*retries=*/3);
  auto done = collect(e, 1);
  ASSERT_TRUE(done.count(last));
  EXPECT_EQ(done[last].payload, "still here");
  EXPECT_FALSE(e.broken().has_value());
}
