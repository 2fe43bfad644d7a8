#pragma once
// Waiting in tests: for an event, never for a duration. A test that needs
// something to have happened (a worker running its job, a waiter blocked)
// waits for a sign of it, bounded by a generous limit that only a broken
// program reaches; how fast things happen is for bench/, not for tests.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <thread>

namespace shoal_test {

// Runs `f` on a thread; true if it returned within `limit`. A call that
// hangs ends the test binary (the hang is the failure; nothing else could
// clean up after it).
template <class F>
bool returns_within(std::chrono::seconds limit, F f) {
  auto done = std::async(std::launch::async, std::move(f));
  if (done.wait_for(limit) == std::future_status::ready) return true;
  ADD_FAILURE() << "call did not return within " << limit.count() << " s";
  std::_Exit(1);
}

// Polls `pred` until it holds: true as soon as it does, false if it still
// did not after `limit`.
template <class Pred>
bool eventually(Pred&& pred, std::chrono::milliseconds limit = std::chrono::seconds(30)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace shoal_test
