#pragma once
// The arena's mutex, held for the length of a scope. Taking it after its holder
// died (or while an earlier recovery is unfinished) rebuilds the derived state
// first, so a caller always finds the allocator consistent. Private to cpp/src/mem.
#include <chrono>

#include "shoal/mem/arena.hpp"

namespace shoal {

// No critical section lasts anywhere near this; reaching it means the holder
// is stopped (SIGSTOP, a debugger), and failing beats hanging.
inline constexpr std::chrono::seconds kArenaLockTimeout{30};

class SharedArena::Locked {
 public:
  explicit Locked(SharedArena& arena);
  ~Locked();
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  SharedArena& arena_;
};

}  // namespace shoal
