"""Batch cloning on dask: parallel efficiency of 2 workers against 1, and the overhead
of a batch against calling ``clone`` directly.

Inputs: ``--chunks`` (default 8) consecutive pieces of ``--width`` Å (default 50) of the
real PHOENIX Z-band sample (3900 K), written as PHOENIX ``.dat`` files; cloned with
``teff=3900`` and the defaults otherwise (300 epochs, one refinement pass).

Runs, all on local clusters started beforehand (their start, with torch imported on
every worker and one warm-up clone, is reported separately):

* ``1 worker x 1 thread`` and ``2 workers x 1 thread``: parallel efficiency
  ``T1 / (2 T2)`` (target >= 80 %);
* the share of each worker's time spent inside clones, and the mean time of one clone
  on its worker (it grows with 2 workers only when the cores are not free);
* overhead: a batch of one chunk on a warm 1-worker cluster against ``clone`` of the
  same chunk in this process (warm too), median of ``--repeats`` (target <= 3 s).

The machine may be shared: the load average before and after is printed with the table.
Run ``python benchmarks/bench_batch.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _chunks(folder: Path, n: int, width_angstrom: float) -> list[Path]:
    from blase_specutils import datasets

    lines = datasets.phoenix_path("Z").read_text().splitlines(keepends=True)
    rows = int(round(width_angstrom / 0.01))  # the Z band sample has 0.01 Å steps
    folder.mkdir(parents=True, exist_ok=True)
    start0 = 25000  # 8550 Å, clear of the band edge
    paths = []
    for k in range(n):
        start = start0 + k * rows
        path = folder / f"chunk{k:02d}_PHOENIX.dat"
        path.write_text("".join(lines[start : start + rows]))
        paths.append(path)
    return paths


def _warm_client(n_workers: int, threads: int, warm_input: Path, job, out: Path):
    """A started cluster whose workers have imported torch and cloned once."""
    from distributed import Client

    from blase_specutils import batch

    started = time.perf_counter()
    cluster = batch._local_cluster(n_workers, threads)
    client = Client(cluster, set_as_default=False)
    client.wait_for_workers(n_workers)
    ready = time.perf_counter() - started
    client.run(lambda: __import__("blase_specutils.cloning"))
    imported = time.perf_counter() - started
    # a warm-up clone on every worker (the first clone in a process pays one-off costs)
    batch.run([warm_input] * n_workers, job, out, client=client, progress=False)
    warm = time.perf_counter() - started
    return cluster, client, {"start_s": ready, "import_s": imported, "warm_s": warm}


def _timed_batch(inputs, job, out: Path, client) -> tuple[float, object]:
    from blase_specutils import batch

    started = time.perf_counter()
    summary = batch.run(inputs, job, out, client=client, progress=False)
    elapsed = time.perf_counter() - started
    bad = [row["error"] for row in summary if row["status"] != "done"]
    if bad:
        raise RuntimeError(f"batch items failed: {bad}")
    return elapsed, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=8, help="PHOENIX chunks (default 8)")
    parser.add_argument("--width", type=float, default=50.0, help="chunk width, Å (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="overhead repeats (default 3)")
    args = parser.parse_args()

    from blase_specutils import batch
    from blase_specutils.astro.templates import read_template
    from blase_specutils.cloning import clone

    load_before = os.getloadavg()
    options = {"teff": 3900}
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch-"))
    inputs = _chunks(tmp / "in", args.chunks + 1, args.width)
    warm_input, inputs = inputs[-1], inputs[:-1]
    print(
        f"# bench_batch: torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {args.chunks} chunks of {args.width:g} Å of PHOENIX Z "
        f"(3900 K), clone options {options} (else defaults)"
    )
    print(f"# load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")

    rows = []
    runs = {}
    for n_workers, threads in ((1, 1), (2, 1)):
        job = batch.Job("clone", options={**options, "num_threads": threads})
        cluster, client, start = _warm_client(
            n_workers, threads, warm_input, job, tmp / f"warm{n_workers}x{threads}"
        )
        try:
            elapsed, summary = _timed_batch(inputs, job, tmp / f"run{n_workers}x{threads}", client)
            if (n_workers, threads) == (1, 1):  # the overhead, on the warm 1-worker cluster
                template = read_template(inputs[0])
                direct, single = [], []
                for k in range(args.repeats):
                    t0 = time.perf_counter()
                    clone(template, **options, num_threads=1, progress=False)
                    direct.append(time.perf_counter() - t0)
                    t, _ = _timed_batch([inputs[0]], job, tmp / f"single{k}", client)
                    single.append(t)
                runs["overhead"] = (statistics.median(direct), statistics.median(single))
        finally:
            client.close()
            cluster.close()
        per_item = float(summary["wall_time"].mean())
        runs[(n_workers, threads)] = elapsed
        # the share of the workers' time spent inside clones (the rest: dask, I/O, idle)
        runs[("busy", n_workers)] = float(summary["wall_time"].sum()) / (n_workers * elapsed)
        rows.append((n_workers, threads, start, elapsed, per_item, int(summary["n_lines"].sum())))
        print(
            f"#   {n_workers} worker(s) x {threads} thread(s): {elapsed:.2f} s "
            f"(cluster start {start['start_s']:.2f} s, + torch import {start['import_s']:.2f} s)"
        )
    load_after = os.getloadavg()

    t1, t2 = runs[(1, 1)], runs[(2, 1)]
    efficiency = t1 / (2 * t2)
    direct, single = runs["overhead"]
    print()
    print(
        "| workers x torch threads | cluster start s | start + torch import + warm-up s "
        "| batch s | mean s / clone on its worker | lines (all chunks) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for n_workers, threads, start, elapsed, per_item, n_lines in rows:
        print(
            f"| {n_workers} x {threads} | {start['start_s']:.2f} | {start['warm_s']:.2f} | "
            f"{elapsed:.2f} | {per_item:.2f} | {n_lines:,} |"
        )
    print()
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| speed-up 2 workers vs 1 (1 thread each) | {t1 / t2:.2f}x | |")
    print(f"| parallel efficiency T1 / (2 T2) | {100 * efficiency:.0f} % | >= 80 % |")
    print(
        f"| workers busy inside clones, 1 / 2 workers | {100 * runs[('busy', 1)]:.0f} % / "
        f"{100 * runs[('busy', 2)]:.0f} % | (dask overhead = the rest) |"
    )
    print(
        f"| mean s per clone on its worker, 1 / 2 workers | {rows[0][4]:.2f} / {rows[1][4]:.2f} |"
        " equal on an idle machine |"
    )
    print(f"| clone() directly, one chunk (median of {args.repeats}) | {direct:.2f} s | |")
    print(f"| batch.run of that one chunk, warm cluster | {single:.2f} s | |")
    print(f"| overhead of a 1-item batch | {single - direct:.2f} s | <= 3 s |")
    print(
        f"| load average before / after (1 min) | {load_before[0]:.2f} / {load_after[0]:.2f} | "
        "idle machine: ~0 |"
    )


if __name__ == "__main__":
    main()
