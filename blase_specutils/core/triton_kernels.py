"""Fused Triton kernels for the pseudo-Voigt line forest (optional, for CUDA GPUs).

The PyTorch kernel of :mod:`blase_specutils.core.sparse` runs a few dozen small
operations per bucket, forward and backward; on a GPU each is a kernel launch, so an
epoch is bound by launches, not arithmetic. Here each bucket costs one kernel forward
(profile, log transmission, scatter-add into the pixels) and one backward (the five
per-line gradient sums, accumulated in registers over the window), with the same
numbers as :class:`~blase_specutils.core.fused.PseudoVoigtLogTransmission` up to
the order of floating-point additions.

Triton is optional: :func:`available` says whether these kernels can run on a device.
On a CPU they run only under Triton's interpreter (``TRITON_INTERPRET=1``), which is how
the test suite checks them against the PyTorch kernel without a GPU.
"""

from __future__ import annotations

import torch

from .fused import PseudoVoigtLogTransmission, pseudo_voigt_coefficients, unbucket
from .triton_common import (  # BLOCK_COLUMNS, BLOCK_ELEMENTS: importable from here as before
    BACKWARD_BLOCK_ELEMENTS,
    BLOCK_COLUMNS,  # noqa: F401
    BLOCK_ELEMENTS,  # noqa: F401
    BLOCK_LINES,
    available,
    block_shape,
    bucket_arguments,
    require_triton,
    tl,
    triton,
)

if triton is not None:
    from .triton_common import log1p_kernel, window_positions

#: the window helpers by the names they had when they lived here
_blocks = block_shape

__all__ = [
    "available",
    "forest_log_transmission_triton",
    "pseudo_voigt_log_transmission_triton",
]





