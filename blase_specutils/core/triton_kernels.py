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
        shift = tl.load(shift_ptr + r, mask=row_ok, other=0.0)
        a = tl.load(a_ptr + r, mask=row_ok, other=0.0)
        h2 = tl.load(h2_ptr + r, mask=row_ok, other=1.0)
        b = tl.load(b_ptr + r, mask=row_ok, other=0.0)
        c = tl.load(c_ptr + r, mask=row_ok, other=0.0)
        core = (col >= core_lo) & (col < core_hi)
        x, x2, inv, gauss, av = _profile(off, shift, a, h2, b, c, core)
        if EMISSION:
            av = av * tl.load(sign_ptr + r, mask=row_ok, other=1.0)[:, None]
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
        shift = tl.load(shift_ptr + r, mask=row_ok, other=0.0)
        a = tl.load(a_ptr + r, mask=row_ok, other=0.0)
        h2 = tl.load(h2_ptr + r, mask=row_ok, other=1.0)
        b = tl.load(b_ptr + r, mask=row_ok, other=0.0)
        c = tl.load(c_ptr + r, mask=row_ok, other=0.0)
        sign = tl.load(sign_ptr + r, mask=row_ok, other=1.0)
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


def _core_columns(bucket) -> tuple[int, int]:
    core = bucket.core
    lo = 0 if core.start is None else int(core.start)
    hi = bucket.width if core.stop is None else int(core.stop)
    return lo, hi


class _TritonPseudoVoigtLogTransmission(torch.autograd.Function):
    """Same contract as :class:`~blase_specutils.core.sparse._PseudoVoigtLogTransmission`."""

    @staticmethod
    def forward(ctx, A, h2, B, C, shift, sign, layout, linear, clip, emission):
        order = layout.order
        per_line = [t[order].contiguous() for t in (A, h2, B, C, shift, sign)]
        out = torch.zeros(layout.n_pixels, dtype=A.dtype, device=A.device)
        for bucket in layout.buckets:
            rows = bucket.rows.stop - bucket.rows.start
            if rows == 0:
                continue
            a, h, b, c, s, sg = (t[bucket.rows] for t in per_line)
            lo, hi = _core_columns(bucket)
            valid = bucket.valid
            grid = (triton.cdiv(rows, BLOCK_ROWS), triton.cdiv(bucket.width, BLOCK_COLUMNS))
            _forward_kernel[grid](
                bucket.offset,
                bucket.pixel,
                valid if valid is not None else bucket.offset,
                s,
                a,
                h,
                b,
                c,
                sg,
                out,
                rows,
                bucket.width,
                lo,
                hi,
                float(clip),
                HAS_VALID=valid is not None,
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
        grads = [torch.empty_like(per_line[0]) for _ in range(5)]
        for bucket in layout.buckets:
            rows = bucket.rows.stop - bucket.rows.start
            if rows == 0:
                continue
            a, h, b, c, s, sg = (t[bucket.rows] for t in per_line)
            lo, hi = _core_columns(bucket)
            valid = bucket.valid
            _backward_kernel[(triton.cdiv(rows, BLOCK_ROWS),)](
                bucket.offset,
                bucket.pixel,
                valid if valid is not None else bucket.offset,
                grad_out,
                s,
                a,
                h,
                b,
                c,
                sg,
                *(g[bucket.rows] for g in grads),
                rows,
                bucket.width,
                lo,
                hi,
                float(ctx.clip),
                HAS_VALID=valid is not None,
                LINEAR=bool(ctx.linear),
                EMISSION=bool(ctx.emission),
                BLOCK_R=BLOCK_ROWS,
                BLOCK_W=BLOCK_COLUMNS,
            )
        order = layout.order
        line_grads = []
        for g in grads:
            unordered = torch.empty_like(g)
            unordered[order] = g
            line_grads.append(unordered)
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
