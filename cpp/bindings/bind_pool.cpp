// The pool engine (parent side), the worker's endpoint and the fork server.
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <utility>

#include "common.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/mem/arena.hpp"
#include "shoal/proc/affinity.hpp"
#include "shoal/proc/launcher.hpp"
#include "shoal/proc/native_threads.hpp"
#include "shoal/wire/blob.hpp"
#include "shoal/engine/engine.hpp"
#include "shoal/wire/protocol.hpp"
#include "shoal/engine/worker_endpoint.hpp"

namespace shoal::py {
namespace {

nb::bytes to_bytes(std::string_view s) { return nb::bytes(s.data(), s.size()); }

std::string from_bytes(const nb::bytes& b) { return std::string(b.c_str(), b.size()); }

// A job's owner is the handler Python filed with it: a strong reference
// taken at submit and handed back once (Completion::owner, cancel, or
// EngineOptions::drop_owner), as a new reference of the caller's.
uint64_t own(nb::handle handler) {
  if (handler.is_none()) return 0;
  return reinterpret_cast<uint64_t>(handler.inc_ref().ptr());
}
nb::object take_owner(uint64_t owner) {
  return owner ? nb::steal(reinterpret_cast<PyObject*>(owner)) : nb::none();
}

// A job's payload as Python's handler gets it: its bytes, or, for a map chunk
// that sent results ahead or did not finish, (payload, [(status, items,
// payload), ...], failed_item, retries_left) (see Completion).
nb::object outcome_payload(Completion& c) {
  if (c.pieces.empty() && c.failed_item == 0) return to_bytes(c.payload);
  nb::list pieces;
  for (auto& p : c.pieces) pieces.append(nb::make_tuple(static_cast<uint32_t>(p.status), p.items, to_bytes(p.payload)));
  return nb::make_tuple(to_bytes(c.payload), pieces, c.failed_item, c.retries_left);
}

nb::object collect(Engine& engine, std::optional<double> timeout) {
  std::vector<Completion> done;
  bool running = true;
  wait_interruptibly(timeout, [&](const Deadline& d) {
    running = engine.collect(done, d);
    return !done.empty() || !running;
  });
  if (done.empty() && !running) return nb::none();
  nb::list out;
  for (auto& c : done) {
    if (c.status == proto::Status::log) {  // (None, LOG, level, (text, worker slot or -1, job or 0))
      out.append(nb::make_tuple(nb::none(), static_cast<uint32_t>(c.status), c.run_ns,
                                nb::make_tuple(outcome_payload(c), c.log_worker, c.log_job)));
      continue;
    }
    out.append(nb::make_tuple(take_owner(c.owner), static_cast<uint32_t>(c.status), c.run_ns, outcome_payload(c)));
  }
  return out;
}

// Waits for one job, draining results in the calling thread: (handler,
// status, run_ns, payload) once it finished, False if it is not waiting to
// finish (another thread collected it), None if the timeout passed.
nb::object wait_for(Engine& engine, uint64_t job_id, std::optional<double> timeout) {
  std::optional<Completion> done;
  bool waiting = true;
  wait_interruptibly(timeout, [&](const Deadline& d) {
    waiting = engine.wait_for(job_id, d, done);
    return done.has_value() || !waiting;
  });
  if (done)
    return nb::make_tuple(take_owner(done->owner), static_cast<uint32_t>(done->status), done->run_ns,
                          outcome_payload(*done));
  return waiting ? nb::none() : nb::object(nb::bool_(false));
}

// Receives the next frame as (kind, tag, id, arg, payload); None once the pool
// has closed the inbox. The payload is copied straight into a bytes object.
// While it waits, it unmaps the worker's cached mappings of freed huge blocks,
// so their memory goes back to the system within a wait slice.
nb::object worker_recv(WorkerEndpoint& ep) {
  try {
    // A frame already waiting (a busy worker's prefetched jobs) is taken
    // without letting go of the GIL.
    if (!ep.frame_ready()) {
      wait_interruptibly(std::nullopt, [&](const Deadline& d) {
        if (ep.wait(d)) return true;
        SharedArena::trim_idle_mappings();
        trim_heap_cache();
        return false;
      });
    }
    proto::FrameHeader h{};
    nb::bytes payload;
    ep.take(h, [&](std::size_t n) {
      payload = nb::steal<nb::bytes>(PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n)));
      if (!payload.is_valid()) throw nb::python_error();
      return reinterpret_cast<std::byte*>(PyBytes_AS_STRING(payload.ptr()));
    });
    return nb::make_tuple(static_cast<uint32_t>(h.kind), h.tag, h.id, h.arg, payload);
  } catch (const ClosedError&) {
    return nb::none();
  }
}

