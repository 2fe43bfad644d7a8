"""Prometheus metrics (shoal.obs.metrics.serve_metrics): real pools in this
process (and one in a child process), the real endpoint scraped over HTTP
and parsed with prometheus_client's own parser, and once a real Prometheus
server (/usr/bin/prometheus) scraping it and answering queries."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import shoal
import tasks
from shoal.obs import DURATION_BOUNDS_S
from shoal.obs.metrics import serve_metrics

PROMETHEUS = "/usr/bin/prometheus"
# Labels a series may carry: all of low cardinality (no job ids, no arguments).
ALLOWED_LABELS = {"pool", "pid", "worker", "state", "cause", "le", "kind", "program"}


def scrape(url):
    """{sample name: [(labels, value), ...]} and the families, from a real GET of `url`."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    families = list(text_string_to_metric_families(text))
    samples = {}
    for family in families:
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples, families


def values(samples, name, **labels):
    """The values of series `name` whose labels include `labels`, by worker (or "" for pool series)."""
    return {lab.get("worker", ""): v for lab, v in samples.get(name, [])
            if all(lab.get(k) == str(want) for k, want in labels.items())}


def do_work(ex):
    """Runs 7 submits that succeed, 3 that raise and a map of 40 items in 4
    chunks; returns what the pool's counters must then say."""
    futures = [ex.submit(tasks.fail_on, i, -1) for i in range(7)]
    futures += [ex.submit(tasks.fail_on, i, i) for i in range(3)]  # raise ValueError
    raised = 0
    for f in futures:
        try:
            f.result(timeout=30)
        except ValueError:
            raised += 1
    assert raised == 3
    assert list(ex.map(tasks.square, range(40), chunksize=10)) == [x * x for x in range(40)]
    return {"ok": 7 + 40, "failed": 3, "jobs": 10 + 4}


def scrape_when(url, done, timeout=10.0):
    """Scrapes until done(samples) (a worker's counters may land a moment after its result)."""
    deadline = time.monotonic() + timeout
    while True:
        samples, families = scrape(url)
        if done(samples) or time.monotonic() > deadline:
            return samples, families
        time.sleep(0.02)


def test_the_counters_and_the_histogram_are_what_the_pool_did(no_leaks):
    with shoal.Executor(2) as ex, serve_metrics(port=0, pid=os.getpid()) as metrics:
        want = do_work(ex)
        pool = {"pool": ex.stats().name, "pid": os.getpid()}
        samples, _ = scrape_when(metrics.url, lambda s: (
            sum(values(s, "shoal_worker_tasks_completed_total", **pool).values()) == want["ok"]
            and sum(values(s, "shoal_worker_tasks_failed_total", **pool).values()) == want["failed"]
            and values(s, "shoal_task_duration_seconds_count", **pool) == {"": want["ok"] + want["failed"]}))
        snap = ex.stats()

        completed = values(samples, "shoal_worker_tasks_completed_total", **pool)
        assert set(completed) == {"0", "1"}
        assert sum(completed.values()) == want["ok"]
        assert sum(values(samples, "shoal_worker_tasks_failed_total", **pool).values()) == want["failed"]
        assert sum(values(samples, "shoal_worker_jobs_completed_total", **pool).values()) == want["jobs"]
        assert values(samples, "shoal_jobs_submitted_total", **pool) == {"": want["jobs"]}
        assert values(samples, "shoal_jobs_completed_total", **pool) == {"": want["jobs"]}
        assert values(samples, "shoal_jobs_pending", **pool) == {"": 0}
        assert values(samples, "shoal_jobs_in_flight", **pool) == {"": 0}
        assert values(samples, "shoal_workers", **pool) == {"": 2}
        assert values(samples, "shoal_workers_started_total", **pool) == {"": 2}
        # The pool's other counters are its stats block's (nothing was lost, cancelled or retried).
        for name, field in [("shoal_jobs_failed_total", "failed"), ("shoal_jobs_cancelled_total", "cancelled"),
                            ("shoal_jobs_retried_total", "retried"), ("shoal_jobs_timed_out_total", "timed_out"),
                            ("shoal_workers_lost_total", "workers_lost"),
                            ("shoal_arena_limit_bytes", "arena_limit_bytes")]:
            assert values(samples, name, **pool) == {"": getattr(snap, field)}, name
        assert values(samples, "shoal_pool_up", **pool) == {"": 1}
        assert values(samples, "shoal_pool_state", **pool, state="running") == {"": 1}
        # Each worker is in exactly one state, and both wait for work now.
        for worker in ("0", "1"):
            states = {lab["state"]: v for lab, v in samples["shoal_worker_state"]
                      if lab["pool"] == pool["pool"] and lab["worker"] == worker}
            assert states["idle"] == 1 and sum(states.values()) == 1
            assert values(samples, "shoal_worker_resident_memory_bytes", **pool)[worker] > 1 << 20
        assert sum(values(samples, "shoal_worker_restarts_total", **pool).values()) == 0

        # The histogram: every task once (those that raised too), cumulative buckets up to +Inf.
        buckets = [(float(lab["le"]), v) for lab, v in samples["shoal_task_duration_seconds_bucket"]
                   if lab["pool"] == pool["pool"]]
        bounds = [le for le, _ in buckets]
        assert bounds == sorted(set(bounds)) and buckets[-1] == (float("inf"), want["ok"] + want["failed"])
        # Each `le` counts every task up to it: the stats block's own buckets (each its range only) summed.
        own = [sum(counts) for counts in zip(*(w.duration_buckets for w in snap.worker_stats))]
        for le, count in buckets:
            assert count == sum(n for n, bound in zip(own, DURATION_BOUNDS_S) if bound <= le * (1 + 1e-9)), le
        assert values(samples, "shoal_task_duration_seconds_count", **pool) == {"": want["ok"] + want["failed"]}
        busy = sum(values(samples, "shoal_worker_busy_seconds_total", **pool).values())
        assert values(samples, "shoal_task_duration_seconds_sum", **pool) == {"": pytest.approx(busy)}
        assert busy > 0


