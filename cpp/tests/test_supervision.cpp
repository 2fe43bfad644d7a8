// Worker supervision whatever the caller's SIGCHLD disposition, and pidfds as
// the handle workers are signalled by.
//
// A program may set SIGCHLD to SIG_IGN: the kernel then reaps its children
// itself (no zombie, no SIGCHLD, waitpid() fails with ECHILD), and processes
// it starts inherit the setting. Deaths must still be seen and reported.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "shoal/proc/launcher.hpp"
#include "shoal/base/pidfd.hpp"
#include "shoal/proc/supervisor.hpp"
#include "shoal/engine/engine.hpp"
#include "engine_options.hpp"
#include "returns_within.hpp"
#include "shoal/engine/pool_layout.hpp"

using namespace std::chrono_literals;
using shoal::Completion;
using shoal::Deadline;
using shoal::Engine;
using shoal::EngineOptions;
using shoal::ProcessEvent;
using Status = shoal::proto::Status;

namespace {

using shoal_test::contains;
using shoal_test::options;

// Sets SIGCHLD's disposition for the test's lifetime and restores the old one.
class SigchldDisposition {
 public:
  explicit SigchldDisposition(bool ignore) : active_(ignore) {
    if (active_) previous_ = signal(SIGCHLD, SIG_IGN);
  }
  ~SigchldDisposition() {
    if (active_) signal(SIGCHLD, previous_);
  }
  SigchldDisposition(const SigchldDisposition&) = delete;
  SigchldDisposition& operator=(const SigchldDisposition&) = delete;

 private:
  bool active_;
  sighandler_t previous_ = SIG_DFL;
};

using shoal_test::returns_within;

// Collects until `count` jobs finished (or 30 s passed); log records go to `logs`.
std::map<uint64_t, Completion> collect(Engine& e, std::size_t count, std::vector<Completion>* logs = nullptr) {
  std::map<uint64_t, Completion> done;
  const auto until = std::chrono::steady_clock::now() + 30s;
  std::vector<Completion> batch;
  while (done.size() < count && std::chrono::steady_clock::now() < until) {
    batch.clear();
    if (!e.collect(batch, Deadline::after(50ms))) break;
    for (auto& c : batch) {
      if (c.status == Status::log) {
        if (logs) logs->push_back(std::move(c));
        continue;
      }
      EXPECT_FALSE(done.count(c.job_id)) << "job " << c.job_id << " delivered twice";
      done[c.job_id] = std::move(c);
    }
  }
  return done;
}

// (fork server?, SIGCHLD ignored?)
class SupervisionTest : public ::testing::TestWithParam<std::tuple<bool, bool>> {
 protected:
  bool fork_server() const { return std::get<0>(GetParam()); }
  bool ignored() const { return std::get<1>(GetParam()); }
};

std::string param_name(const ::testing::TestParamInfo<std::tuple<bool, bool>>& info) {
  return std::string(std::get<0>(info.param) ? "ForkServer" : "Spawn") +
         (std::get<1>(info.param) ? "SigchldIgnored" : "SigchldDefault");
}

}  // namespace

TEST_P(SupervisionTest, DeadWorkersJobFailsLaterJobsRunAndShutdownReturns) {
  SigchldDisposition disposition(ignored());
  Engine e(options(2, fork_server()));
  uint64_t fn = e.define_function("f");
  for (int round = 0; round < 2; ++round) {  // the replacement's death is seen too
    const uint64_t doomed = e.submit(fn, 0, "die");
    auto done = collect(e, 1);
    ASSERT_TRUE(done.count(doomed)) << "a dead worker's job stayed pending";
    EXPECT_EQ(done[doomed].status, Status::worker_lost);
  }
  std::map<uint64_t, std::string> expected;
  for (int i = 0; i < 20; ++i) expected[e.submit(fn, 0, "echo:" + std::to_string(i))] = std::to_string(i);
  auto done = collect(e, expected.size());
  ASSERT_EQ(done.size(), expected.size());
  for (auto& [id, text] : expected) EXPECT_EQ(done[id].payload, text);
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
  EXPECT_TRUE(e.worker_pids().empty());
}

