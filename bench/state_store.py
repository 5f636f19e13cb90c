"""StateStore throughput: writes/s, server-row writes/s (rows keyed by (kind, name)) and
reads/s with 1 and 4 processes on one SQLite file.

Prints the 4-process/1-process ratios and the number of lock errors (expected: 0).
Run: python bench/state_store.py [--ops 500]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sqlite3
import tempfile
import time
from pathlib import Path

from owllm.state_store import ServerStatus, StateStore

KINDS = ("write", "server", "read")


def _work(db: str, worker: int, ops: int, kind: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = StateStore(db)
    errors = 0
    start = time.perf_counter()
    for i in range(ops):
        try:
            if kind == "write":
                store.upsert_model(f"w{worker}-{i}", "transformers", "/m", "k", {"i": i})
            elif kind == "server":  # a status change per write: the row and its event
                store.upsert_server(f"s{worker}-{i % 20}", kind="model" if i % 2 else "tools",
                                    status=(ServerStatus.STARTING, ServerStatus.RUNNING)[i % 2],
                                    pid=i)
            else:
                store.get_model(f"w0-{i % 100}")
        except sqlite3.OperationalError:
            errors += 1
    out.put((time.perf_counter() - start, errors))


def run(db: str, procs: int, ops: int, kind: str) -> tuple[float, int]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_work, args=(db, w, ops, kind, out)) for w in range(procs)]
    for p in workers:
        p.start()
    results = [out.get() for _ in workers]
    for p in workers:
        p.join()
    wall = max(r[0] for r in results)
    return procs * ops / wall, sum(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for kind in KINDS:
            for procs in (1, 4):
                db = str(Path(tmp) / f"{kind}-{procs}.db")
                seed = StateStore(db)
                for i in range(100):
                    seed.upsert_model(f"w0-{i}", "transformers", "/m", "k", {})
                rows[(kind, procs)] = run(db, procs, args.ops, kind)
        for kind in KINDS:
            one, four = rows[(kind, 1)], rows[(kind, 4)]
            print(f"{kind}s/s: 1 process {one[0]:8.0f}   4 processes {four[0]:8.0f}   "
                  f"ratio 4p/1p {four[0] / one[0]:.2f}   lock errors {one[1] + four[1]}")


if __name__ == "__main__":
    main()
