#pragma once
// Test access to SharedArena's internals (its friend ArenaTestAccess), shared
// by the tests that play a process dying mid-operation (test_arena.cpp) and
// the ones that write garbage over the arena's metadata (test_garbage.cpp).
// One definition for the whole test binary.
#include <chrono>

#include "mem/arena_layout.hpp"
#include "shoal/mem/arena.hpp"

namespace shoal {
struct ArenaTestAccess {
  static arena_detail::Control& control(SharedArena& a) { return *a.ctl_; }
  static arena_detail::BlockHeader* header(SharedArena& a, const Block& b) { return a.pooled_header(b); }
  // An owner whose segment service is gone (stopped, or stuck: `alive` says it still runs).
  static void stop_service(SharedArena& a, bool alive = false) {
    a.stop_service();
    a.ctl_->service_alive.store(alive ? 1 : 0);
  }
  static void set_handoff_timeout(std::chrono::milliseconds t) { SharedArena::handoff_timeout_ms_.store(t.count()); }
  // How long a locker waits for the arena's mutex (30 s by default).
  static void set_lock_timeout(std::chrono::milliseconds t) { SharedArena::lock_timeout_ms_.store(t.count()); }
  // A pooled segment as this process maps it (base and size), or null.
  static std::byte* pooled_base(SharedArena& a, uint32_t slot) { return a.pooled_base_[slot].load(); }
  static std::size_t pooled_size(SharedArena& a, uint32_t slot) { return a.pooled_size_[slot].load(); }
};
}  // namespace shoal
