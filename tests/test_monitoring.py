"""A pool's own monitoring options: ``metrics_port=`` serves /metrics while
the pool runs (pools of one process share a port), ``dashboard=True`` serves
the live page; a port in use fails the pool's construction with nothing left
running. Real servers, scraped over real HTTP."""
from __future__ import annotations

import logging
import socket
import urllib.request

import pytest

import shoal

import tasks


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def test_metrics_port_serves_this_processes_pools_while_the_pool_runs(no_leaks):
    with shoal.Executor(2, metrics_port=0) as ex:
        assert ex.submit(tasks.square, 4).result() == 16
        url = ex.metrics_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        text = _get(url)
        assert f'pool="{ex.stats().name}"' in text and "shoal_worker_tasks_completed_total" in text
    with pytest.raises(OSError):  # its server stopped with it
        _get(url)


def test_pools_asking_for_the_same_port_share_one_server(no_leaks):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with shoal.Executor(1, metrics_port=port) as a, shoal.Pool(1, metrics_port=port) as b:
        assert a.metrics_url == b.metrics_url
        text = _get(a.metrics_url)
        assert f'pool="{a.stats().name}"' in text and f'pool="{b.stats().name}"' in text
        b.close()
        b.join()
        assert f'pool="{a.stats().name}"' in _get(a.metrics_url)  # still served for the other


def test_a_metrics_port_in_use_fails_the_pool_saying_so_and_leaves_nothing(no_leaks):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"port {port}.*in use"):
            shoal.Executor(1, metrics_port=port)
    with pytest.raises(ValueError, match="metrics_port"):
        shoal.Executor(1, metrics_port=70000)


def test_dashboard_true_serves_the_page_and_logs_its_url(no_leaks, caplog):
    caplog.set_level(logging.INFO, logger="shoal")
    with shoal.Executor(2, dashboard=True) as ex:
        url = ex.dashboard_url
        assert url is not None and url.startswith("http://127.0.0.1:") and "token=" in url
        assert any(url in r.getMessage() for r in caplog.records)
        assert "<html" in _get(url).lower()


def test_monitoring_options_are_ignored_with_a_warning_in_the_serial_mode(caplog):
    caplog.set_level(logging.WARNING, logger="shoal")
    with shoal.Executor(start_method="inline", metrics_port=0) as ex:
        assert ex.submit(tasks.square, 3).result() == 9
        assert ex.metrics_url is None
    assert any("serial mode" in r.getMessage() for r in caplog.records)
