"""Timelines: ``with shoal.trace("run.json"): ...`` or ``Executor(trace="run.json")``.

Data flow::

    engine (parent, under its lock)      worker k (its own process)
      submit: Job.submitted_ns             take job  -> recv
      dispatch -> parent_trace ring        args loaded -> call, call returned -> ret
                                           result sent -> end  -> worker k's trace ring
                 \\                          /
                  stats block (shared memory; rings of 4096 events per worker,
                  65536 for the parent, one producer each)
                                 |
          _core.TraceRecorder (C++, its own thread, no GIL): drains the rings
          every 2 ms and samples the pending depth and arena use every 20 ms
                                 |
          at the end, this module: Chrome trace JSON (Perfetto, chrome://tracing)

While a trace records, the block's ``trace_on`` word is set: the engine
stamps each job's submit time and pushes (submit, dispatch, slot) when it
hands the job to a worker; each worker pushes (taken, args loaded, call
returned, result sent) when it sends the result. A ring that is full (the
recorder fell behind) drops events and counts them; the file says how many
were lost (``otherData.dropped_events``).

The JSON has one track (process) per worker process, a complete event per
task with its (de)serialisation and the call as nested slices, flow arrows
from each submit (on the parent's track) to the task's start, and counters
for the pending queue and the arena's use.
"""
from __future__ import annotations

import os
import struct
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from .. import _core

_EVENT = struct.Struct("<qQQQQQII")  # TraceRecorder.take_events()'s packing
_SAMPLE = struct.Struct("<QQQ")  # TraceRecorder.take_samples()'s

_lock = threading.Lock()
_global: Optional["Trace"] = None  # the `with shoal.trace(...)` recording now, if any


class _Source:
    """One pool's engine as the trace sees it."""

    def __init__(self, engine: "_core.Engine") -> None:
        self.engine = engine
        self.pool_pid = os.getpid()  # a trace records this process's pools
        self.recorder: Optional["_core.TraceRecorder"] = engine.record_trace()
        self.events = b""
        self.samples = b""
        self.dropped = 0
        self.pids: dict[int, int] = {}  # slot -> its worker's pid (the latest one)

    def finish(self) -> None:
        """Stops recording and keeps what was recorded."""
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return
        recorder.stop()
        self.events, self.samples, self.dropped = recorder.take_events(), recorder.take_samples(), recorder.dropped
        try:
            for w in self.engine.stats_snapshot()["workers"]:
                if w["pid"]:
                    self.pids[int(w["slot"])] = int(w["pid"])
        except Exception:  # noqa: BLE001 - no pids: the workers' tracks are named by slot
            pass