def test_names_and_labels_follow_the_prometheus_conventions(no_leaks):
    with shoal.Executor(2) as ex, serve_metrics(pid=os.getpid()) as metrics:
        do_work(ex)
        samples, families = scrape(metrics.url)
    assert len(families) > 20
    for family in families:
        assert family.name.startswith("shoal_"), family.name
        assert family.documentation, f"{family.name} has no HELP"
        for s in family.samples:
            if family.type == "counter":
                assert s.name.endswith("_total"), s.name
            else:
                assert not s.name.endswith("_total"), f"{s.name} is a {family.type} named like a counter"
            assert set(s.labels) <= ALLOWED_LABELS, s
    # Seconds and bytes, never milliseconds or kilobytes.
    assert not [n for n in samples if "_ms" in n or "milli" in n or "_kb" in n or "kib" in n]
    assert "shoal_worker_busy_seconds_total" in samples and "shoal_arena_used_bytes" in samples


def test_every_pool_of_the_user_and_only_a_pids_pools_with_pid(no_leaks, tmp_path):
    # A pool of another process, of this user: a child that keeps an Executor open until told.
    code = ("import sys, shoal\n"
            "with shoal.Executor(1) as ex:\n"
            "    ex.submit(abs, -1).result(timeout=30)\n"
            "    print(ex.stats().name, flush=True)\n"
            "    sys.stdin.readline()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        theirs = child.stdout.readline().strip()
        assert theirs.startswith("shoal-"), "the child's pool did not start"
        with shoal.Executor(2) as ex, serve_metrics() as everyone, \
                serve_metrics(pid=os.getpid()) as mine, serve_metrics(pid=child.pid) as childs:
            ours = ex.stats().name
            pools = {lab["pool"]: lab["pid"] for lab, _ in scrape(everyone.url)[0]["shoal_workers"]}
            assert pools[ours] == str(os.getpid()) and pools[theirs] == str(child.pid)
            assert {lab["pool"] for lab, _ in scrape(mine.url)[0]["shoal_workers"]} == {ours}
            samples, _ = scrape(childs.url)
            assert values(samples, "shoal_workers") == {"": 1}
            assert values(samples, "shoal_pools") == {"": 1}
            assert sum(values(samples, "shoal_worker_tasks_completed_total", pool=theirs).values()) == 1
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert child.returncode == 0


def test_a_second_pool_is_a_second_pool_label_and_leaves_when_it_ends(no_leaks):
    with shoal.Executor(2) as first, serve_metrics(pid=os.getpid()) as metrics:
        with shoal.Executor(1) as second:
            assert second.submit(tasks.square, 3).result(timeout=30) == 9
            names = {"first": first.stats().name, "second": second.stats().name}
            samples, _ = scrape(metrics.url)
            workers = {lab["pool"]: v for lab, v in samples["shoal_workers"]}
            assert workers == {names["first"]: 2, names["second"]: 1}
            assert values(samples, "shoal_pools") == {"": 2}
            kinds = {lab["pool"]: lab["kind"] for lab, _ in samples["shoal_pool_info"]}
            assert kinds == {names["first"]: "Executor", names["second"]: "Executor"}
            assert set(values(samples, "shoal_worker_tasks_completed_total", pool=names["second"])) == {"0"}
        samples, _ = scrape(metrics.url)
        assert {lab["pool"] for lab, _ in samples["shoal_workers"]} == {names["first"]}


def test_a_port_in_use_is_a_one_line_error_that_says_what_to_do():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as caught:
            serve_metrics(port=port)
    err = caught.value
    assert err.errno == errno.EADDRINUSE
    message = str(err)
    assert f"port {port}" in message and "in use" in message and "port=0" in message
    assert "\n" not in message
    assert err.__cause__ is None and err.__suppress_context__  # no chained traceback from deep inside
    with pytest.raises(ValueError, match="0 to 65535"):
        serve_metrics(port=70000)


def test_close_frees_the_port_and_is_idempotent():
    metrics = serve_metrics()
    assert metrics.host == "127.0.0.1" and metrics.url == f"http://127.0.0.1:{metrics.port}/metrics"
    scrape(metrics.url)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/other", timeout=10)
    assert missing.value.code == 404
    port = metrics.port
    metrics.close()
    metrics.close()
    assert metrics.closed and not metrics._thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(metrics.url, timeout=10)
    # The port is free: a server binds it again (SO_REUSEADDR, as servers do,
    # since our side of the closed scrape connections is in TIME_WAIT).
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
    with serve_metrics(port=port) as same:
        assert same.port == port
        scrape(same.url)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base, path):
    with urllib.request.urlopen(base + path, timeout=5) as reply:
        return json.load(reply)


@pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK), reason=f"{PROMETHEUS} is missing: apt-get install prometheus")
def test_a_real_prometheus_scrapes_the_endpoint(no_leaks, tmp_path):
    with shoal.Executor(2) as ex, serve_metrics(pid=os.getpid()) as metrics:
        want = do_work(ex)
        deadline = time.monotonic() + 10
        while ((ex.stats().tasks_completed, ex.stats().tasks_failed) != (want["ok"], want["failed"])
               and time.monotonic() < deadline):
            time.sleep(0.02)
        per_worker = {str(w.slot): w.tasks_completed for w in ex.stats().worker_stats}
        assert sum(per_worker.values()) == want["ok"]
        pool = ex.stats().name

        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: shoal\n    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{metrics.port}']\n")
        web = f"127.0.0.1:{_free_port()}"
        log = open(tmp_path / "prometheus.log", "w+")
        server = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address={web}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        base = f"http://{web}"
        try:
            found, health = {}, None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    targets = _api(base, "/api/v1/targets")["data"]["activeTargets"]
                    health = targets[0]["health"] if targets else None
                    result = _api(base, "/api/v1/query?query=shoal_worker_tasks_completed_total")["data"]["result"]
                    found = {r["metric"]["worker"]: int(float(r["value"][1])) for r in result
                             if r["metric"].get("pool") == pool}
                except (OSError, ValueError, KeyError):
                    pass  # not listening yet
                if health == "up" and found == per_worker:
                    break
                time.sleep(0.25)
            log.seek(0)
            assert server.poll() is None, "prometheus exited: " + log.read()[-2000:]
            assert health == "up", f"target health {health!r}"
            assert found == per_worker, f"prometheus has {found}, the pool says {per_worker}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
            log.close()
