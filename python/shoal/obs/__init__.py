"""Seeing inside running pools: stats snapshots, insights, traces, metrics, the dashboard.

    snapshot.py   typed snapshots (PoolSnapshot, WorkerSnapshot) of a pool's stats block
    reader.py     finding the stats blocks of this user's pools and reading them
    insights.py   a summary a person reads (Executor.insights())
    trace.py      timelines in Chrome trace JSON (shoal.trace)
    metrics.py    Prometheus /metrics (shoal.serve_metrics)
    dashboard.py  the live web page (python -m shoal dashboard)
"""
from .reader import StatsError, list_pools, read_pool
from .snapshot import DURATION_BOUNDS_S, POOL_STATES, WORKER_STATES, PoolSnapshot, SlowTask, TaskError, WorkerSnapshot

__all__ = [
    "DURATION_BOUNDS_S",
    "POOL_STATES",
    "WORKER_STATES",
    "PoolSnapshot",
    "SlowTask",
    "StatsError",
    "TaskError",
    "WorkerSnapshot",
    "list_pools",
    "read_pool",
]