class Trace:
    """Records the tasks of pools into a Chrome trace JSON file at ``path``.

    ``shoal.trace(path)`` records every pool of this process (the ones open
    when it starts and the ones made while it runs); ``Executor(trace=path)``
    records that pool for its whole life. The file is written when the
    ``with`` block ends (or the pool shuts down)."""

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.path = os.fspath(path)
        self._sources: list[_Source] = []
        self._started_ns = 0
        self._lock = threading.Lock()
        self.written = False

    # -- recording ------------------------------------------------------------

    def start(self) -> "Trace":
        # Fail now, not after the run, if the file cannot be written.
        with open(self.path, "a"):
            pass
        self._started_ns = time.monotonic_ns()
        return self

    def add(self, engine: "_core.Engine") -> None:
        """Starts recording a pool's engine."""
        with self._lock:
            if not any(s.engine is engine for s in self._sources):
                self._sources.append(_Source(engine))

    def stop(self) -> None:
        """Stops recording and writes the file."""
        with self._lock:
            for s in self._sources:
                s.finish()
            self._write()

    # -- the file ----------------------------------------------------------------

    def _write(self) -> None:
        t0 = self._started_ns
        out: list[str] = []
        add = out.append

        def us(ns: int) -> str:
            return f"{max(0, ns - t0) / 1000:.3f}"

        for s in self._sources:
            parent = s.pool_pid
            add(_meta(parent, 0, "process_name", f"shoal pool (pid {parent})"))
            add(_meta(parent, 0, "thread_name", "submit and dispatch"))
            # A track per worker slot, named after its (latest) process: a
            # replaced worker's tasks share its slot's track.
            tracks: dict[int, int] = {}
            for slot, job, a, b, c, d, items, status in _EVENT.iter_unpack(s.events):
                if slot >= 0 and slot not in tracks:
                    pid = s.pids.get(slot, parent * 1000 + slot + 1)
                    tracks[slot] = pid
                    add(_meta(pid, pid, "process_name", f"shoal worker {slot} (pid {pid})"))
                    add(_meta(pid, pid, "thread_name", f"worker {slot}"))
                    add(_meta(pid, pid, "process_sort_index", str(slot + 1), key="sort_index"))
                if slot < 0:  # the parent's: a = submit, b = dispatch, items = the worker's slot
                    add(f'{{"ph":"i","s":"t","name":"submit","pid":{parent},"tid":0,"ts":{us(a)},'
                        f'"args":{{"job":{job},"slot":{items}}}}}')
                    add(f'{{"ph":"s","cat":"flow","name":"job {job}","id":{job},"pid":{parent},"tid":0,"ts":{us(a)}}}')
                    continue
                pid = tracks.get(slot, parent)
                name = f"map chunk ({items} items)" if items > 1 else "task"
                add(f'{{"ph":"X","cat":"task","name":"{name}","pid":{pid},"tid":{pid},"ts":{us(a)},'
                    f'"dur":{max(0, d - a) / 1000:.3f},"args":{{"job":{job},"items":{items},'
                    f'"status":"{_STATUS.get(status, status)}"}}}}')
                add(f'{{"ph":"f","bp":"e","cat":"flow","name":"job {job}","id":{job},"pid":{pid},"tid":{pid},'
                    f'"ts":{us(a)}}}')
                for part, start, end in (("load arguments", a, b), ("call", b, c), ("send result", c, d)):
                    if end > start:
                        add(f'{{"ph":"X","cat":"phase","name":"{part}","pid":{pid},"tid":{pid},"ts":{us(start)},'
                            f'"dur":{(end - start) / 1000:.3f}}}')
            for at, pending, arena in _SAMPLE.iter_unpack(s.samples):
                add(f'{{"ph":"C","name":"pending jobs","pid":{parent},"ts":{us(at)},"args":{{"pending":{pending}}}}}')
                add(f'{{"ph":"C","name":"arena bytes","pid":{parent},"ts":{us(at)},"args":{{"used":{arena}}}}}')
        import json  # here: shoal imports this module, and most programs never write a trace

        dropped = sum(s.dropped for s in self._sources)
        meta = json.dumps({"tool": "shoal", "dropped_events": dropped, "pools": len(self._sources)})
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write('{"displayTimeUnit":"ms","otherData":' + meta + ',"traceEvents":[\n')
            f.write(",\n".join(out))
            f.write("\n]}\n")
        os.replace(tmp, self.path)
        self.written = True

    # -- context manager (shoal.trace) ---------------------------------------------

    def __enter__(self) -> "Trace":
        global _global
        from ..runtime import lifecycle

        with _lock:
            if _global is not None:
                raise RuntimeError(f"a shoal.trace() is already recording (into {_global.path}); end it first")
            self.start()
            _global = self
        for runtime in lifecycle.live_runtimes():
            runtime.join_trace(self)
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        global _global
        with _lock:
            if _global is self:
                _global = None
        self.stop()


_STATUS = {0: "ok", 1: "raised", 2: "worker lost", 3: "cancelled", 4: "broken", 5: "timed out", 6: "memory limit"}


def _meta(pid: int, tid: int, name: str, value: str, key: str = "name") -> str:
    import json

    return json.dumps({"ph": "M", "pid": pid, "tid": tid, "name": name, "args": {key: value if key == "name" else int(value)}})


def trace(path: Union[str, "os.PathLike[str]"]) -> Trace:
    """Record a timeline of every shoal pool of this process into ``path``
    (Chrome trace JSON: open it in https://ui.perfetto.dev or chrome://tracing)::

        with shoal.trace("run.json"):
            results = list(ex.map(work, items))
    """
    return Trace(path)


def recording() -> Optional[Trace]:
    """The ``shoal.trace()`` recording now, if any (new pools join it)."""
    return _global
