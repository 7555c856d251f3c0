"""Fused Triton kernels for the pseudo-Voigt line forest (optional, for CUDA GPUs).

The PyTorch kernel of :mod:`blase_specutils.core.sparse` runs a few dozen small
operations per bucket, forward and backward; on a GPU each is a kernel launch, so an
epoch is bound by launches, not arithmetic. Here each bucket costs one kernel forward
(profile, log transmission, scatter-add into the pixels) and one backward (the five
per-line gradient sums, accumulated in registers over the window), with the same
numbers as :class:`~blase_specutils.core.sparse._PseudoVoigtLogTransmission` up to
the order of floating-point additions.

Triton is optional: :func:`available` says whether these kernels can run on a device.
On a CPU they run only under Triton's interpreter (``TRITON_INTERPRET=1``), which is how
the test suite checks them against the PyTorch kernel without a GPU.
"""

from __future__ import annotations

import os

import torch

from .sparse import _unbucket

__all__ = ["available", "pseudo_voigt_log_transmission_triton"]

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


if triton is not None:

    @triton.jit
    def _log1p(x):
        # log(1 + x) to a few ulp with only log (Kahan): exact where 1 + x rounds to 1.
        u = 1.0 + x
        safe = tl.where(u == 1.0, 2.0, u)
        return tl.where(u == 1.0, x, tl.log(safe) * x / (safe - 1.0))

    @triton.jit
    def _row_parameters(r, row_ok, shift_ptr, a_ptr, h2_ptr, b_ptr, c_ptr, sign_ptr):
        # Rows past the end get harmless values (h2 = 1 keeps 1/(x² + h2) finite).
        shift = tl.load(shift_ptr + r, mask=row_ok, other=0.0)
        a = tl.load(a_ptr + r, mask=row_ok, other=0.0)
        h2 = tl.load(h2_ptr + r, mask=row_ok, other=1.0)
        b = tl.load(b_ptr + r, mask=row_ok, other=0.0)
        c = tl.load(c_ptr + r, mask=row_ok, other=0.0)
        sign = tl.load(sign_ptr + r, mask=row_ok, other=1.0)
        return shift, a, h2, b, c, sign

    @triton.jit
    def _profile(off, shift, a, h2, b, c, core):
        x = off - shift[:, None]
        x2 = x * x
        inv = 1.0 / (x2 + h2[:, None])
        gauss = tl.exp(tl.maximum(c[:, None] * x2, -80.0))
        gauss = tl.where(core[None, :], gauss, 0.0)
        av = a[:, None] * inv + b[:, None] * gauss
        return x, x2, inv, gauss, av

    @triton.jit
    def _forward_kernel(
        offset_ptr,
        pixel_ptr,
        valid_ptr,
        shift_ptr,
        a_ptr,
        h2_ptr,
        b_ptr,
        c_ptr,
        sign_ptr,
        out_ptr,
        rows,
        width,
        core_lo,
        core_hi,
        clip,
        HAS_VALID: tl.constexpr,
        LINEAR: tl.constexpr,
        EMISSION: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        col = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        row_ok = r < rows
        mask = row_ok[:, None] & (col < width)[None, :]
        index = r[:, None] * width + col[None, :]
        off = tl.load(offset_ptr + index, mask=mask, other=0.0)
        shift, a, h2, b, c, sign = _row_parameters(
            r, row_ok, shift_ptr, a_ptr, h2_ptr, b_ptr, c_ptr, sign_ptr
        )
        core = (col >= core_lo) & (col < core_hi)
        x, x2, inv, gauss, av = _profile(off, shift, a, h2, b, c, core)
        if EMISSION:
            av = av * sign[:, None]
        if LINEAR:
            value = _log1p(-tl.minimum(av, clip))
        else:
            value = -av
        if HAS_VALID:
            value = value * tl.load(valid_ptr + index, mask=mask, other=0.0)
        pixel = tl.load(pixel_ptr + index, mask=mask, other=0)
        tl.atomic_add(out_ptr + pixel, value, mask=mask)

    @triton.jit
    def _backward_kernel(
        offset_ptr,
        pixel_ptr,
        valid_ptr,
        grad_ptr,
        shift_ptr,
        a_ptr,
        h2_ptr,
        b_ptr,
        c_ptr,
        sign_ptr,
        grad_a_ptr,
        grad_h2_ptr,
        grad_b_ptr,
        grad_c_ptr,
        grad_shift_ptr,
        rows,
        width,
        core_lo,
        core_hi,
        clip,
        HAS_VALID: tl.constexpr,
        LINEAR: tl.constexpr,
        EMISSION: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = r < rows
        shift, a, h2, b, c, sign = _row_parameters(
            r, row_ok, shift_ptr, a_ptr, h2_ptr, b_ptr, c_ptr, sign_ptr
        )
        zero = shift * 0.0
        sum_inv = zero
        sum_lorentz = zero
        sum_lorentz_x = zero
        sum_gauss = zero
        sum_gauss_x2 = zero
        sum_gauss_x = zero
        for start in range(0, width, BLOCK_W):
            col = start + tl.arange(0, BLOCK_W)
            mask = row_ok[:, None] & (col < width)[None, :]
            index = r[:, None] * width + col[None, :]
            off = tl.load(offset_ptr + index, mask=mask, other=0.0)
            core = (col >= core_lo) & (col < core_hi)
            x, x2, inv, gauss, av = _profile(off, shift, a, h2, b, c, core)
            pixel = tl.load(pixel_ptr + index, mask=mask, other=0)
            w = tl.load(grad_ptr + pixel, mask=mask, other=0.0)
            if HAS_VALID:
                w = w * tl.load(valid_ptr + index, mask=mask, other=0.0)
            if EMISSION:
                w = w * sign[:, None]
                av = av * sign[:, None]
            if LINEAR:
                # d ln(1 − s·aV)/d(aV) = s/(s·aV − 1); zero where the guard clipped it.
                w = tl.where(av > clip, 0.0, w / (av - 1.0))
            else:
                w = -w
            w_inv = w * inv
            sum_inv += tl.sum(w_inv, 1)
            w_lorentz = w_inv * inv * a[:, None]
            sum_lorentz += tl.sum(w_lorentz, 1)
            sum_lorentz_x += tl.sum(w_lorentz * x, 1)
            w_gauss = w * gauss
            sum_gauss += tl.sum(w_gauss, 1)
            w_gauss = w_gauss * b[:, None]
            sum_gauss_x2 += tl.sum(w_gauss * x2, 1)
            sum_gauss_x += tl.sum(w_gauss * x, 1)
        tl.store(grad_a_ptr + r, sum_inv, mask=row_ok)
        tl.store(grad_h2_ptr + r, -sum_lorentz, mask=row_ok)
        tl.store(grad_b_ptr + r, sum_gauss, mask=row_ok)
        tl.store(grad_c_ptr + r, sum_gauss_x2, mask=row_ok)
        # d(aV)/d(shift) = −d(aV)/d(dx) = 2 dx (A/(x²+h2)² − C·B·exp(C x²))
        tl.store(grad_shift_ptr + r, 2.0 * (sum_lorentz_x - c * sum_gauss_x), mask=row_ok)


#: Rows and columns per program of the forward kernel, rows per program backward.
BLOCK_ROWS = 16
BLOCK_COLUMNS = 64


def _bucket_arguments(layout, per_line):
    """What the kernels take for each non-empty bucket, in their argument order.

    Yields ``(bucket, lines, tensors, scalars)``: ``lines`` are the bucket's slices of the
    bucket-ordered ``per_line`` tensors, ``tensors`` = offset, pixel, valid (the offsets
    stand in when there is no mask; never read then) and ``scalars`` = rows, width, first
    and last-plus-one core column.
    """
    for bucket in layout.buckets:
        rows = bucket.rows.stop - bucket.rows.start
        if rows == 0:
            continue
        core = bucket.core
        core_lo = 0 if core.start is None else int(core.start)
        core_hi = bucket.width if core.stop is None else int(core.stop)
        valid = bucket.valid if bucket.valid is not None else bucket.offset
        lines = [t[bucket.rows] for t in per_line]
        yield (
            bucket,
            lines,
            (bucket.offset, bucket.pixel, valid),
            (rows, bucket.width, core_lo, core_hi),
        )


class _TritonPseudoVoigtLogTransmission(torch.autograd.Function):
    """Same contract as :class:`~blase_specutils.core.sparse._PseudoVoigtLogTransmission`."""

    @staticmethod
    def forward(ctx, A, h2, B, C, shift, sign, layout, linear, clip, emission):
        order = layout.order
        # bucket order, in the kernels' argument order
        per_line = [t[order].contiguous() for t in (shift, A, h2, B, C, sign)]
        out = torch.zeros(layout.n_pixels, dtype=A.dtype, device=A.device)
        for bucket, lines, tensors, scalars in _bucket_arguments(layout, per_line):
            rows, width = scalars[:2]
            _forward_kernel[(triton.cdiv(rows, BLOCK_ROWS), triton.cdiv(width, BLOCK_COLUMNS))](
                *tensors,
                *lines,
                out,
                *scalars,
                float(clip),
                HAS_VALID=bucket.valid is not None,
                LINEAR=bool(linear),
                EMISSION=bool(emission),
                BLOCK_R=BLOCK_ROWS,
                BLOCK_W=BLOCK_COLUMNS,
            )
        ctx.layout, ctx.linear, ctx.clip, ctx.emission = layout, linear, clip, emission
        ctx.save_for_backward(*per_line)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        per_line = ctx.saved_tensors
        layout = ctx.layout
        grad_out = grad_out.contiguous()
        # A, h2, B, C, shift (the forward's input order), in bucket order
        grads = [torch.empty_like(per_line[0]) for _ in range(5)]
        for bucket, lines, tensors, scalars in _bucket_arguments(layout, per_line):
            _backward_kernel[(triton.cdiv(scalars[0], BLOCK_ROWS),)](
                *tensors,
                grad_out,
                *lines,
                *(g[bucket.rows] for g in grads),
                *scalars,
                float(ctx.clip),
                HAS_VALID=bucket.valid is not None,
                LINEAR=bool(ctx.linear),
                EMISSION=bool(ctx.emission),
                BLOCK_R=BLOCK_ROWS,
                BLOCK_W=BLOCK_COLUMNS,
            )
        line_grads = _unbucket(grads, [[g] for g in grads], layout.order)
        return (*line_grads, None, None, None, None, None)


def pseudo_voigt_log_transmission_triton(A, h2, B, C, shift, sign, layout, linear, clip, emission):
    """Triton twin of the fused pseudo-Voigt kernel (arguments in the same order).

    Raises
    ------
    RuntimeError
        If Triton cannot run on the tensors' device (see :func:`available`).
    """
    if not available(A.device):
        raise RuntimeError(
            f"the Triton kernels cannot run on {A.device}: they need triton and a CUDA device "
            "(or TRITON_INTERPRET=1 on the CPU)"
        )
    return _TritonPseudoVoigtLogTransmission.apply(
        A, h2, B, C, shift, sign, layout, linear, clip, emission
    )
