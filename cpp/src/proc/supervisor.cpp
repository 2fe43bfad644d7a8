#include "shoal/proc/supervisor.hpp"

#include <poll.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <stdexcept>
#include <string>

#include "shoal/base/errors.hpp"

namespace shoal {

Supervisor::Supervisor(std::unique_ptr<Launcher> launcher, EventSink sink)
    : launcher_(std::move(launcher)), sink_(std::move(sink)), wake_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!wake_fd_) throw_errno("eventfd");
  thread_ = std::thread([this] { run(); });
}

Supervisor::~Supervisor() { stop(); }

void Supervisor::wake() {
  uint64_t one = 1;
  (void)!write(wake_fd_.get(), &one, sizeof one);
}

void Supervisor::request_spawn(uint32_t slot) {
  {
    LockGuard lk(mu_);
    spawn_requests_.push_back(slot);
  }
  wake();
}

void Supervisor::stop() {
  {
    LockGuard lk(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  wake();
  if (thread_.joinable()) thread_.join();
}

void Supervisor::inject_fault_for_testing() {
  fail_next_round_.store(true);
  wake();
}

void Supervisor::run() {
  // Nothing may escape this thread (it would end the process): an error here
  // is reported as a failed event, so the engine breaks the pool with the
  // reason instead of waiting for events that will never come.
  std::string reason;
  try {
    serve();
    return;
  } catch (const std::exception& e) {
    reason = e.what();
  } catch (...) {
    reason = "unknown exception";
  }
  try {
    sink_({ProcessEvent::Type::failed, 0, -1, 0, {},
           "internal error on the pool's supervisor thread (" + reason +
               "); workers can no longer be started or watched"});
  } catch (...) {  // the owner cannot even take the event (out of memory): nothing more to do
  }
  // Until stopped: the launcher's workers go with it then.
  for (;;) {
    {
      LockGuard lk(mu_);
      if (stopping_) break;
    }
    pollfd p{wake_fd_.get(), POLLIN, 0};
    if (poll(&p, 1, 1000) > 0) {
      uint64_t n;
      (void)!read(wake_fd_.get(), &n, sizeof n);
    }
  }
  try {
    launcher_->stop();
  } catch (...) {  // the launcher's destructor tries again
  }
}

void Supervisor::serve() {
  std::vector<ProcessEvent> events;
  for (;;) {
    std::vector<uint32_t> requests;
    bool stopping;
    {
      LockGuard lk(mu_);
      requests.swap(spawn_requests_);
      stopping = stopping_;
    }
    if (stopping) {
      launcher_->stop();
      return;
    }
    if (fail_next_round_.exchange(false)) throw std::runtime_error("fault injected by a test");
    for (uint32_t slot : requests) launcher_->spawn(slot, events);
    for (const auto& e : events) sink_(e);
    events.clear();

    std::vector<pollfd> fds{{wake_fd_.get(), POLLIN, 0}};
    for (int fd : launcher_->poll_fds()) fds.push_back({fd, POLLIN, 0});
    if (poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR) throw_errno("supervisor poll");
    if (fds[0].revents & POLLIN) {
      uint64_t n;
      (void)!read(wake_fd_.get(), &n, sizeof n);
    }
    for (std::size_t i = 1; i < fds.size(); ++i)
      if (fds[i].revents) launcher_->on_readable(fds[i].fd, events);
    for (const auto& e : events) sink_(e);
    events.clear();
  }
}

}  // namespace shoal
