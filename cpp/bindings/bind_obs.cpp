// Stats blocks (shoal/obs/stats_block.hpp) as Python dicts, for shoal.obs:
// a pool's own (Engine.stats_snapshot) and any pool's of this user, read-only
// (StatsBlockReader). Raw numbers in ns and bytes; shoal.obs.reader makes
// the typed snapshot of them.
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <memory>
#include <string>

#include "common.hpp"
#include "shoal/engine/engine.hpp"
#include "shoal/obs/stats_block.hpp"
#include "shoal/obs/trace_recorder.hpp"

namespace shoal::py {

namespace {

using namespace shoal::obs;

uint64_t get(const Counter& c) { return c.load(std::memory_order_relaxed); }

// Text from shared memory is never trusted to be UTF-8.
nb::str text_of(const std::string& text) {
  PyObject* s = PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "replace");
  if (s == nullptr) throw nb::python_error();
  return nb::steal<nb::str>(s);
}

template <std::size_t N>
nb::str text_of(const char (&field)[N]) {
  return text_of(std::string(field, strnlen(field, N)));
}

template <std::size_t N>
nb::list list_of(const Counter (&counters)[N]) {
  nb::list out;
  for (const Counter& c : counters) out.append(get(c));
  return out;
}

nb::dict worker_dict(const WorkerStats& w, uint32_t slot) {
  nb::dict d;
  d["slot"] = slot;
  d["pid"] = w.pid.load(std::memory_order_relaxed);
  d["state"] = w.state.load(std::memory_order_relaxed);
  d["job"] = get(w.job);
  d["job_since_ns"] = get(w.job_since_ns);
  d["tasks_completed"] = get(w.tasks_completed);
  d["tasks_failed"] = get(w.tasks_failed);
  d["jobs_completed"] = get(w.jobs_completed);
  d["busy_ns"] = get(w.busy_ns);
  d["deserialize_ns"] = get(w.deserialize_ns);
  d["serialize_ns"] = get(w.serialize_ns);
  d["bytes_in"] = get(w.bytes_in);
  d["bytes_out"] = get(w.bytes_out);
  d["arena_bytes_in"] = get(w.arena_bytes_in);
  d["arena_bytes_out"] = get(w.arena_bytes_out);
  d["started_ns"] = get(w.started_ns);
  d["ready_ns"] = get(w.ready_ns);
  d["initializer_ns"] = get(w.initializer_ns);
  d["restarts"] = get(w.restarts);
  d["restart_causes"] = list_of(w.restart_causes);
  d["last_exit_cause"] = w.last_exit_cause.load(std::memory_order_relaxed);
  d["last_exit_value"] = w.last_exit_value.load(std::memory_order_relaxed);
  d["duration_buckets"] = list_of(w.duration_buckets);
  d["trace_dropped"] = get(w.trace.dropped);
  nb::list slowest;
  for (const SlowTaskCopy& t : read_slowest(w)) slowest.append(nb::make_tuple(t.ns, t.job, t.items, text_of(t.args)));
  d["slowest"] = slowest;
  nb::list errors;  // newest first
  for (const ErrorCopy& e : read_errors(w)) errors.append(nb::make_tuple(e.job, e.at_unix_ns, text_of(e.text)));
  d["errors"] = errors;
  d["errors_written"] = w.errors_written.load(std::memory_order_relaxed);
  return d;
}

nb::dict snapshot(const StatsBlock& b) {
  const StatsHeader& h = b.header();
  const PoolCounters& c = h.pool;
  nb::dict d;
  d["name"] = b.name();
  d["version"] = h.version;
  d["owner_pid"] = h.owner_pid;
  d["created_unix_ns"] = h.created_unix_ns;
  d["created_mono_ns"] = h.created_mono_ns;
  d["now_mono_ns"] = monotonic_ns();
  d["now_unix_ns"] = realtime_ns();
  d["kind"] = text_of(h.kind);
  d["label"] = text_of(h.label);
  d["state"] = h.state.load(std::memory_order_relaxed);
  d["trace_on"] = h.trace_on.load(std::memory_order_relaxed) != 0;
  for (auto [key, field] :
       {std::pair{"submitted", &c.submitted}, {"completed", &c.completed}, {"failed", &c.failed},
        {"cancelled", &c.cancelled}, {"retried", &c.retried}, {"timed_out", &c.timed_out},
        {"workers_started", &c.workers_started}, {"workers_lost", &c.workers_lost}, {"pending", &c.pending},
        {"in_flight", &c.in_flight}, {"arena_used", &c.arena_used}, {"arena_peak", &c.arena_peak},
        {"arena_limit", &c.arena_limit}})
    d[key] = get(*field);
  nb::list workers;
  for (uint32_t s = 0; s < b.slots(); ++s) workers.append(worker_dict(b.worker(s), s));
  d["workers"] = workers;
  return d;
}

}  // namespace

