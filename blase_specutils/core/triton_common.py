"""What the Triton kernels share: the optional import, the device test, the window geometry.

The pseudo-Voigt kernels (:mod:`.triton_kernels`) and the exact-Voigt ones
(:mod:`.triton_voigt`) both build on these; this module imports neither of them, nor
any other kernel module, only :mod:`torch` and (where installed) :mod:`triton`.
"""

from __future__ import annotations

import os

import torch

__all__ = [
    "available",
    "block_shape",
    "bucket_arguments",
    "require_triton",
    "BLOCK_ELEMENTS",
    "BACKWARD_BLOCK_ELEMENTS",
    "BLOCK_COLUMNS",
    "BLOCK_LINES",
]

try:  # pragma: no cover - exercised only where triton is installed
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None
    tl = None


def available(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on ``device``.

    True on a CUDA device when ``triton`` imports; on the CPU only under Triton's
    interpreter (environment variable ``TRITON_INTERPRET=1``, set before import).
    """
    if triton is None:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


#: Window elements per program (rows × columns) forward and backward, and the widest
#: column block: narrow windows get narrower column blocks and more rows, so no lanes idle
#: on padding. The backward keeps six running sums per row and more temporaries: with
#: 1,024 elements it needed 255 registers and spilled in float64 (sm_90, compiled
#: offline); 256 fit in 128.
BLOCK_ELEMENTS = 1024
BACKWARD_BLOCK_ELEMENTS = 256
BLOCK_COLUMNS = 64
#: Lines per program of the per-line coefficient kernels.
BLOCK_LINES = 128


def bucket_arguments(layout):
    """Each non-empty bucket with its row slice and the kernels' integer arguments.

    Yields ``(bucket, rows_slice, scalars)`` with ``scalars`` = pixels in the grid, rows,
    width, first and last-plus-one core column.
    """
    for bucket in layout.buckets:
        rows = bucket.rows.stop - bucket.rows.start
        if rows == 0:
            continue
        core = bucket.core
        core_lo = 0 if core.start is None else int(core.start)
        core_hi = bucket.width if core.stop is None else int(core.stop)
        yield bucket, bucket.rows, (layout.n_pixels, rows, bucket.width, core_lo, core_hi)


def block_shape(width: int, elements: int = BLOCK_ELEMENTS) -> tuple[int, int]:
    """Rows and columns per program for windows of ``width`` pixels (powers of two)."""
    columns = min(BLOCK_COLUMNS, triton.next_power_of_2(width))
    return max(elements // columns, 1), columns


def require_triton(device):
    if not available(device):
        raise RuntimeError(
            f"the Triton kernels cannot run on {device}: they need triton and a CUDA device "
            "(or TRITON_INTERPRET=1 on the CPU)"
        )


if triton is not None:

    @triton.jit
    def log1p_kernel(x):
        # log(1 + x) to a few ulp with only log (Kahan): exact where 1 + x rounds to 1.
        u = 1.0 + x
        safe = tl.where(u == 1.0, 2.0, u)
        return tl.where(u == 1.0, x, tl.log(safe) * x / (safe - 1.0))

    @triton.jit
    def window_positions(
        r, row_ok, col, width, start_ptr, center_ptr, wavelength_ptr, n_pixels, shift
    ):
        # The window of each row, formed here instead of read from memory: pixel indices
        # start + col clamped into the grid, whether they were inside it, and the offsets
        # λ − λc_ref in float64, rounded once to the working dtype (that of ``shift``).
        mask = row_ok[:, None] & (col < width)[None, :]
        start = tl.load(start_ptr + r, mask=row_ok, other=0)
        raw = start[:, None] + col[None, :]
        inside = mask & (raw >= 0) & (raw < n_pixels)
        pixel = tl.minimum(tl.maximum(raw, 0), n_pixels - 1)
        center = tl.load(center_ptr + r, mask=row_ok, other=0.0)
        wavelength = tl.load(wavelength_ptr + pixel, mask=mask, other=0.0)
        offset = (wavelength - center[:, None]).to(shift.dtype)
        return inside, pixel, offset
