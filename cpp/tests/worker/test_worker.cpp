// A worker for the engine's C++ tests, speaking the pool protocol without Python.
//   test_worker <segment> <slot>     a spawned worker
//   test_worker forkserver           a fork server (control socket on fd 3)
// Job payloads: "echo:<text>" returns <text>; "pid" returns the worker's pid;
// "die" kills the worker with SIGKILL; "die-once:<path>" dies unless <path>
// exists (creating it first); "sleep:<ms>" sleeps, then returns "slept";
// "sleep:<ms>:<path>" creates <path> first and <path>.done after its sleep;
// "ppid" returns the parent's pid (a forked worker's: the fork server's);
// "spill-gone" publishes a result spilled into a segment of its own whose name
// is removed before the parent can read it (as another process's cleanup may);
// "spill-name:<name>" publishes a result that claims to be spilled into <name>;
// "big-nofd:<n>" returns <n> bytes with no descriptor left to spill them with;
// "parts:<n>:<end>" sends items 0..n-1 ahead ("p0", ...; one partial_result
// each), marks item n as running, then at <end> "done" returns "rest", "die"
// kills the worker, "hang" sleeps for a minute.
// A result that cannot be spilled (SpillError) is sent as an error result
// carrying its message, and the worker goes on, as the Python worker does.
#include <fcntl.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "shoal/base/errors.hpp"
#include "shoal/proc/launcher.hpp"
#include "shoal/wire/blob.hpp"
#include "shoal/engine/worker_endpoint.hpp"

using namespace shoal;

namespace {

std::string run(const std::string& job) {
  if (job.starts_with("echo:")) return job.substr(5);
  if (job == "pid") return std::to_string(getpid());
  if (job == "ppid") return std::to_string(getppid());
  if (job == "die") raise(SIGKILL);
  if (job.starts_with("die-once:")) {
    std::string path = job.substr(9);
    int fd = open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
    if (fd >= 0) {
      close(fd);
      raise(SIGKILL);
    }
    return "survived";
  }
  if (job.starts_with("sleep:")) {
    const std::size_t colon = job.find(':', 6);
    const std::string marker = colon == std::string::npos ? "" : job.substr(colon + 1);
    auto touch = [](const std::string& path) { close(open(path.c_str(), O_CREAT | O_WRONLY, 0600)); };
    if (!marker.empty()) touch(marker);  // the job runs
    std::this_thread::sleep_for(std::chrono::milliseconds(std::stoi(job.substr(6))));
    if (!marker.empty()) touch(marker + ".done");  // and ran to its end
    return "slept";
  }
  return "unknown job " + job;
}

int serve(const std::string& segment, uint32_t slot) {
  WorkerEndpoint ep(segment, slot);
  for (;;) {
    try {
      // In slices, as the Python worker waits: a wake-up lost to garbage in
      // the ring's notifier words costs a slice, not the worker.
      while (!ep.wait(Deadline::after(std::chrono::milliseconds(100)))) {
      }
    } catch (const ClosedError&) {
      return 0;
    }
    proto::FrameHeader h{};
    std::string payload;
    ep.take(h, [&](std::size_t n) {
      payload.resize(n);
      return reinterpret_cast<std::byte*>(payload.data());
    });
    if (h.kind == proto::Kind::initialize && payload == "fail") {
      ep.send_init_failed("initializer failed on purpose");
      return 3;
    }
    if (h.kind != proto::Kind::job) continue;
    if (payload == "spill-gone") {
      // A well-formed spill, named for the pool as results are, whose name
      // is gone by the time the parent reads it.
      const std::string name = spill_for(ep.spill_owner(), std::string(1 << 20, 'r'));
      shm_unlink(("/" + name).c_str());
      ep.send_result(h.id, static_cast<proto::Status>(static_cast<uint32_t>(proto::Status::ok) | proto::kSpilled),
                     1000, name);
      continue;
    }
    if (payload.starts_with("parts:")) {
      const std::size_t colon = payload.find(':', 6);
      const int n = std::stoi(payload.substr(6, colon - 6));
      const std::string end = payload.substr(colon + 1);
      for (int i = 0; i < n; ++i) {
        ep.mark_item(uint64_t(i));
        std::string piece = std::to_string(i);
        piece.insert(piece.begin(), 'p');  // (not "p" + ...: GCC 12 warns of a memcpy overlap there)
        ep.send_partial(h.id, proto::Status::ok, 1, piece);
      }
      ep.mark_item(uint64_t(n));
      if (end == "die") raise(SIGKILL);
      if (end == "hang") std::this_thread::sleep_for(std::chrono::minutes(1));
      ep.mark_item(std::nullopt);
      ep.send_result(h.id, proto::Status::ok, 1000, "rest");
      continue;
    }
    if (payload.starts_with("spill-name:")) {
      ep.send_result(h.id, static_cast<proto::Status>(static_cast<uint32_t>(proto::Status::ok) | proto::kSpilled),
                     1000, payload.substr(11));
      continue;
    }
    rlimit saved{};
    const bool starved = payload.starts_with("big-nofd:");
    if (starved) {
      payload = std::string(std::stoul(payload.substr(9)), 'b');
      getrlimit(RLIMIT_NOFILE, &saved);
      const int lowest_free = dup(0);
      close(lowest_free);
      rlimit none_left = saved;
      none_left.rlim_cur = static_cast<rlim_t>(lowest_free);  // every new descriptor fails with EMFILE
      setrlimit(RLIMIT_NOFILE, &none_left);
    } else {
      payload = run(payload);
    }
    try {
      ep.send_result(h.id, proto::Status::ok, 1000, payload);
    } catch (const SpillError& e) {
      if (starved) setrlimit(RLIMIT_NOFILE, &saved);
      ep.send_result(h.id, proto::Status::error, 1000, e.what());
      continue;
    }
    if (starved) setrlimit(RLIMIT_NOFILE, &saved);
  }
}

}  // namespace

// A worker that finds its shared memory corrupt says why on stderr and exits
// (as the Python worker does, with a traceback), never with std::terminate.
int serve_or_explain(const std::string& segment, uint32_t slot) {
  try {
    return serve(segment, slot);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shoal_test_worker: %s\n", e.what());
    return 4;
  }
}

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "forkserver") {
    ForkedWorker w = run_fork_server(3, {});
    return serve_or_explain(w.context, w.slot);
  }
  if (argc < 3) return 2;
  die_with_parent(getppid());
  return serve_or_explain(argv[1], static_cast<uint32_t>(std::stoul(argv[2])));
}
