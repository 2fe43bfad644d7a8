#include "shoal/base/futex.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

namespace shoal {
namespace {

long futex(std::atomic<uint32_t>& word, int op, uint32_t val, const timespec* timeout) {
  // Not FUTEX_PRIVATE_FLAG: the word may be shared with other processes.
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), op, val, timeout, nullptr, 0);
}

}  // namespace

bool futex_wait(std::atomic<uint32_t>& word, uint32_t expected, const Deadline& deadline) {
  auto left = deadline.remaining();
  timespec ts{};
  if (left) {
    if (left->count() == 0) return false;
    ts.tv_sec = static_cast<time_t>(left->count() / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(left->count() % 1'000'000'000);
  }
  long rc = futex(word, FUTEX_WAIT, expected, left ? &ts : nullptr);
  return !(rc == -1 && errno == ETIMEDOUT);
}

int futex_wake(std::atomic<uint32_t>& word, int count) {
  return static_cast<int>(futex(word, FUTEX_WAKE, static_cast<uint32_t>(count), nullptr));
}

int futex_wake_all(std::atomic<uint32_t>& word) { return futex_wake(word, INT_MAX); }

}  // namespace shoal
