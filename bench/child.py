"""One benchmark process: one library, a list of scenarios, run in order.

Started by the harness as ``python -m bench.child '<json>'``. It reports on
stdout, one ``@@BENCH {json}`` line per event (anything else a library prints
is ignored): ``hello`` (versions, import time), ``begin`` (a scenario starts:
the harness's watchdog and memory sampler key on it), ``result``.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

MARK = "@@BENCH "


def emit(**event) -> None:
    sys.stdout.write(MARK + json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list) -> None:
    spec = json.loads(argv[0])
    lib, workers, quick = spec["lib"], spec["workers"], spec["quick"]
    t0 = time.perf_counter()
    from . import peers
    from .scenarios import BY_NAME
    from .peers import Unsupported

    cls = peers.ADAPTERS[lib]
    __import__(cls.module)
    import_s = time.perf_counter() - t0
    try:
        version = cls.version()
    except Exception:  # noqa: BLE001
        version = ""
    emit(event="hello", lib=lib, version=version, import_s=import_s, pid=os.getpid())
    ad = cls(workers)
    session = False
    try:
        for name in spec["scenarios"]:
            sc = BY_NAME[name]
            size = sc.sizes["quick" if quick else "full"]
            emit(event="begin", scenario=name)
            try:
                if sc.fresh_process:
                    if session:
                        raise RuntimeError("start-up must run first, in a fresh process")
                    session = True  # run_startup starts the session inside its timing
                elif not session:
                    ad.session_start()
                    session = True
                canon, metrics = sc.run(ad, size, workers)
                if sc.fresh_process:
                    metrics["import_s"] = import_s
                emit(event="result", scenario=name, status="ok", digest=canon, metrics=metrics)
            except Unsupported as exc:
                emit(event="result", scenario=name, status="n/a", error=str(exc))
            except BaseException as exc:  # noqa: BLE001 - every failure is a reported result
                tb = traceback.format_exc(limit=6)
                emit(event="result", scenario=name, status="error",
                     error=f"{type(exc).__name__}: {exc}"[:500], traceback=tb[-3000:])
    finally:
        if session:
            try:
                ad.session_stop()
            except Exception:  # noqa: BLE001
                pass
        emit(event="bye")
    if "shoal" in sys.modules:
        # The teardown skipped below would remove shoal's shared-memory names
        # (its owner token among them): without it they stay in /dev/shm.
        from shoal.runtime.lifecycle import run_exit_hooks

        run_exit_hooks()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip teardown: some libraries' atexit hooks are slow


if __name__ == "__main__":
    main(sys.argv[1:])
