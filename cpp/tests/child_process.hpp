#pragma once
// Test helper: runs a function in a forked child and collects its exit status,
// with a hard timeout so a broken test fails instead of hanging.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <thread>

namespace shoal::testing {

class ChildProcess {
 public:
  // The child runs `body` and exits with its return value (0 = success).
  explicit ChildProcess(const std::function<int()>& body) {
    pid_ = fork();
    if (pid_ == 0) {
      int rc = 1;
      try {
        rc = body();
      } catch (const std::exception& e) {
        // The parent sees only the exit status: say here what went wrong.
        std::fprintf(stderr, "[child %d] uncaught exception: %s\n", static_cast<int>(getpid()), e.what());
        rc = 99;
      } catch (...) {
        std::fprintf(stderr, "[child %d] uncaught exception of unknown type\n", static_cast<int>(getpid()));
        rc = 99;
      }
      _exit(rc);
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }
  void kill_now(int sig = SIGKILL) { kill(pid_, sig); }

  // Waits up to `timeout` for exit; returns the raw wait status, or -1 on timeout.
  int wait(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        reaped_ = true;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return -1;
  }
  // True if the child exited normally with code 0 within the timeout.
  bool succeeded(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    int status = wait(timeout);
    return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
};

}  // namespace shoal::testing
