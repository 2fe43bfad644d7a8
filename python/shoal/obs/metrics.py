"""Prometheus metrics of this user's shoal pools: ``serve_metrics()``.

Data flow, per scrape: Prometheus (or curl) GETs ``/metrics`` -> the WSGI
app of prometheus_client renders this server's own CollectorRegistry -> its
one collector, `PoolCollector`, calls ``list_pools(pid)`` and turns every
PoolSnapshot into metric families. Nothing is kept between scrapes: the
counters are the stats blocks' own counters, which the engines and workers
update in shared memory, so the numbers are the same whichever process
reads them. One server therefore exports every worker of every pool of
this user (of one process with ``pid``), and no PROMETHEUS_MULTIPROC_DIR
or per-worker exporter is needed; a pool whose Python thread is stuck in
user code is still scraped.

Names follow the Prometheus conventions: a ``shoal_`` prefix, base units
(seconds, bytes), ``_total`` on counters, and only low-cardinality labels:
``pool`` (the stats block's name, unique per pool and stable for its
life), ``pid`` (the pool's process) and ``worker`` (the slot number) on
per-worker series, plus a handful of fixed ``state`` / ``cause`` values.
No job ids, no arguments. ``shoal_pool_info`` carries the pool's kind and
program name, to join on in queries.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any, Callable, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from .reader import EXIT_CAUSES, list_pools
from .serving import BackgroundServer, listen_error
from .snapshot import DURATION_BOUNDS_S, POOL_STATES, WORKER_STATES, PoolSnapshot, WorkerSnapshot

_missing: Optional[str] = None
try:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
        Metric,
    )
    from prometheus_client.exposition import make_wsgi_app
except ImportError as exc:  # the `monitor` extra is not installed
    _missing = str(exc)

_log = logging.getLogger("shoal")

_POOL = ("pool", "pid")
_WORKER = ("pool", "pid", "worker")
#: Causes a slot's worker is replaced for, as shoal_worker_restarts_total's `cause` label names them.
RESTART_CAUSES = tuple(c for c in EXIT_CAUSES if c != "none")
#: Indices into DURATION_BOUNDS_S of the histogram's finite `le` bounds: every
#: other bound (1 µs, 4 µs, 16 µs, ... about 18 min), 16 buckets and +Inf per
#: pool instead of 32; a factor of 4 between bounds is still fine enough for
#: histogram_quantile().
_KEPT_BOUNDS = tuple(range(0, len(DURATION_BOUNDS_S) - 1, 2))

_Getter = Callable[[PoolSnapshot], float]
_WorkerGetter = Callable[[WorkerSnapshot], float]

# (name, help, value) of the per-pool series, labelled pool and pid.
_POOL_COUNTERS: tuple[tuple[str, str, _Getter], ...] = (
    ("shoal_jobs_submitted_total", "Jobs submitted to the pool (a map chunk is one job).", lambda p: p.submitted),
    ("shoal_jobs_completed_total",
     "Jobs that ended with a result or the task's own exception (tasks that raised: shoal_worker_tasks_failed_total).",
     lambda p: p.completed),
    ("shoal_jobs_failed_total",
     "Jobs that ended otherwise: a lost worker, a timeout, a memory limit, a broken pool.", lambda p: p.failed),
    ("shoal_jobs_cancelled_total", "Jobs cancelled before they ran.", lambda p: p.cancelled),
    ("shoal_jobs_retried_total", "Re-runs of jobs after a worker died under them.", lambda p: p.retried),
    ("shoal_jobs_timed_out_total", "Jobs stopped for running past their time limit.", lambda p: p.timed_out),
    ("shoal_workers_started_total", "Worker processes started, replacements included.",
     lambda p: p.workers_started),
    ("shoal_workers_lost_total", "Worker processes that died or were stopped unexpectedly.",
     lambda p: p.workers_lost),
)
_POOL_GAUGES: tuple[tuple[str, str, _Getter], ...] = (
    ("shoal_jobs_pending", "Jobs queued in the engine, not yet handed to a worker.", lambda p: p.pending),
    ("shoal_jobs_in_flight", "Jobs handed to workers (running or in their inboxes).", lambda p: p.in_flight),
    ("shoal_workers", "Worker slots the pool is configured with.", lambda p: p.workers),
    ("shoal_pool_up", "1 while the pool is running, 0 when closing or broken.",
     lambda p: 1.0 if p.state == "running" else 0.0),
    ("shoal_pool_start_time_seconds", "When the pool started, in seconds since the Unix epoch.",
     lambda p: p.created),
    ("shoal_arena_used_bytes", "Bytes of the pool's shared-memory arena in use now.", lambda p: p.arena_used_bytes),
    ("shoal_arena_peak_bytes", "Most bytes of the arena in use at once so far.", lambda p: p.arena_peak_bytes),
    ("shoal_arena_limit_bytes", "The arena's size limit in bytes.", lambda p: p.arena_limit_bytes),
)
# Per worker slot, labelled pool, pid and worker. The slot's counters live
# in the stats block and survive the worker's replacement; CPU time is the
# current process's (it starts again from 0 after a restart, which
# Prometheus counts as a counter reset).
_WORKER_COUNTERS: tuple[tuple[str, str, _WorkerGetter], ...] = (
    ("shoal_worker_tasks_completed_total",
     "Task items finished without an exception (a submit counts 1, a map item 1).", lambda w: w.tasks_completed),
    ("shoal_worker_tasks_failed_total", "Task items that raised an exception.", lambda w: w.tasks_failed),
    ("shoal_worker_jobs_completed_total", "Results sent back (a map chunk is one job).", lambda w: w.jobs_completed),
    ("shoal_worker_busy_seconds_total", "Seconds spent running jobs, (de)serialisation included.",
     lambda w: w.busy_s),
    ("shoal_worker_deserialize_seconds_total", "Seconds spent unpickling job arguments.", lambda w: w.deserialize_s),
    ("shoal_worker_serialize_seconds_total", "Seconds spent pickling results.", lambda w: w.serialize_s),
    ("shoal_worker_received_bytes_total", "Bytes of job payloads received.", lambda w: w.bytes_in),
    ("shoal_worker_sent_bytes_total", "Bytes of result payloads sent.", lambda w: w.bytes_out),
    ("shoal_worker_arena_received_bytes_total", "Bytes of argument buffers received through the shared-memory arena.",
     lambda w: w.arena_bytes_in),
    ("shoal_worker_arena_sent_bytes_total", "Bytes of result buffers sent through the shared-memory arena.",
     lambda w: w.arena_bytes_out),
    ("shoal_worker_cpu_seconds_total",
     "User and system CPU seconds of the slot's current worker process (from /proc; restarts at 0 with a new process).",
     lambda w: w.cpu_s),
)
_WORKER_GAUGES: tuple[tuple[str, str, _WorkerGetter], ...] = (
    ("shoal_worker_resident_memory_bytes", "Resident memory of the slot's current worker process (from /proc).",
     lambda w: w.rss_bytes),
    ("shoal_worker_current_task_seconds", "How long the task the worker runs now has run; 0 when idle.",
     lambda w: w.running_for_s or 0.0),
    ("shoal_worker_startup_seconds",
     "Seconds the current worker took from its start to ready (interpreter, imports, initializer).",
     lambda w: w.startup_s),
)
_HISTOGRAM_HELP = (
    "Task durations (a map chunk of n items adds n samples of its mean item time). _sum is approximate: "
    "the workers' busy seconds, which include (de)serialisation."
)


def _le(bound: float) -> str:
    # Bounds are whole microseconds: rounding to them drops float noise (0.0010240000000000002).
    return "+Inf" if bound == float("inf") else repr(round(bound, 6))


def _histogram(workers: Iterable[WorkerSnapshot]) -> tuple[list[tuple[str, float]], float]:
    """The pool's task-duration histogram in Prometheus' form: cumulative
    counts at the kept bounds and +Inf (the stats block's buckets each count
    their own range only), and the busy seconds as an approximate sum (the
    block keeps no exact sum of task durations)."""
    counts = [0] * len(DURATION_BOUNDS_S)
    total_s = 0.0
    for w in workers:
        for i, n in enumerate(w.duration_buckets[: len(counts)]):
            counts[i] += n
        total_s += w.busy_s
    cumulative, running = [], 0
    for n in counts:
        running += n
        cumulative.append(running)
    buckets: list[tuple[str, float]] = [(_le(DURATION_BOUNDS_S[i]), cumulative[i]) for i in _KEPT_BOUNDS]
    buckets.append(("+Inf", cumulative[-1]))
    return buckets, total_s


class PoolCollector:
    """A prometheus_client collector of the pools ``list_pools(pid)`` finds,
    read afresh at each scrape (so pools that start later show up, and pools
    that end drop out). Registered in a registry of its own, not the global
    one: the numbers are the pools', not this process's."""

    def __init__(self, pid: Optional[int] = None) -> None:
        self.pid = pid

    def describe(self) -> list[Metric]:
        # No names to check for clashes, and no scrape when it is registered.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self.families(list_pools(self.pid))

    def families(self, pools: list[PoolSnapshot]) -> list[Metric]:
        """The metric families of these snapshots (every family, even
        without samples, so HELP and TYPE are always there)."""
        count = GaugeMetricFamily("shoal_pools", "Live shoal pools this endpoint sees.", value=len(pools))
        info = InfoMetricFamily("shoal_pool", "The pool's kind (Executor or Pool) and its program's name.",
                                labels=_POOL)
        pool_state = GaugeMetricFamily("shoal_pool_state", "1 for the state the pool is in, 0 for the others.",
                                       labels=(*_POOL, "state"))
        counters = [(CounterMetricFamily(n, h, labels=_POOL), get) for n, h, get in _POOL_COUNTERS]
        gauges = [(GaugeMetricFamily(n, h, labels=_POOL), get) for n, h, get in _POOL_GAUGES]
        histogram = HistogramMetricFamily("shoal_task_duration_seconds", _HISTOGRAM_HELP, labels=_POOL)
        w_counters = [(CounterMetricFamily(n, h, labels=_WORKER), get) for n, h, get in _WORKER_COUNTERS]
        w_gauges = [(GaugeMetricFamily(n, h, labels=_WORKER), get) for n, h, get in _WORKER_GAUGES]
        restarts = CounterMetricFamily(
            "shoal_worker_restarts_total",
            "Replacements of the slot's worker, by how the replaced one ended: exit (non-zero code), signal, "
            "timeout, memory (limit), retired (max_tasks_per_child), corrupt (shared memory).",
            labels=(*_WORKER, "cause"))
        w_state = GaugeMetricFamily("shoal_worker_state", "1 for the state the worker slot is in, 0 for the others.",
                                    labels=(*_WORKER, "state"))
        for p in pools:
            labels = [p.name, str(p.pid)]
            info.add_metric(labels, {"kind": p.kind, "program": p.label})
            for state in POOL_STATES:
                pool_state.add_metric([*labels, state], 1.0 if p.state == state else 0.0)
            for family, get in counters + gauges:
                family.add_metric(labels, get(p))
            buckets, total_s = _histogram(p.worker_stats)
            histogram.add_metric(labels, buckets, total_s)
            for w in p.worker_stats:
                wl = [*labels, str(w.slot)]
                for family, wget in w_counters + w_gauges:
                    family.add_metric(wl, wget(w))
                for cause in RESTART_CAUSES:
                    restarts.add_metric([*wl, cause], w.restart_causes.get(cause, 0))
                other = w.restarts - sum(w.restart_causes.get(c, 0) for c in RESTART_CAUSES)
                if other > 0:  # replaced with no cause recorded
                    restarts.add_metric([*wl, "other"], other)
                for state in WORKER_STATES:
                    w_state.add_metric([*wl, state], 1.0 if w.state == state else 0.0)
        return [count, info, pool_state, *(f for f, _ in counters), *(f for f, _ in gauges), histogram,
                *(f for f, _ in w_counters), *(f for f, _ in w_gauges), restarts, w_state]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False  # a scrape is one short answer; close() does not wait for one

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that went away mid-answer: nothing for the user to act on.
        _log.debug("shoal metrics: error serving %s", client_address, exc_info=True)


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("shoal metrics: %s " + format, self.address_string(), *args)


_WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _dispatch(metrics_app: _WsgiApp) -> _WsgiApp:
    """``/metrics`` answered by prometheus_client; ``/`` a pointer to it;
    anything else 404. A scrape that fails answers 500 with one line (the
    details go to the shoal logger), not a traceback on the program's stderr."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            try:
                return list(metrics_app(environ, start_response))
            except Exception:
                _log.warning("shoal metrics: a scrape failed", exc_info=True)
                status, body = "500 Internal Server Error", b"shoal metrics: the scrape failed (see the shoal logger)\n"
        elif path == "/":
            status, body = "200 OK", b"shoal metrics: Prometheus metrics are at /metrics\n"
        else:
            status, body = "404 Not Found", b"shoal metrics: not found; the metrics are at /metrics\n"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class MetricsServer(BackgroundServer):
    """A running /metrics endpoint (`.url`). `close()`, or leaving a ``with``
    block, stops it and frees the port."""

    def __init__(self, server: _Server, host: str, pid: Optional[int]) -> None:
        super().__init__(server, host, "/metrics", "shoal-metrics")
        self.pid = pid