TEST_P(SupervisionTest, RetiredWorkersAreReplacedWithoutWarnings) {
  SigchldDisposition disposition(ignored());
  auto o = options(1, fork_server());
  o.max_tasks_per_child = 3;
  Engine e(o);
  uint64_t fn = e.define_function("f");
  std::map<uint64_t, std::string> expected;
  for (int i = 0; i < 10; ++i) expected[e.submit(fn, 0, "echo:" + std::to_string(i))] = std::to_string(i);
  std::vector<Completion> logs;
  auto done = collect(e, expected.size(), &logs);
  ASSERT_EQ(done.size(), expected.size());
  for (auto& [id, text] : expected) EXPECT_EQ(done[id].payload, text);
  EXPECT_TRUE(returns_within(30s, [&] { e.shutdown(true, false); }));
  EXPECT_EQ(e.stats().workers_lost, 0u);
  for (const auto& c : logs)
    EXPECT_LT(c.run_ns, static_cast<uint64_t>(shoal::LogLevel::warning)) << "unexpected warning: " << c.payload;
}

TEST_P(SupervisionTest, TerminateKillsBusyWorkers) {
  SigchldDisposition disposition(ignored());
  Engine e(options(2, fork_server()));
  uint64_t fn = e.define_function("f");
  // Each job leaves a file when it starts (and another if it ever ends).
  auto marker = [&](int i) {
    return "/tmp/shoal-supervision-" + std::to_string(getpid()) + "-" + std::to_string(fork_server()) + "-" +
           std::to_string(i);
  };
  auto exists = [](const std::string& path) { return std::ifstream(path).good(); };
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(e.submit(fn, 0, "sleep:60000:" + marker(i)));
  auto running = [&] {
    int n = 0;
    for (int i = 0; i < 4; ++i) n += exists(marker(i));
    return n;
  };
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (running() < 2 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(running(), 2) << "both workers busy";
  EXPECT_TRUE(returns_within(30s, [&] { e.terminate(); }));  // their jobs would run a minute
  EXPECT_TRUE(e.worker_pids().empty());
  for (int i = 0; i < 4; ++i) {
    EXPECT_FALSE(exists(marker(i) + ".done")) << "job " << i << " ran to its end";
    unlink(marker(i).c_str());
  }
}

INSTANTIATE_TEST_SUITE_P(Launchers, SupervisionTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()), param_name);

// ---- the launchers on their own, under a Supervisor ------------------------

