// A worker for the engine's C++ tests, speaking the pool protocol without Python.
//   test_worker <segment> <slot>     a spawned worker
//   test_worker forkserver           a fork server (control socket on fd 3)
// Job payloads: "echo:<text>" returns <text>; "pid" returns the worker's pid;
// "die" kills the worker with SIGKILL; "die-once:<path>" dies unless <path>
// exists (creating it first); "sleep:<ms>" sleeps, then returns "slept";
// "ppid" returns the parent's pid (a forked worker's: the fork server's);
// "spill-gone" publishes a result spilled into a segment of its own whose name
// is removed before the parent can read it (as another process's cleanup may).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "shoal/ipc/errors.hpp"
#include "shoal/proc/launcher.hpp"
#include "shoal/sched/blob.hpp"
#include "shoal/sched/worker_endpoint.hpp"

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
    std::this_thread::sleep_for(std::chrono::milliseconds(std::stoi(job.substr(6))));
    return "slept";
  }
  return "unknown job " + job;
}

int serve(const std::string& segment, uint32_t slot) {
  WorkerEndpoint ep(segment, slot);
  for (;;) {
    try {
      ep.wait(Deadline::never());
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
      std::string name;
      {
        Blob result(std::string(1 << 20, 'r'));
        name = std::string(result.wire(0));
      }  // the segment's owner unlinks it here
      ep.send_result(h.id, static_cast<proto::Status>(static_cast<uint32_t>(proto::Status::ok) | proto::kSpilled),
                     1000, name);
      continue;
    }
    ep.send_result(h.id, proto::Status::ok, 1000, run(payload));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "forkserver") {
    ForkedWorker w = run_fork_server(3, {});
    return serve(w.context, w.slot);
  }
  if (argc < 3) return 2;
  die_with_parent(getppid());
  return serve(argv[1], static_cast<uint32_t>(std::stoul(argv[2])));
}
