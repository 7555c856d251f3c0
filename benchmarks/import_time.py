"""Time of ``import blase_specutils`` beyond ``import specutils``, in fresh processes.

Each run starts a new interpreter, imports specutils, then blase_specutils, and
reports both (perf_counter around each import) and whether torch or matplotlib got
imported by blase_specutils. The median over the runs is printed.

    python benchmarks/import_time.py [--runs 5] [--path CHECKOUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import json, sys, time
t0 = time.perf_counter(); import specutils; t1 = time.perf_counter()
before = set(sys.modules)
import blase_specutils; t2 = time.perf_counter()
new = set(sys.modules) - before
print(json.dumps({"specutils": t1 - t0, "beyond": t2 - t1,
                  "torch": any(m.split(".")[0] == "torch" for m in new),
                  "file": blase_specutils.__file__}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--path", default=str(Path(__file__).resolve().parents[1]))
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=args.path)
    runs = []
    for _ in range(args.runs):
        done = subprocess.run(
            [sys.executable, "-c", PROBE],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=args.path,
        )
        runs.append(json.loads(done.stdout))
    specutils_s = statistics.median(r["specutils"] for r in runs)
    beyond_s = statistics.median(r["beyond"] for r in runs)
    print(f"blase_specutils from {runs[0]['file']}")
    print(f"import specutils:                  {specutils_s:.2f} s (median of {args.runs})")
    print(f"import blase_specutils beyond it:  {beyond_s:.3f} s")
    print(f"torch imported by blase_specutils: {any(r['torch'] for r in runs)}")


if __name__ == "__main__":
    main()