namespace {

// The supervisor's events, gathered for a test to wait on.
class EventLog {
 public:
  shoal::Supervisor::EventSink sink() {
    return [this](const ProcessEvent& e) {
      std::lock_guard lk(mu_);
      events_.push_back(e);
      cv_.notify_all();
    };
  }
  // The `n`-th event (from 0) of type `type`, waiting up to 30 s for it.
  std::optional<ProcessEvent> wait(ProcessEvent::Type type, std::size_t n = 0) {
    std::unique_lock lk(mu_);
    std::optional<ProcessEvent> found;
    cv_.wait_for(lk, 30s, [&] {
      std::size_t seen = 0;
      for (const auto& e : events_)
        if (e.type == type && seen++ == n) {
          found = e;
          return true;
        }
      return false;
    });
    return found;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<ProcessEvent> events_;
};

// The pid a pidfd refers to, from /proc/self/fdinfo (-1 once it has exited).
pid_t pid_of_pidfd(int fd) {
  std::ifstream in("/proc/self/fdinfo/" + std::to_string(fd));
  std::string key;
  while (in >> key) {
    if (key == "Pid:") {
      long pid = 0;
      in >> pid;
      return static_cast<pid_t>(pid);
    }
  }
  return 0;
}

class LauncherTest : public ::testing::TestWithParam<bool> {};  // SIGCHLD ignored?

}  // namespace

TEST_P(LauncherTest, SpawnedWorkersExitIsReportedWithItsPidfd) {
  SigchldDisposition disposition(GetParam());
  EventLog log;
  // The launcher appends the slot: sh -c 'exit 3' 0
  shoal::Supervisor sup(shoal::make_spawn_launcher({"/bin/sh", "-c", "exit 3"}), log.sink());
  for (std::size_t round = 0; round < 2; ++round) {  // the supervisor keeps working after an exit
    sup.request_spawn(0);
    auto spawned = log.wait(ProcessEvent::Type::spawned, round);
    ASSERT_TRUE(spawned);
    // With SIGCHLD ignored, a worker this quick may be gone and reaped before
    // the launcher opens its pidfd: it is then reported started and ended.
    if (!GetParam()) {
      ASSERT_TRUE(spawned->pidfd && *spawned->pidfd);
    }
    auto exited = log.wait(ProcessEvent::Type::exited, round);
    ASSERT_TRUE(exited) << "the worker's exit was never reported";
    EXPECT_EQ(exited->pid, spawned->pid);
    if (GetParam()) {
      // The kernel reaped it: how it ended cannot be known.
      EXPECT_EQ(exited->wait_status, shoal::kExitStatusUnknown);
    } else {
      ASSERT_TRUE(WIFEXITED(exited->wait_status));
      EXPECT_EQ(WEXITSTATUS(exited->wait_status), 3);
    }
  }
  EXPECT_TRUE(returns_within(30s, [&] { sup.stop(); }));
}

TEST_P(LauncherTest, SpawnedWorkerKilledThroughItsPidfd) {
  SigchldDisposition disposition(GetParam());
  EventLog log;
  shoal::Supervisor sup(shoal::make_spawn_launcher({"/bin/sh", "-c", "exec sleep 60"}), log.sink());
  sup.request_spawn(0);
  auto spawned = log.wait(ProcessEvent::Type::spawned);
  ASSERT_TRUE(spawned && spawned->pidfd && *spawned->pidfd);
  EXPECT_EQ(pid_of_pidfd(spawned->pidfd->get()), spawned->pid);
  ASSERT_EQ(shoal::signal_process(spawned->pidfd->get(), spawned->pid, SIGKILL), 0);
  auto exited = log.wait(ProcessEvent::Type::exited);
  ASSERT_TRUE(exited);
  if (!GetParam()) {
    ASSERT_TRUE(WIFSIGNALED(exited->wait_status));
    EXPECT_EQ(WTERMSIG(exited->wait_status), SIGKILL);
  }
  // The pidfd outlives the worker while someone holds it; signalling the dead
  // process through it fails cleanly instead of reaching a pid's next owner.
  // (A process the kernel reaps itself may still be finishing its exit for a
  // moment after its pidfd turned readable; a signal then reaches only it.)
  int rc = 0, err = 0;
  for (int i = 0; i < 5000 && rc == 0; ++i) {
    rc = shoal::signal_process(spawned->pidfd->get(), spawned->pid, 0);
    err = errno;
    if (rc == 0) std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(rc, -1);
  EXPECT_EQ(err, ESRCH);
  EXPECT_TRUE(returns_within(30s, [&] { sup.stop(); }));
}

TEST_P(LauncherTest, ForkServerPassesEachWorkersPidfdAndReportsItsDeath) {
  SigchldDisposition disposition(GetParam());
  // A real pool segment, so the forked test worker has rings to wait on.
  auto layout = shoal::PoolLayout::create(1, 64 * 1024);
  EventLog log;
  shoal::Supervisor sup(shoal::make_fork_server_launcher({SHOAL_TEST_WORKER, "forkserver"}, layout.segment().name()),
                        log.sink());
  for (std::size_t round = 0; round < 2; ++round) {
    sup.request_spawn(0);
    auto spawned = log.wait(ProcessEvent::Type::spawned, round);
    ASSERT_TRUE(spawned);
    ASSERT_TRUE(spawned->pidfd && *spawned->pidfd) << "no pidfd came with the spawned reply";
    EXPECT_EQ(pid_of_pidfd(spawned->pidfd->get()), spawned->pid);
    ASSERT_EQ(shoal::signal_process(spawned->pidfd->get(), spawned->pid, SIGKILL), 0);
    auto exited = log.wait(ProcessEvent::Type::exited, round);
    ASSERT_TRUE(exited) << "the fork server never reported its worker's death";
    EXPECT_EQ(exited->pid, spawned->pid);
    // The fork server collects real statuses whatever it inherited.
    ASSERT_TRUE(WIFSIGNALED(exited->wait_status)) << exited->wait_status;
    EXPECT_EQ(WTERMSIG(exited->wait_status), SIGKILL);
  }
  EXPECT_TRUE(returns_within(30s, [&] { sup.stop(); }));
  layout.unlink();
}

INSTANTIATE_TEST_SUITE_P(Sigchld, LauncherTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Ignored" : "Default"; });
