#pragma once
// The supervisor thread: starts workers through a Launcher when asked, watches
// them, and reports every start and exit to its owner (the engine). An error
// on its thread is reported as a failed event, never thrown.
#include <atomic>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "shoal/base/fd.hpp"
#include "shoal/base/mutex.hpp"
#include "shoal/base/thread_annotations.hpp"
#include "shoal/proc/launcher.hpp"

namespace shoal {

class Supervisor {
 public:
  using EventSink = std::function<void(const ProcessEvent&)>;

  Supervisor(std::unique_ptr<Launcher> launcher, EventSink sink);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Thread-safe; the spawn happens on the supervisor thread (so the workers'
  // parent-death signal is tied to a thread that lives as long as the pool).
  void request_spawn(uint32_t slot) SHOAL_EXCLUDES(mu_);
  // Stops the launcher (a fork server takes its workers along) and the thread.
  void stop() SHOAL_EXCLUDES(mu_);

  // Test only: the thread's next round throws, as an unexpected error would.
  void inject_fault_for_testing();

 private:
  void run() SHOAL_EXCLUDES(mu_);
  void serve() SHOAL_EXCLUDES(mu_);  // the thread's work, until stopped; throws on an error
  void wake();

  std::unique_ptr<Launcher> launcher_;
  EventSink sink_;
  UniqueFd wake_fd_;
  // Guards the requests from the engine to the supervisor thread; the
  // launcher itself is used by the supervisor thread alone.
  Mutex mu_;
  std::vector<uint32_t> spawn_requests_ SHOAL_GUARDED_BY(mu_);
  bool stopping_ SHOAL_GUARDED_BY(mu_) = false;
  std::atomic<bool> fail_next_round_{false};
  std::thread thread_;
};

}  // namespace shoal
