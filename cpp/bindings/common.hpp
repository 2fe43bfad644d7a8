#pragma once
// Shared helpers for the binding files: GIL-free, Ctrl-C-aware waiting.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>

#include <chrono>
#include <optional>

#include "shoal/base/deadline.hpp"

namespace shoal {
class Engine;
}

namespace shoal::py {

namespace nb = nanobind;

// How long a blocked call sleeps without the GIL before it looks for pending
// signals (so Ctrl-C interrupts a wait with KeyboardInterrupt).
inline constexpr std::chrono::milliseconds kSignalCheckSlice{100};

// Runs `attempt(deadline) -> bool` with the GIL released, in slices, until it
// succeeds or `timeout` (seconds; nullopt = forever) passes. Between slices it
// takes the GIL and raises any pending Python signal exception.
template <class Attempt>
bool wait_interruptibly(std::optional<double> timeout, Attempt&& attempt) {
  const Deadline deadline = Deadline::from_timeout(timeout);
  for (;;) {
    bool ok;
    {
      nb::gil_scoped_release unlocked;
      ok = attempt(deadline.capped(kSignalCheckSlice));
    }
    if (ok) return true;
    if (deadline.expired()) return false;
    if (PyErr_CheckSignals() != 0) throw nb::python_error();
  }
}

void bind_ipc(nb::module_& m);
void bind_sync(nb::module_& m);
void bind_queue(nb::module_& m);
void bind_pool(nb::module_& m);
void bind_mem(nb::module_& m);
void bind_column(nb::module_& m);
void bind_scalar_pickle(nb::module_& m);
void bind_payload(nb::module_& m);
void bind_heap(nb::module_& m);
void bind_obs(nb::module_& m);
// Engine's stats-block methods (bind_obs.cpp), added by bind_pool.
void bind_engine_stats(nb::class_<Engine>& engine);

// Frees the arenas a worker's heap cache holds (bind_heap.cpp); safe without the GIL.
std::size_t trim_heap_cache();

}  // namespace shoal::py
