#pragma once
// How a synchronization primitive blocks. The primitive knows *what* to wait for
// (an `Attempt`); the caller decides *how* to wait: C++ callers block directly,
// the Python bindings wait in short slices without the GIL and look for Ctrl-C
// in between. Keeping the two apart lets one algorithm serve both.
#include <functional>

#include "shoal/base/deadline.hpp"

namespace shoal {

// Tries until `deadline` and returns true on success. It may return false early
// only when the deadline has passed.
using Attempt = std::function<bool(const Deadline& deadline)>;

// Runs `attempt` (once, or in slices) until it succeeds or `deadline` passes;
// returns whether it succeeded. It may throw (an interrupt), and the primitive
// must then leave its shared state consistent.
using Blocker = std::function<bool(const Deadline& deadline, const Attempt& attempt)>;

inline bool block_directly(const Deadline& deadline, const Attempt& attempt) { return attempt(deadline); }

// Calls `step()` until it completes without throwing. For steps that must happen
// even after the wait before them was interrupted, such as taking a lock back
// before the interrupt propagates to a caller who expects to hold it.
template <class Step>
void complete_despite_interrupts(Step&& step) {
  for (;;) {
    try {
      step();
      return;
    } catch (...) {
      // An interrupt while re-taking a lock: the caller is owed the lock, so try
      // again; the interrupt that started the unwinding is already on its way.
    }
  }
}

}  // namespace shoal