// Runs a map chunk's calls (`calls`: map or starmap over its items) into
// `results` until they are exhausted (False) or `budget_ns` has passed (True;
// 0: no budget), marking each item as it starts: items before `results`
// count `first` in the chunk. An item's exception propagates, with that item
// still marked (the caller records it and calls again).
bool run_items(WorkerEndpoint& ep, nb::handle calls, nb::list results, uint64_t first, uint64_t budget_ns) {
  PyObject* it = calls.ptr();
  const iternextfunc next = Py_TYPE(it)->tp_iternext;
  if (next == nullptr) throw nb::type_error("run_items needs an iterator");
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = budget_ns ? Clock::now() : Clock::time_point{};
  const auto budget = std::chrono::nanoseconds(budget_ns);
  // Tiny items would feel a clock read each: the clock is read every
  // `stride` items, a stride that grows while items are short.
  Clock::time_point last = start;
  uint32_t stride = 1, until_check = 1;
  for (;;) {
    ep.mark_item(first + static_cast<uint64_t>(PyList_GET_SIZE(results.ptr())));
    PyObject* value = next(it);
    if (value == nullptr) {
      if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_StopIteration)) throw nb::python_error();
        PyErr_Clear();
      }
      ep.mark_item(std::nullopt);
      return false;
    }
    const int failed = PyList_Append(results.ptr(), value);
    Py_DECREF(value);
    if (failed) throw nb::python_error();
    if (budget_ns && --until_check == 0) {
      const Clock::time_point now = Clock::now();
      if (now - start >= budget) return true;
      if (now - last < budget / 16 && stride < 64) stride *= 2;
      else if (now - last > budget / 4 && stride > 1) stride /= 2;
      last = now;
      until_check = stride;
    }
  }
}

nb::tuple serve_forks(int sock) {
  ForkHooks hooks{PyOS_BeforeFork, PyOS_AfterFork_Parent, PyOS_AfterFork_Child};
  ForkedWorker w = run_fork_server(sock, hooks);
  return nb::make_tuple(w.slot, w.context);
}

}  // namespace

