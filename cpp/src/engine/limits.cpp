// Time and memory limits. A job past its time limit, or a worker past the hard
// memory limit, is killed through its pidfd with a KillReason, so its exit is
// reported as that rather than as a crash (slots.cpp). A worker past the soft
// limit after a job is retired: it finishes what it holds, then is replaced.
// Sizes come from /proc/<pid>/statm, read without the engine's lock.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "engine/engine_impl.hpp"

namespace shoal {

using proto::Status;

namespace {

// Resident set size of a process, in bytes; 0 if it cannot be read. Three
// system calls, no allocation; called without the engine's lock.
uint64_t resident_bytes(pid_t pid) {
  static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/statm", pid);
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128];  // "size resident ...": the first two fields fit
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  unsigned long long size = 0, resident = 0;
  return std::sscanf(buf, "%llu %llu", &size, &resident) == 2 ? resident * page : 0;
}

std::string mib(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

}  // namespace

void EngineImpl::check_soft_limits_locked() {
  // Listed under the lock, read without it, acted on under it again for the
  // workers still in their slots (a pid read from /proc after the worker was
  // replaced may name another process: its size is then never used).
  struct Check {
    uint32_t slot;
    uint64_t incarnation;
    pid_t pid;
    uint64_t rss;
  };
  std::vector<Check> checks;
  rss_checks_due_ = false;
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    if (!s.rss_check_due) continue;
    s.rss_check_due = false;
    if (s.state == SlotState::alive && s.pid > 0 && !s.retired) checks.push_back({i, s.incarnation, s.pid, 0});
  }
  if (checks.empty()) return;
  {
    ScopedUnlock unlocked(mu_);
    for (auto& c : checks) c.rss = resident_bytes(c.pid);
  }
  for (const auto& c : checks) {
    Slot& s = slots_[c.slot];
    if (s.incarnation != c.incarnation || s.state != SlotState::alive || s.pid != c.pid || s.retired) continue;
    if (c.rss > options_.memory_soft_limit) {
      log_locked(LogLevel::info,
                 worker_name(c.slot) + " uses " + mib(c.rss) + ", over the soft limit of " +
                     mib(options_.memory_soft_limit) + "; replacing it after its current work",
                 static_cast<int32_t>(c.slot));
      retire_locked(s);
    }
  }
}

namespace {

// Whether the worker in `s` (its status words: `status`) still runs job
// `running` and may be killed for it.
bool runs(const Slot& s, const SlotStatus& status, uint64_t running) {
  if (s.state != SlotState::alive || s.pid <= 0 || s.kill_reason || running == 0) return false;
  if (status.running_job.load() != running) return false;
  return std::any_of(s.in_flight.begin(), s.in_flight.end(), [&](const Job& j) { return j.id == running; });
}

}  // namespace

void EngineImpl::enforce_limits_locked() {
  const uint64_t now = monotonic_ns();
  memory_checks_.clear();
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    if (s.state != SlotState::alive || s.pid <= 0 || s.kill_reason || s.in_flight.empty()) continue;
    const uint64_t running = layout_.status(i).running_job.load();
    if (running == 0) continue;
    auto job = std::find_if(s.in_flight.begin(), s.in_flight.end(), [&](const Job& j) { return j.id == running; });
    if (job == s.in_flight.end()) continue;
    const uint64_t started = layout_.status(i).started_ns.load();
    if (job->timeout_ns && started && now > started && now - started > job->timeout_ns) {
      char limit[32];
      std::snprintf(limit, sizeof limit, "%.3g s", double(job->timeout_ns) / 1e9);
      std::string why = "the task ran longer than its time limit of " + std::string(limit) + "; " + worker_name(i) +
                        " was stopped and replaced";
      log_locked(LogLevel::warning, why, static_cast<int32_t>(i), running);
      s.kill_reason = KillReason{running, Status::timed_out, why};
      kill_worker(s.pidfd, s.pid);
      continue;
    }
    if (options_.memory_hard_limit) memory_checks_.push_back({i, s.incarnation, s.pid, running});
  }
  if (memory_checks_.empty()) return;
  // The sizes are read without the lock (a file each); a worker that
  // finished that job, died or was replaced meanwhile is left alone.
  {
    ScopedUnlock unlocked(mu_);
    for (auto& c : memory_checks_) c.rss = resident_bytes(c.pid);
  }
  for (const auto& c : memory_checks_) {
    Slot& s = slots_[c.slot];
    if (s.incarnation != c.incarnation || s.pid != c.pid || !runs(s, layout_.status(c.slot), c.running)) continue;
    if (c.rss > options_.memory_hard_limit) {
      std::string why = "the task drove " + worker_name(c.slot) + " to " + mib(c.rss) +
                        " of resident memory, over the limit of " + mib(options_.memory_hard_limit) +
                        " (max_memory_per_worker); the worker was killed and replaced";
      log_locked(LogLevel::warning, why, static_cast<int32_t>(c.slot), c.running);
      s.kill_reason = KillReason{c.running, Status::memory_exceeded, why};
      kill_worker(s.pidfd, s.pid);
    }
  }
}

}  // namespace shoal