def serve_metrics(port: int = 0, host: str = "127.0.0.1", pid: Optional[int] = None) -> MetricsServer:
    """Serves Prometheus metrics of this user's shoal pools (of process
    `pid` only, if given: ``pid=os.getpid()`` for this process's) at
    ``http://host:port/metrics`` and returns at once; the server runs in a
    daemon thread until `close()`. ``port=0`` picks a free port (`.port`).

        with shoal.obs.metrics.serve_metrics(9464) as metrics:
            print(metrics.url)       # http://127.0.0.1:9464/metrics

    Binds 127.0.0.1 unless `host` says otherwise: the numbers are this
    user's. Raises OSError with a one-line message if the port is in use or
    the address cannot be bound, ValueError for a port out of range, and
    ImportError if prometheus-client is not installed.
    """
    if _missing is not None:
        raise ImportError(f"shoal metrics need prometheus-client: pip install 'shoal[monitor]' ({_missing})")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535 (0: a free one), not {port!r}")
    registry = CollectorRegistry()
    registry.register(PoolCollector(pid))
    server_cls: type[_Server] = _Server
    if ":" in host:
        server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    try:
        server = server_cls((host, port), _Handler)
    except OSError as exc:
        raise listen_error(exc, host, port) from None
    server.set_app(_dispatch(make_wsgi_app(registry)))
    metrics = MetricsServer(server, host, pid)
    _log.debug("shoal metrics: serving %s", metrics.url)
    return metrics
