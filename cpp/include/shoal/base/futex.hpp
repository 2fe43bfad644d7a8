#pragma once
// Process-shared futex wait/wake on a 32-bit word that may live in shared memory.
#include <atomic>
#include <cstdint>

#include "shoal/base/deadline.hpp"

namespace shoal {

// Sleeps while *word == expected, until woken or the deadline passes. Returns
// false only on timeout; a wake, a changed value or a signal all return true
// (callers re-check their condition, so spurious returns are harmless).
bool futex_wait(std::atomic<uint32_t>& word, uint32_t expected, const Deadline& deadline);

// Wakes up to `count` waiters sleeping on `word`; returns how many woke.
int futex_wake(std::atomic<uint32_t>& word, int count);
int futex_wake_all(std::atomic<uint32_t>& word);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace shoal
