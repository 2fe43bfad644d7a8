#include "shoal/proc/supervisor.hpp"

#include <poll.h>
#include <sys/eventfd.h>

#include <cerrno>

#include "shoal/ipc/errors.hpp"

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
    std::lock_guard lk(mu_);
    spawn_requests_.push_back(slot);
  }
  wake();
}

void Supervisor::stop() {
  {
    std::lock_guard lk(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  wake();
  if (thread_.joinable()) thread_.join();
}

void Supervisor::run() {
  std::vector<ProcessEvent> events;
  for (;;) {
    std::vector<uint32_t> requests;
    bool stopping;
    {
      std::lock_guard lk(mu_);
      requests.swap(spawn_requests_);
      stopping = stopping_;
    }
    if (stopping) {
      launcher_->stop();
      return;
    }
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