void bind_pool(nb::module_& m) {
  // The protocol's constants, defined once (wire/protocol.hpp): Python reads
  // them from here, never from a copy of its own.
  auto protocol = m.def_submodule("protocol", "Frame kinds, job statuses and call modes of the pool protocol.");
  using proto::Kind;
  using proto::Status;
  for (auto [name, kind] : {std::pair{"DEFINE_FUNCTION", Kind::define_function}, {"DROP_FUNCTION", Kind::drop_function},
                            {"INITIALIZE", Kind::initialize}, {"JOB", Kind::job}})
    protocol.attr(name) = static_cast<uint32_t>(kind);
  for (auto [name, status] : {std::pair{"OK", Status::ok}, {"ERROR", Status::error},
                              {"WORKER_LOST", Status::worker_lost}, {"CANCELLED", Status::cancelled},
                              {"BROKEN", Status::broken}, {"TIMED_OUT", Status::timed_out},
                              {"MEMORY_EXCEEDED", Status::memory_exceeded}, {"LOG", Status::log}})
    protocol.attr(name) = static_cast<uint32_t>(status);
  using proto::CallMode;
  for (auto [name, mode] : {std::pair{"CALL", CallMode::call}, {"MAP_ONE", CallMode::map_one},
                            {"MAP_STAR", CallMode::map_star}})
    protocol.attr(name) = static_cast<uint32_t>(mode);
  auto engine = nb::class_<Engine>(m, "Engine", "The pool engine: central queue, dispatch to worker rings, supervision.");
  bind_engine_stats(engine);
  engine
      .def(
          "__init__",
          [](Engine* self, uint32_t workers, bool fork_server, std::vector<std::string> argv, std::size_t ring_bytes,
             nb::bytes init_payload, uint64_t max_tasks_per_child, int fork_server_pid, int fork_server_fd,
             uint64_t memory_hard_limit, uint64_t memory_soft_limit, std::shared_ptr<SharedArena> arena,
             std::vector<int> inherited_fds, std::string pool_kind, std::string pool_label) {
            EngineOptions o;
            o.pool_kind = std::move(pool_kind);
            o.pool_label = std::move(pool_label);
            o.workers = workers;
            o.fork_server = fork_server;
            o.argv = std::move(argv);
            o.ring_bytes = ring_bytes;
            o.init_payload = from_bytes(init_payload);
            o.max_tasks_per_child = max_tasks_per_child;
            o.fork_server_handle = ForkServerHandle{fork_server_pid, fork_server_fd};
            o.memory_hard_limit = memory_hard_limit;
            o.memory_soft_limit = memory_soft_limit;
            o.arena = std::move(arena);
            o.inherited_fds = std::move(inherited_fds);
            // The destructor runs in tp_dealloc, with the GIL held.
            o.drop_owner = [](uint64_t owner) { take_owner(owner); };
            new (self) Engine(std::move(o));
          },
          nb::arg("workers"), nb::arg("fork_server"), nb::arg("argv"), nb::arg("ring_bytes"), nb::arg("init_payload"),
          nb::arg("max_tasks_per_child"), nb::arg("fork_server_pid") = -1, nb::arg("fork_server_fd") = -1,
          nb::arg("memory_hard_limit") = 0, nb::arg("memory_soft_limit") = 0, nb::arg("arena") = nb::none(),
          nb::arg("inherited_fds") = std::vector<int>{}, nb::arg("pool_kind") = "Executor",
          nb::arg("pool_label") = "")
      .def_prop_ro("segment_name", &Engine::segment_name)
      .def_prop_ro("workers", &Engine::workers)
      .def_prop_ro("inline_payload_limit", &Engine::inline_payload_limit)
      .def("define_function",
           [](Engine& e, nb::bytes pickled) { return e.define_function(from_bytes(pickled)); })
      .def("drop_function", &Engine::drop_function)
      .def(
          "submit",
          [](Engine& e, uint64_t fn_id, uint32_t tag, nb::bytes payload, nb::handle handler, int retries,
             double timeout) {
            std::string bytes = from_bytes(payload);
            const uint64_t owner = own(handler);
            try {
              // Keeping the GIL through a short submit spares a GIL hand-over
              // to the result thread on every task; a lock held for long is
              // waited for without it.
              if (auto id = e.try_submit(fn_id, tag, bytes, retries, timeout, owner)) return *id;
              nb::gil_scoped_release unlocked;
              return e.submit(fn_id, tag, std::move(bytes), retries, timeout, owner);
            } catch (...) {
              take_owner(owner);  // refused (closed): the job never was
              throw;
            }
          },
          nb::arg("fn_id"), nb::arg("tag"), nb::arg("payload"), nb::arg("handler").none() = nb::none(),
          nb::arg("retries") = 0, nb::arg("timeout") = 0.0,
          "Queue a job; returns its id. `handler` comes back with the job's end (collect, wait_for).")
      .def(
          "cancel",
          [](Engine& e, uint64_t job_id) {
            uint64_t owner = 0;
            const bool cancelled = e.cancel(job_id, &owner);
            take_owner(owner);  // a cancelled job's handler is not called
            return cancelled;
          },
          nb::arg("job_id"), "Remove a job no worker holds yet (its handler is dropped, not called).")
      .def("queued", &Engine::queued, "Whether the job waits in the queue (no worker holds it yet).")
      .def("collect", &collect, nb::arg("timeout") = nb::none(),
           "Finished jobs as [(handler, status, run_ns, payload)] (handler None for a log record, whose "
           "run_ns is its level); [] on timeout; None once stopped.")
      .def("wait_for", &wait_for, nb::arg("job_id"), nb::arg("timeout") = nb::none(),
           "Wait for one job in this thread: (handler, status, run_ns, payload), False if another thread collected it, "
           "None on timeout.")
      .def("shutdown", &Engine::shutdown, nb::arg("wait"), nb::arg("cancel_pending"),
           nb::call_guard<nb::gil_scoped_release>())
      .def("terminate", &Engine::terminate, nb::call_guard<nb::gil_scoped_release>())
      .def("broken", &Engine::broken)
      .def(
          "_inject_fault",
          [](Engine& e, const std::string& fault) {
            if (fault == "lose_next_spilled_result") return e.inject_fault_for_testing(TestFault::lose_next_spilled_result);
            if (fault == "engine_thread_throws") return e.inject_fault_for_testing(TestFault::engine_thread_throws);
            if (fault == "supervisor_thread_throws")
              return e.inject_fault_for_testing(TestFault::supervisor_thread_throws);
            throw std::invalid_argument("unknown fault " + fault);
          },
          nb::arg("fault"),
          "Test only: provoke 'lose_next_spilled_result', 'engine_thread_throws' or 'supervisor_thread_throws'.")
      .def("worker_pids", &Engine::worker_pids)
      .def("stats", [](const Engine& e) {
        auto s = e.stats();
        nb::dict d;
        d["submitted"] = s.submitted;
        d["completed"] = s.completed;
        d["pending"] = s.pending;
        d["in_flight"] = s.in_flight;
        d["workers_started"] = s.workers_started;
        d["workers_lost"] = s.workers_lost;
        d["retried"] = s.retried;
        d["failed"] = s.failed;
        d["cancelled"] = s.cancelled;
        d["timed_out"] = s.timed_out;
        return d;
      });

  nb::class_<WorkerEndpoint>(m, "WorkerEndpoint", "A worker's end of its pool slot.")
      .def(nb::init<const std::string&, uint32_t>(), nb::arg("segment"), nb::arg("slot"))
      .def_prop_ro("slot", &WorkerEndpoint::slot)
      .def("recv", &worker_recv)
      .def(
          "send_result",
          [](WorkerEndpoint& ep, uint64_t job_id, uint32_t status, uint64_t run_ns, nb::bytes payload, uint64_t items,
             uint64_t failed) {
            std::string_view view(payload.c_str(), payload.size());
            nb::gil_scoped_release unlocked;  // may wait for room in the outbox
            ep.send_result(job_id, static_cast<proto::Status>(status), run_ns, view, items, failed);
          },
          nb::arg("job_id"), nb::arg("status"), nb::arg("run_ns"), nb::arg("payload"), nb::arg("items") = 1,
          nb::arg("failed") = 0,
          "Publish a job's outcome: `items` calls ran (1, or a map chunk's), `failed` of them raised.")
      // The worker's side of the stats block (shoal/obs/stats_block.hpp).
      .def("initialized", [](WorkerEndpoint& ep, uint64_t ns) { ep.stats().ready(ns); }, nb::arg("initializer_ns"),
           "The pool's initializer ran, taking `initializer_ns`.")
      .def("args_loaded", [](WorkerEndpoint& ep) { ep.stats().args_loaded(); }, "The running job's arguments are loaded.")
      .def("call_returned", [](WorkerEndpoint& ep) { ep.stats().call_returned(); },
           "The running job's call returned (its result is being pickled).")
      .def("exiting", [](WorkerEndpoint& ep) { ep.stats().exiting(); }, "This worker is leaving.")
      .def_prop_ro("slow_floor", [](WorkerEndpoint& ep) { return ep.stats().slow_floor(); },
                   "A job running longer than this (ns) is among this worker's slowest: note_slow it.")
      .def(
          "note_slow",
          [](WorkerEndpoint& ep, uint64_t job, uint64_t ns, uint64_t items, std::string_view args) {
            ep.stats().note_slow(job, ns, items, args);
            return ep.stats().slow_floor();
          },
          nb::arg("job"), nb::arg("ns"), nb::arg("items"), nb::arg("args"),
          "Keep a slow job (a short repr of its arguments) among the slowest; returns the new slow_floor.")
      .def("wants_error", [](WorkerEndpoint& ep) { return ep.stats().wants_error(); },
           "Whether a failed task's traceback is wanted for the recent errors now (a few a second).")
      .def(
          "note_error", [](WorkerEndpoint& ep, uint64_t job, std::string_view text) { ep.stats().note_error(job, text); },
          nb::arg("job"), nb::arg("text"), "Record a failed task's traceback among the recent errors.")
      .def(
          "send_partial",
          [](WorkerEndpoint& ep, uint64_t job_id, uint32_t status, uint64_t items, nb::bytes payload) {
            std::string_view view(payload.c_str(), payload.size());
            nb::gil_scoped_release unlocked;  // may wait for room in the outbox
            return ep.send_partial(job_id, static_cast<proto::Status>(status), items, view);
          },
          nb::arg("job_id"), nb::arg("status"), nb::arg("items"), nb::arg("payload"),
          "Send the outcome of a map chunk's next `items` items ahead of its end; False (nothing sent) if too big.")
      .def("run_items", &run_items, nb::arg("calls"), nb::arg("results"), nb::arg("first"), nb::arg("budget_ns"),
           nb::sig("def run_items(self, calls: collections.abc.Iterator[object], results: list[object], first: int, "
                   "budget_ns: int) -> bool"),
           "Run a chunk's calls into `results` until exhausted (False) or `budget_ns` passed (True), marking each "
           "item (counted from `first`) as the one running.")
      .def("send_init_failed", [](WorkerEndpoint& ep, const std::string& reason) { ep.send_init_failed(reason); });

  m.def("serve_forks", &serve_forks, nb::arg("sock"),
        "Run the fork server loop on `sock`; returns only in a forked worker, as (slot, segment name).");
  m.def("die_with_parent", &die_with_parent, nb::arg("parent_pid"),
        "Receive SIGKILL when the parent dies; exit now if it already has.");
  m.def("describe_exit", &describe_exit);
  m.def(
      "set_cpu_affinity", [](const std::vector<int>& cpus) { set_cpu_affinity(cpus); }, nb::arg("cpus"),
      "Restrict this process (and the threads it starts from now on) to `cpus`.");
  m.def("cpu_affinity", &cpu_affinity, "The CPUs this process may run on, in increasing order.");
  m.def("limit_native_threads", &limit_native_threads, nb::arg("threads"),
        "Limit the thread pools of the BLAS and OpenMP libraries loaded in this process; their paths.");
}

}  // namespace shoal::py