void bind_obs(nb::module_& m) {
  m.def("list_stats_blocks", [](int pid) { return list_stats_blocks(pid); }, nb::arg("pid") = 0,
        "Names under /dev/shm of this user's pools' stats blocks (of `pid`'s pools only, if > 0).");
  m.attr("STATS_VERSION") = StatsHeader::kVersion;
  m.attr("DURATION_BUCKETS") = kDurationBuckets;

  nb::class_<StatsBlock>(m, "StatsBlockReader", "A pool's stats block, mapped read-only.")
      .def_static(
          "open", [](const std::string& name) { return std::const_pointer_cast<StatsBlock>(StatsBlock::open_readonly(name)); },
          nb::arg("name"),
          "Map a stats block read-only. FileNotFoundError: gone; RuntimeError: not a stats block, or one of "
          "another layout version.")
      .def_prop_ro("name", &StatsBlock::name)
      .def("snapshot", [](const StatsBlock& b) { return snapshot(b); }, "Everything in the block now, as a dict.");

  nb::class_<TraceRecorder>(m, "TraceRecorder", "Drains a pool's trace rings while it records (Engine.record_trace).")
      .def("stop", &TraceRecorder::stop, nb::call_guard<nb::gil_scoped_release>(),
           "Stop recording (what was pushed until now is kept); idempotent.")
      .def(
          "take_events",
          [](TraceRecorder& r) {
            const std::vector<TracedEvent> events = r.take_events();
            return nb::bytes(reinterpret_cast<const char*>(events.data()), events.size() * sizeof(TracedEvent));
          },
          "The events recorded since the last call, packed as struct '<qQQQQQII' each: (slot, job, a, b, c, d, "
          "items, status); slot -1 for the parent's (a = submit, b = dispatch, items = the worker's slot), else a "
          "worker's (a = taken, b = arguments loaded, c = call returned, d = result sent); CLOCK_MONOTONIC ns.")
      .def(
          "take_samples",
          [](TraceRecorder& r) {
            const std::vector<CounterSample> samples = r.take_samples();
            return nb::bytes(reinterpret_cast<const char*>(samples.data()), samples.size() * sizeof(CounterSample));
          },
          "The pending depth and arena use sampled since the last call, packed as struct '<QQQ' each: (at, "
          "pending, arena bytes).")
      .def_prop_ro("dropped", &TraceRecorder::dropped, "Events the rings had no room for since recording began.");

}

void bind_engine_stats(nb::class_<Engine>& engine) {
  // The pool's own block, read and traced through its engine.
  engine.def_prop_ro("stats_name", &Engine::stats_name)
      .def(
          "stats_snapshot",
          [](const Engine& e) {
            e.stats();  // samples the arena's use into the block now
            return snapshot(*e.stats_block());
          },
          "The pool's stats block now, as a dict.")
      .def(
          "record_trace", [](const Engine& e) { return std::make_unique<TraceRecorder>(e.stats_block()); },
          "Start recording the pool's trace events (each task's submit, dispatch, start and end), drained by a "
          "thread of the recorder's; one recorder at a time.");
}

}  // namespace shoal::py
