"""Inputs for tests/test_batch.py that kill the dask worker process reading them.

They live in an importable module (not the test file) so that worker processes can
unpickle them.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from blase_specutils.astro.templates import Template


def _on_a_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


class DyingTemplate(Template):
    """A template whose flux, read on a dask worker, kills that worker's process (SIGKILL)
    the first ``meta["deaths"]`` times (counted in the file ``meta["counter"]``)."""

    def __getattribute__(self, name):
        if name == "flux" and _on_a_worker():
            meta = object.__getattribute__(self, "meta")
            counter = Path(meta["counter"])
            deaths = int(counter.read_text()) if counter.exists() else 0
            if deaths < int(meta["deaths"]):
                counter.write_text(str(deaths + 1))
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__getattribute__(name)
