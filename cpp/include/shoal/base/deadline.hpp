#pragma once
// A point in time after which a wait gives up; "never" when no timeout was given.
#include <chrono>
#include <optional>

namespace shoal {

class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  static Deadline never() { return Deadline{}; }
  static Deadline after(std::chrono::nanoseconds d) { return Deadline{Clock::now() + d}; }
  static Deadline after_seconds(double seconds) {
    if (seconds < 0) seconds = 0;
    return after(std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::duration<double>(seconds)));
  }
  // Python-style timeout: nullopt waits forever.
  static Deadline from_timeout(std::optional<double> seconds) {
    return seconds ? after_seconds(*seconds) : never();
  }

  bool is_never() const { return !at_; }
  bool expired() const { return at_ && Clock::now() >= *at_; }
  // Time left, clamped at zero; nullopt for "never".
  std::optional<std::chrono::nanoseconds> remaining() const {
    if (!at_) return std::nullopt;
    auto left = *at_ - Clock::now();
    return left.count() > 0 ? std::chrono::duration_cast<std::chrono::nanoseconds>(left)
                            : std::chrono::nanoseconds{0};
  }
  // The earlier of this deadline and `now + slice`.
  Deadline capped(std::chrono::nanoseconds slice) const {
    auto cap = Clock::now() + slice;
    return Deadline{at_ && *at_ < cap ? *at_ : cap};
  }

 private:
  Deadline() = default;
  explicit Deadline(Clock::time_point at) : at_(at) {}
  std::optional<Clock::time_point> at_;
};

}  // namespace shoal