if triton is not None:


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

    @triton.jit(do_not_specialize=["rows", "core_lo", "core_hi"])
    def _forward_kernel(
        wavelength_ptr,
        center_ptr,
        start_ptr,
        shift_ptr,
        a_ptr,
        h2_ptr,
        b_ptr,
        c_ptr,
        sign_ptr,
        out_ptr,
        n_pixels,
        rows,
        width,
        core_lo,
        core_hi,
        CLIP: tl.constexpr,
        LINEAR: tl.constexpr,
        EMISSION: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        col = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        row_ok = r < rows
        shift, a, h2, b, c, sign = _row_parameters(
            r, row_ok, shift_ptr, a_ptr, h2_ptr, b_ptr, c_ptr, sign_ptr
        )
        inside, pixel, off = window_positions(
            r, row_ok, col, width, start_ptr, center_ptr, wavelength_ptr, n_pixels, shift
        )
        core = (col >= core_lo) & (col < core_hi)
        x, x2, inv, gauss, av = _profile(off, shift, a, h2, b, c, core)
        if EMISSION:
            av = av * sign[:, None]
        if LINEAR:
            # the guard in the working dtype: a bare float constexpr becomes float32 in
            # tl.minimum on some Triton versions (1 − 1e-6 → 0.99999899, ln off by 0.013)
            value = log1p_kernel(-tl.minimum(av, tl.full([1, 1], CLIP, av.dtype)))
        else:
            value = -av
        # relaxed: the additions commute (their order was never fixed), no fences needed
        tl.atomic_add(out_ptr + pixel, value, mask=inside, sem="relaxed")

    @triton.jit(do_not_specialize=["rows", "core_lo", "core_hi"])
    def _backward_kernel(
        wavelength_ptr,
        center_ptr,
        start_ptr,
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
        n_pixels,
        rows,
        width,
        core_lo,
        core_hi,
        CLIP: tl.constexpr,
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
            inside, pixel, off = window_positions(
                r, row_ok, col, width, start_ptr, center_ptr, wavelength_ptr, n_pixels, shift
            )
            core = (col >= core_lo) & (col < core_hi)
            x, x2, inv, gauss, av = _profile(off, shift, a, h2, b, c, core)
            w = tl.load(grad_ptr + pixel, mask=inside, other=0.0)
            if EMISSION:
                w = w * sign[:, None]
                av = av * sign[:, None]
            if LINEAR:
                # d ln(1 − s·aV)/d(aV) = s/(s·aV − 1); zero where the guard clipped it.
                w = tl.where(av > tl.full([1, 1], CLIP, av.dtype), 0.0, w / (av - 1.0))
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

    @triton.jit
    def _tch(ln_sigma, ln_gamma):
        # Thompson–Cox–Hastings total FWHM f and Lorentzian fraction η (as in
        # profiles.tch_fwhm_and_eta), with the quintic P(fG, fL) = f⁵ kept for the backward.
        fg = 2.3548200450309493 * tl.exp(ln_sigma)
        fl = 2.0 * tl.exp(ln_gamma)
        fg2 = fg * fg
        fg4 = fg2 * fg2
        inner = 4.47163 * fg2 + fl * (0.07842 * fg + fl)
        quintic = fg4 * fg + fl * (2.69269 * fg4 + fl * (2.42843 * fg2 * fg + fl * inner))
        fwhm = tl.exp(0.2 * tl.log(quintic))
        ratio = fl / fwhm
        eta = ratio * (1.36603 + ratio * (-0.47719 + ratio * 0.11116))
        return fg, fl, quintic, fwhm, ratio, eta

    @triton.jit
    def _line_coefficients(r, ok, order_ptr, ln_a_ptr, ln_sigma_ptr, ln_gamma_ptr):
        # Rows r (bucket order) → their lines, the TCH width terms and the coefficients
        # A, B, C of aV = A/(x² + h2) + B exp(C x²) (h2 = half²), shared by both kernels.
        line = tl.load(order_ptr + r, mask=ok, other=0)
        fg, fl, quintic, fwhm, ratio, eta = _tch(
            tl.load(ln_sigma_ptr + line, mask=ok, other=0.0),
            tl.load(ln_gamma_ptr + line, mask=ok, other=0.0),
        )
        amplitude = tl.exp(tl.load(ln_a_ptr + line, mask=ok, other=0.0))
        half = 0.5 * fwhm
        s = fwhm / 2.3548200450309493
        coef_a = amplitude * eta * half / 3.141592653589793
        coef_b = amplitude * (1.0 - eta) / (s * 2.5066282746310002)
        coef_c = -0.5 / (s * s)
        return line, fg, fl, quintic, fwhm, ratio, eta, amplitude, half, s, coef_a, coef_b, coef_c

    @triton.jit(do_not_specialize=["n_rows", "search_steps"])
    def _coefficients_kernel(
        order_ptr,
        half_width_ptr,
        center_ptr,
        wavelength_ptr,
        line_shift_ptr,
        ln_a_ptr,
        ln_sigma_ptr,
        ln_gamma_ptr,
        line_sign_ptr,
        start_ptr,
        shift_ptr,
        a_ptr,
        h2_ptr,
        b_ptr,
        c_ptr,
        sign_ptr,
        n_rows,
        n_pixels,
        search_steps,
        BLOCK: tl.constexpr,
    ):
        # Per line, in bucket order: the pseudo-Voigt coefficients aV = A/(x² + h2) +
        # B exp(C x²) from ln a, ln σ, ln γ, and the first pixel of the window centred on
        # the line's current position (a binary search, as torch.searchsorted).
        r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = r < n_rows
        line, fg, fl, quintic, fwhm, ratio, eta, amplitude, half, s, coef_a, coef_b, coef_c = (
            _line_coefficients(r, ok, order_ptr, ln_a_ptr, ln_sigma_ptr, ln_gamma_ptr)
        )
        shift = tl.load(line_shift_ptr + line, mask=ok, other=0.0)
        tl.store(a_ptr + r, coef_a, mask=ok)
        tl.store(h2_ptr + r, half * half, mask=ok)
        tl.store(b_ptr + r, coef_b, mask=ok)
        tl.store(c_ptr + r, coef_c, mask=ok)
        tl.store(shift_ptr + r, shift, mask=ok)
        tl.store(sign_ptr + r, tl.load(line_sign_ptr + line, mask=ok, other=1.0), mask=ok)
        center = tl.load(center_ptr + r, mask=ok, other=0.0) + shift.to(tl.float64)
        lo = tl.zeros([BLOCK], dtype=tl.int64)
        hi = lo + n_pixels
        for _ in range(search_steps):
            active = lo < hi
            mid = (lo + hi) // 2
            value = tl.load(wavelength_ptr + mid, mask=ok & active, other=0.0)
            right = active & (value < center)
            lo = tl.where(right, mid + 1, lo)
            hi = tl.where(active & (value >= center), mid, hi)
        tl.store(start_ptr + r, lo - tl.load(half_width_ptr + r, mask=ok, other=0), mask=ok)

    @triton.jit(do_not_specialize=["n_rows"])
    def _coefficients_backward_kernel(
        order_ptr,
        ln_a_ptr,
        ln_sigma_ptr,
        ln_gamma_ptr,
        grad_a_ptr,
        grad_h2_ptr,
        grad_b_ptr,
        grad_c_ptr,
        grad_shift_ptr,
        out_ln_a_ptr,
        out_ln_sigma_ptr,
        out_ln_gamma_ptr,
        out_shift_ptr,
        n_rows,
        BLOCK: tl.constexpr,
    ):
        # Chain rule from the gradients of (A, h2, B, C) per row to ln a, ln σ, ln γ per
        # line (written in line order). With K = 2√(2 ln 2): A = a η f/(2π), h2 = f²/4,
        # B = a (1 − η) K/(f √(2π)), C = −K²/(2 f²), f = P^(1/5), η = η(fL/f).
        r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = r < n_rows
        line, fg, fl, quintic, fwhm, ratio, eta, amplitude, half, s, coef_a, coef_b, coef_c = (
            _line_coefficients(r, ok, order_ptr, ln_a_ptr, ln_sigma_ptr, ln_gamma_ptr)
        )
        g_a = tl.load(grad_a_ptr + r, mask=ok, other=0.0)
        g_h2 = tl.load(grad_h2_ptr + r, mask=ok, other=0.0)
        g_b = tl.load(grad_b_ptr + r, mask=ok, other=0.0)
        g_c = tl.load(grad_c_ptr + r, mask=ok, other=0.0)
        g_fwhm = (g_a * coef_a - g_b * coef_b - 2.0 * g_c * coef_c) / fwhm + g_h2 * half
        g_eta = g_a * amplitude * half / 3.141592653589793 - g_b * amplitude / (
            s * 2.5066282746310002
        )
        # fG ∂P/∂fG and fL ∂P/∂fL: the derivatives of P with respect to ln σ and ln γ.
        fg2 = fg * fg
        fg3 = fg2 * fg
        fg4 = fg2 * fg2
        fl2 = fl * fl
        fl3 = fl2 * fl
        fl4 = fl2 * fl2
        dp_sigma = (
            5.0 * fg4 * fg
            + 4.0 * 2.69269 * fg4 * fl
            + 3.0 * 2.42843 * fg3 * fl2
            + 2.0 * 4.47163 * fg2 * fl3
            + 0.07842 * fg * fl4
        )
        dp_gamma = (
            2.69269 * fg4 * fl
            + 2.0 * 2.42843 * fg3 * fl2
            + 3.0 * 4.47163 * fg2 * fl3
            + 4.0 * 0.07842 * fg * fl4
            + 5.0 * fl4 * fl
        )
        df_sigma = 0.2 * fwhm * dp_sigma / quintic
        df_gamma = 0.2 * fwhm * dp_gamma / quintic
        deta = 1.36603 + ratio * (2.0 * -0.47719 + ratio * 3.0 * 0.11116)
        dratio_sigma = -ratio * df_sigma / fwhm
        dratio_gamma = ratio - ratio * df_gamma / fwhm
        tl.store(out_ln_a_ptr + line, g_a * coef_a + g_b * coef_b, mask=ok)
        tl.store(out_ln_sigma_ptr + line, g_fwhm * df_sigma + g_eta * deta * dratio_sigma, mask=ok)
        tl.store(out_ln_gamma_ptr + line, g_fwhm * df_gamma + g_eta * deta * dratio_gamma, mask=ok)
        tl.store(out_shift_ptr + line, tl.load(grad_shift_ptr + r, mask=ok, other=0.0), mask=ok)






def _launch_forward(layout, start, per_line, linear, clip, emission, dtype):
    """Per-bucket forward kernels; ``per_line`` = shift, A, h2, B, C, sign in bucket order."""
    out = torch.zeros(layout.n_pixels, dtype=dtype, device=layout.device)
    for _, rows, scalars in bucket_arguments(layout):
        n_rows, width = scalars[1:3]
        block_rows, block_columns = block_shape(width)
        _forward_kernel[(triton.cdiv(n_rows, block_rows), triton.cdiv(width, block_columns))](
            layout.wavelength,
            layout.row_center[rows],
            start[rows],
            *(t[rows] for t in per_line),
            out,
            *scalars,
            CLIP=float(clip),
            LINEAR=bool(linear),
            EMISSION=bool(emission),
            BLOCK_R=block_rows,
            BLOCK_W=block_columns,
        )
    return out


def _launch_backward(layout, start, per_line, grad_out, linear, clip, emission):
    """Per-bucket backward kernels: gradients of A, h2, B, C, shift in bucket order."""
    grad_out = grad_out.contiguous()
    grads = [torch.empty_like(per_line[0]) for _ in range(5)]
    for _, rows, scalars in bucket_arguments(layout):
        block_rows, block_columns = block_shape(scalars[2], BACKWARD_BLOCK_ELEMENTS)
        _backward_kernel[(triton.cdiv(scalars[1], block_rows),)](
            layout.wavelength,
            layout.row_center[rows],
            start[rows],
            grad_out,
            *(t[rows] for t in per_line),
            *(g[rows] for g in grads),
            *scalars,
            CLIP=float(clip),
            LINEAR=bool(linear),
            EMISSION=bool(emission),
            BLOCK_R=block_rows,
            BLOCK_W=block_columns,
        )
    return grads


class _TritonPseudoVoigtLogTransmission(torch.autograd.Function):
    """Same contract as :class:`~blase_specutils.core.sparse._PseudoVoigtLogTransmission`.

    The windows start where the layout's last ``refresh`` put them.
    """

    @staticmethod
    def forward(ctx, A, h2, B, C, shift, sign, layout, linear, clip, emission):
        order = layout.order
        # bucket order, in the kernels' argument order
        per_line = [t[order].contiguous() for t in (shift, A, h2, B, C, sign)]
        start = torch.cat([b.start for b in layout.buckets])
        out = _launch_forward(layout, start, per_line, linear, clip, emission, A.dtype)
        ctx.layout, ctx.linear, ctx.clip, ctx.emission = layout, linear, clip, emission
        ctx.save_for_backward(start, *per_line)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        start, *per_line = ctx.saved_tensors
        grads = _launch_backward(
            ctx.layout, start, per_line, grad_out, ctx.linear, ctx.clip, ctx.emission
        )
        line_grads = unbucket(grads, [[g] for g in grads], ctx.layout.order)
        return (*line_grads, None, None, None, None, None)


class _TritonForestLogTransmission(torch.autograd.Function):
    """ln transmission of a pseudo-Voigt forest straight from its parameters.

    One kernel turns ln a, ln σ, ln γ and the shifts into the per-line coefficients and
    window starts (no layout refresh, no per-line PyTorch arithmetic), one kernel per
    bucket evaluates and scatters; backward, one kernel per bucket sums the gradients
    and one kernel chains them to the parameters. An epoch is then a few dozen kernel
    launches whatever the number of lines.
    """

    @staticmethod
    def forward(ctx, ln_amplitude, ln_sigma, ln_gamma, shift, sign, layout, linear, clip, emission):
        n = layout.n_lines
        dtype = ln_amplitude.dtype
        inputs = [t.contiguous() for t in (ln_amplitude, ln_sigma, ln_gamma, shift, sign)]
        start = torch.empty(n, dtype=torch.long, device=layout.device)
        per_line = [torch.empty(n, dtype=dtype, device=layout.device) for _ in range(6)]
        _coefficients_kernel[(triton.cdiv(n, BLOCK_LINES),)](
            layout.order,
            layout.row_half_width,
            layout.row_center,
            layout.wavelength,
            inputs[3],
            inputs[0],
            inputs[1],
            inputs[2],
            inputs[4],
            start,
            *per_line,
            n,
            layout.n_pixels,
            layout.n_pixels.bit_length() + 1,
            BLOCK=BLOCK_LINES,
        )
        out = _launch_forward(layout, start, per_line, linear, clip, emission, dtype)
        ctx.layout, ctx.linear, ctx.clip, ctx.emission = layout, linear, clip, emission
        ctx.save_for_backward(start, *per_line, *inputs[:3])
        return out

    @staticmethod
    def backward(ctx, grad_out):
        start, *rest = ctx.saved_tensors
        per_line, parameters = rest[:6], rest[6:]
        layout = ctx.layout
        grads = _launch_backward(
            layout, start, per_line, grad_out, ctx.linear, ctx.clip, ctx.emission
        )
        n = layout.n_lines
        out = [torch.empty_like(parameters[0]) for _ in range(4)]
        _coefficients_backward_kernel[(triton.cdiv(n, BLOCK_LINES),)](
            layout.order, *parameters, *grads, *out, n, BLOCK=BLOCK_LINES
        )
        needed = ctx.needs_input_grad
        grads_in = (g if needed[i] else None for i, g in enumerate(out))
        return (*grads_in, None, None, None, None, None)




def pseudo_voigt_log_transmission_triton(A, h2, B, C, shift, sign, layout, linear, clip, emission):
    """Triton twin of the fused pseudo-Voigt kernel (arguments in the same order).

    Raises
    ------
    RuntimeError
        If Triton cannot run on the tensors' device (see :func:`available`).
    """
    require_triton(A.device)
    return _TritonPseudoVoigtLogTransmission.apply(
        A, h2, B, C, shift, sign, layout, linear, clip, emission
    )


def forest_log_transmission_triton(
    layout, ln_amplitude, ln_sigma, ln_gamma, shift, sign, *, linear, clip, emission
):
    """ln transmission per pixel of pseudo-Voigt lines given by their log parameters.

    The same numbers as ``pseudo_voigt_log_transmission`` after ``tch_fwhm_and_eta``
    and ``layout.refresh(shift)``, up to rounding, with every per-line step inside
    Triton kernels: the windows are placed in a kernel from the current centres and
    the layout itself is left as it was.

    Parameters
    ----------
    layout : SparseLayout
        Bucket structure of the windows (their positions follow ``shift``).
    ln_amplitude, ln_sigma, ln_gamma : torch.Tensor
        ln a, ln σ, ln γ per line (a, σ, γ in Å), working dtype.
    shift : torch.Tensor
        Per-line centre shift from ``layout.center_ref``, Å.
    sign : torch.Tensor
        +1 for absorption, −1 for emission, per line.
    linear, clip, emission
        As for ``pseudo_voigt_log_transmission``.

    Raises
    ------
    RuntimeError
        If Triton cannot run on the tensors' device (see :func:`available`).
    """
    require_triton(ln_amplitude.device)
    return _TritonForestLogTransmission.apply(
        ln_amplitude, ln_sigma, ln_gamma, shift, sign, layout, linear, clip, emission
    )


def self_check(device: torch.device | str, dtype: torch.dtype = torch.float64) -> str | None:
    """Run the Triton and PyTorch kernels on one small forest on ``device`` and compare.

    The forest has windows hanging off both grid ends, an emission line, a saturated line
    and a radial velocity that moves every window; flux and the gradients of every
    parameter and of the velocity are compared, for the pseudo-Voigt kernels and then for
    the exact-Voigt ones (:mod:`~blase_specutils.core.triton_voigt`).

    Parameters
    ----------
    device : torch.device or str
        Where to run (a CUDA device; the CPU under Triton's interpreter).
    dtype : torch.dtype
        Working dtype (tolerance 1e-12 relative in float64, 1e-4 in float32).

    Returns
    -------
    str or None
        ``None`` when they agree, else what differed.
    """
    # the library's first call on a device can come under no_grad or inference mode
    # (evaluating a model); the check needs gradients whatever the caller's mode
    with torch.inference_mode(False), torch.enable_grad():
        return _compare_kernels(torch.device(device), dtype)


def _check_forest(device: torch.device, dtype: torch.dtype):
    """The self-check's lines as plain tensors (no LineForest): parameters, sign, layout.

    The same numbers a ``LineForest(..., emission=line 9, trainable=all)`` holds and the
    layout its ``make_layout(grid)`` gives (tolerance 1e-4, 4 FWHM, 8 pixels, ratio 2).
    """
    import numpy as np

    from .layout import SparseLayout, window_half_widths

    rng = np.random.default_rng(2024)
    n = 24
    grid = np.linspace(8600.0, 8606.0, 600)
    amplitude = rng.uniform(0.002, 0.05, n)
    amplitude[4] = 0.5  # saturated
    center = np.sort(rng.uniform(8599.8, 8606.2, n))  # windows off both grid ends
    sigma = rng.uniform(0.01, 0.05, n)
    gamma = rng.uniform(0.005, 0.03, n)
    center_ref = torch.as_tensor(center, dtype=torch.float64, device=device)
    sign = torch.ones(n, dtype=dtype, device=device)
    sign[9] = -1.0  # an emission line
    parameters = {
        "center_shift": torch.zeros(n, dtype=dtype, device=device),
        "ln_amplitude": torch.as_tensor(np.log(amplitude), dtype=dtype, device=device),
        "ln_sigma": torch.as_tensor(np.log(sigma), dtype=dtype, device=device),
        "ln_gamma": torch.as_tensor(np.log(gamma), dtype=dtype, device=device),
    }
    for tensor in parameters.values():
        tensor.requires_grad_(True)
    with torch.no_grad():  # the windows from the working-dtype widths, as LineForest sizes them
        widths = (parameters[k].double() for k in ("ln_amplitude", "ln_sigma", "ln_gamma"))
        a, s, g = (torch.exp(t).cpu().numpy() for t in widths)
        half, core = window_half_widths(
            a, s, g, tolerance=1e-4, n_fwhm=4.0, budget=0.0, max_half_width=50.0
        )
    wavelength = torch.as_tensor(grid, dtype=torch.float64, device=device)
    layout = SparseLayout(
        wavelength, center_ref, half, core, dtype=dtype, min_pixels=8, bucket_ratio=2
    )
    return parameters, sign, center_ref, layout


def _compare_kernels(device: torch.device, dtype: torch.dtype) -> str | None:
    from .profiles import tch_fwhm_and_eta

    parameters, sign, center_ref, layout = _check_forest(device, dtype)
    p = parameters
    velocity = torch.tensor(4.0, dtype=dtype, device=device, requires_grad=True)
    inputs = [*parameters.values(), velocity]

    def shift_of(v):  # classical Doppler shift of every line, as LineForest.shift
        return p["center_shift"] + (center_ref.to(dtype) + p["center_shift"]) * (v / 299792.458)

    weights = torch.linspace(-1.0, 2.0, layout.n_pixels, dtype=dtype, device=device)
    fused = forest_log_transmission_triton(
        layout,
        p["ln_amplitude"],
        p["ln_sigma"],
        p["ln_gamma"],
        shift_of(velocity),
        sign,
        linear=True,
        clip=1.0 - 1e-6,
        emission=True,
    )
    got = [fused.detach(), *torch.autograd.grad((fused * weights).sum(), inputs)]
    # the PyTorch kernel, called directly (never through the kernel choice)
    shift = shift_of(velocity)
    layout.refresh(shift)
    fwhm, eta = tch_fwhm_and_eta(torch.exp(p["ln_sigma"]), torch.exp(p["ln_gamma"]))
    coefficients = pseudo_voigt_coefficients(torch.exp(p["ln_amplitude"]), fwhm, eta)
    reference = PseudoVoigtLogTransmission.apply(
        *coefficients, shift, sign, layout, True, 1.0 - 1e-6, True
    )
    expected = [reference.detach(), *torch.autograd.grad((reference * weights).sum(), inputs)]
    names = ("log transmission", *parameters, "velocity")
    problem = _first_difference(names, got, expected, dtype)
    if problem is not None:
        return problem
    # the exact-Voigt kernels (triton_voigt), on the same lines and windows
    from .fused import VoigtLogTransmission
    from .triton_voigt import voigt_log_transmission_triton

    results = []
    for kernel in (voigt_log_transmission_triton, VoigtLogTransmission.apply):
        shift = shift_of(velocity)
        layout.refresh(shift)
        width_parameters = (p["ln_amplitude"], p["ln_sigma"], p["ln_gamma"])
        a, sigma, gamma = (torch.exp(t) for t in width_parameters)
        out = kernel(a, sigma, gamma, shift, sign, layout, True, 1.0 - 1e-6, True)
        results.append([out.detach(), *torch.autograd.grad((out * weights).sum(), inputs)])
    return _first_difference([f"Voigt {name}" for name in names], *results, dtype)


def _first_difference(names, got, expected, dtype) -> str | None:
    """The first of ``got`` that differs from ``expected`` beyond rounding, described."""
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    for name, mine, theirs in zip(names, got, expected):
        scale = float(theirs.abs().max())
        error = float((mine - theirs).abs().max())
        if not error <= tolerance * max(scale, 1e-30):
            return f"{name}: largest difference {error:.3g} (scale {scale:.3g})"
    return None
