// Time and memory limits. A job past its time limit, or a worker past the hard
// memory limit, is killed through its pidfd with a KillReason, so its exit is
// reported as that rather than as a crash (slots.cpp). A worker past the soft
// limit after a job is retired: it finishes what it holds, then is replaced.
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "engine/engine_impl.hpp"

namespace shoal {

using proto::Status;

namespace {

// Resident set size of a process, in bytes; 0 if it cannot be read.
uint64_t resident_bytes(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/statm", pid);
  FILE* f = std::fopen(path, "r");
  if (!f) return 0;
  unsigned long long size = 0, resident = 0;
  int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) : 0;
}

std::string mib(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

}  // namespace

void EngineImpl::check_soft_limit_locked(uint32_t slot) {
  Slot& s = slots_[slot];
  if (s.state != SlotState::alive || s.pid <= 0) return;
  const uint64_t rss = resident_bytes(s.pid);
  if (rss > options_.memory_soft_limit) {
    log_locked(LogLevel::info, worker_name(slot) + " uses " + mib(rss) + ", over the soft limit of " +
                                   mib(options_.memory_soft_limit) + "; replacing it after its current work");
    retire_locked(s);
  }
}

void EngineImpl::enforce_limits_locked() {
  const uint64_t now = monotonic_ns();
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
      log_locked(LogLevel::warning, why);
      s.kill_reason = KillReason{running, Status::timed_out, why};
      kill_worker(s.pidfd, s.pid);
      continue;
    }
    if (options_.memory_hard_limit) {
      const uint64_t rss = resident_bytes(s.pid);
      if (rss > options_.memory_hard_limit) {
        std::string why = "the task drove " + worker_name(i) + " to " + mib(rss) + " of resident memory, over the limit of " +
                          mib(options_.memory_hard_limit) + " (max_memory_per_worker); the worker was killed and replaced";
        log_locked(LogLevel::warning, why);
        s.kill_reason = KillReason{running, Status::memory_exceeded, why};
        kill_worker(s.pidfd, s.pid);
      }
    }
  }
}

}  // namespace shoal
