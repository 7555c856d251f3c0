"""Fused Triton kernels for exact-Voigt line forests (optional, for CUDA GPUs).

The Triton twin of :class:`~blase_specutils.core.sparse._VoigtLogTransmission`: one
kernel per bucket forward (the Faddeeva function, the log transmission, the
scatter-add into the pixels) and one backward (the four per-line gradient sums,
accumulated in registers over the window, the profile recomputed instead of stored).

Every pair evaluates the three regions of
:func:`~blase_specutils.core.faddeeva.voigt_with_gradients` and keeps the right one:
the asymptotic series beyond ``|z| = FAR_RADIUS``, the continued fraction down to
``|z| = CORE_RADIUS`` (both in the working dtype) and Weideman's N = 32 approximation by
Goertzel's real recurrence inside (in float64 also for float32 inputs), with the same
formulas, so the numbers agree with the PyTorch kernel to rounding. A formula used
outside its region may give inf or NaN; ``tl.where`` never lets those through.
"""

from __future__ import annotations

import numpy as np
import torch

from .fused import unbucket
from .triton_common import block_shape, bucket_arguments, require_triton, triton

__all__ = ["voigt_log_transmission_triton"]

#: Window elements per program forward and backward (the backward keeps four running sums
#: and the three regions' temporaries per element, in float64 for the core).
VOIGT_BLOCK_ELEMENTS = 256
VOIGT_BACKWARD_BLOCK_ELEMENTS = 128

if triton is not None:
    import triton.language as tl

    from .triton_common import log1p_kernel, window_positions

    @triton.jit
    def _far_wing(x, sigma, gamma):
        # Asymptotic series as a real polynomial in t = 1/|z|² and cos 2θ (see
        # faddeeva._far_wing_with_gradients; c_k = 1, 1/2, 3/4, 15/8, 105/16).
        x2 = x * x
        g2 = gamma * gamma
        inv = 1.0 / (x2 + g2)
        t = 2.0 * sigma * sigma * inv
        cos2 = (x2 - g2) * inv
        twice = cos2 + cos2
        r1 = twice + 1.0
        r2 = twice * r1 - 1.0
        r3 = twice * r2 - r1
        r4 = twice * r3 - r2
        poly = ((((6.5625 * r4) * t + 1.875 * r3) * t + 0.75 * r2) * t + 0.5 * r1) * t + 1.0
        lorentz = gamma * inv * 0.3183098861837907  # γ/(π r²)
        value = lorentz * poly
        slope = ((4.0 * 6.5625 * r4) * t + 3.0 * 1.875 * r3) * t + 2.0 * 0.75 * r2
        slope = slope * t + 0.5 * r1
        lorentz_r2 = lorentz * inv
        d_sigma = 4.0 * lorentz_r2 * sigma * slope
        cheb2 = cos2 * twice - 1.0
        cheb3 = twice * cheb2 - cos2
        cheb4 = twice * cheb3 - cheb2
        sum_t = (cheb3 * (5.0 * 0.75) + t * cheb4 * (7.0 * 1.875)) * t
        sum_t = (cheb2 * (3.0 * 0.5) + sum_t) * t + cos2
        d_gamma = sum_t * inv * 0.3183098861837907
        cheb_u2 = twice * twice - 1.0
        cheb_u3 = twice * cheb_u2 - twice
        sum_u = (cheb_u2 * (5.0 * 0.75) + t * cheb_u3 * (7.0 * 1.875)) * t
        sum_u = (twice * (3.0 * 0.5) + sum_u) * t + 1.0
        d_dx = -2.0 * sum_u * lorentz_r2 * x
        return value, d_dx, d_sigma, d_gamma

    @triton.jit
    def _cmul(ar, ai, br, bi):
        return ar * br - ai * bi, ar * bi + ai * br

    @triton.jit
    def _ring(x, sigma, gamma):
        # Continued fraction w = (i/√π) F(v)/z, F = N/D, v = 2σ² q², q = 1/(dx + iγ)
        # (see faddeeva._ring_with_gradients); N, D quartics, K = N'D − ND' a sextic.
        inv = 1.0 / (x * x + gamma * gamma)
        qr = x * inv
        qi = -gamma * inv
        q2r, q2i = _cmul(qr, qi, qr, qi)
        two_s2 = 2.0 * sigma * sigma
        vr = q2r * two_s2
        vi = q2i * two_s2
        # D(v) = 1 − 18 v + 94.5 v² − 157.5 v³ + 59.0625 v⁴ (Horner, real coefficients)
        dr = 59.0625 * vr - 157.5
        di = 59.0625 * vi
        dr, di = _cmul(dr, di, vr, vi)
        dr = dr + 94.5
        dr, di = _cmul(dr, di, vr, vi)
        dr = dr - 18.0
        dr, di = _cmul(dr, di, vr, vi)
        dr = dr + 1.0
        # N(v) = 1 − 17.5 v + 86.25 v² − 121.875 v³ + 24 v⁴
        nr = 24.0 * vr - 121.875
        ni = 24.0 * vi
        nr, ni = _cmul(nr, ni, vr, vi)
        nr = nr + 86.25
        nr, ni = _cmul(nr, ni, vr, vi)
        nr = nr - 17.5
        nr, ni = _cmul(nr, ni, vr, vi)
        nr = nr + 1.0
        inv_norm = 1.0 / (dr * dr + di * di)
        idr = dr * inv_norm  # 1/D
        idi = -di * inv_norm
        fr, fi = _cmul(nr, ni, idr, idi)  # F = N/D
        pr, pi = _cmul(qr, qi, fr, fi)
        value = -pi * 0.3183098861837907
        # K(v) = 0.5 − 16.5 v + 208.125 v² − 1265.25 v³ + 3871.96875 v⁴ − 5652.28125 v⁵
        #        + 3418.2421875 v⁶; F' = K/D²
        kr = 3418.2421875 * vr - 5652.28125
        ki = 3418.2421875 * vi
        kr, ki = _cmul(kr, ki, vr, vi)
        kr = kr + 3871.96875
        kr, ki = _cmul(kr, ki, vr, vi)
        kr = kr - 1265.25
        kr, ki = _cmul(kr, ki, vr, vi)
        kr = kr + 208.125
        kr, ki = _cmul(kr, ki, vr, vi)
        kr = kr - 16.5
        kr, ki = _cmul(kr, ki, vr, vi)
        kr = kr + 0.5
        id2r, id2i = _cmul(idr, idi, idr, idi)
        sr, si = _cmul(kr, ki, id2r, id2i)  # F'
        gr, gi = _cmul(vr, vi, sr, si)
        gr = fr + 2.0 * gr
        gi = fi + 2.0 * gi
        gr, gi = _cmul(gr, gi, q2r, q2i)  # q² (F + 2 v F')
        d_dx = gi * 0.3183098861837907
        d_gamma = gr * 0.3183098861837907
        tr, ti = _cmul(sr, si, q2r, q2i)
        tr, ti = _cmul(tr, ti, qr, qi)
        d_sigma = -4.0 * 0.3183098861837907 * ti * sigma
        return value, d_dx, d_sigma, d_gamma

    @triton.jit
    def _core(x_in, sigma_in, gamma_in):
        # Weideman's N = 32 approximation in float64 by Goertzel's real recurrence (see
        # faddeeva._weideman_real and faddeeva._core_with_gradients).
        sigma = sigma_in.to(tl.float64)
        inv_s = 1.0 / (sigma * 1.4142135623730951)
        x = x_in.to(tl.float64) * inv_s
        y = gamma_in.to(tl.float64) * inv_s
        shifted = y + 4.756828460010884  # L − iz = (L + y) − ix
        inv_norm = 1.0 / (shifted * shifted + x * x)
        dr = shifted * inv_norm  # 1/(L − iz) = dr + i di
        di = x * inv_norm
        upper = 4.756828460010884 - y  # L + iz = (L − y) + ix
        zr = upper * dr - x * di
        zi = upper * di + x * dr
        twice_re = zr + zr
        minus_norm = -(zr * zr + zi * zi)
        b1 = tl.full(x.shape, -1.3031797863050087e-12, tl.float64)
        b2 = tl.zeros(x.shape, tl.float64)
        b2 = b2 * minus_norm + twice_re * b1 + 3.7408812931653625e-12
        b1 = b1 * minus_norm + twice_re * b2 + 8.03036789996389e-12
        b2 = b2 * minus_norm + twice_re * b1 + -2.154363207783877e-11
        b1 = b1 * minus_norm + twice_re * b2 + -5.5442359481664624e-11
        b2 = b2 * minus_norm + twice_re * b1 + 1.1658251093523774e-10
        b1 = b1 * minus_norm + twice_re * b2 + 4.153743091833453e-10
        b2 = b2 * minus_norm + twice_re * b1 + -5.231020481196329e-10
        b1 = b1 * minus_norm + twice_re * b2 + -3.208015091723369e-09
        b2 = b2 * minus_norm + twice_re * b1 + 8.124889456846652e-10
        b1 = b1 * minus_norm + twice_re * b2 + 2.3797556779897417e-08
        b2 = b2 * minus_norm + twice_re * b1 + 2.2930439065099966e-08
        b1 = b1 * minus_norm + twice_re * b2 + -1.4813078915120977e-07
        b2 = b2 * minus_norm + twice_re * b1 + -4.1840763702169776e-07
        b1 = b1 * minus_norm + twice_re * b2 + 4.2558331375750085e-07
        b2 = b2 * minus_norm + twice_re * b1 + 4.40153173157855e-06
        b1 = b1 * minus_norm + twice_re * b2 + 6.821031944001985e-06
        b2 = b2 * minus_norm + twice_re * b1 + -2.140961920171075e-05
        b1 = b1 * minus_norm + twice_re * b2 + -0.00013075449254615346
        b2 = b2 * minus_norm + twice_re * b1 + -0.0002453298027002143
        b1 = b1 * minus_norm + twice_re * b2 + 0.0003925913607007031
        b2 = b2 * minus_norm + twice_re * b1 + 0.004519541105349217
        b1 = b1 * minus_norm + twice_re * b2 + 0.019006155784845408
        b2 = b2 * minus_norm + twice_re * b1 + 0.05730440352983722
        b1 = b1 * minus_norm + twice_re * b2 + 0.14060716226893769
        b2 = b2 * minus_norm + twice_re * b1 + 0.2954445107150873
        b1 = b1 * minus_norm + twice_re * b2 + 0.5460139720639341
        b2 = b2 * minus_norm + twice_re * b1 + 0.9019254893647999
        b1 = b1 * minus_norm + twice_re * b2 + 1.345544169234545
        b2 = b2 * minus_norm + twice_re * b1 + 1.8256696296324815
        b1 = b1 * minus_norm + twice_re * b2 + 2.2635372999002676
        pr = b2 * minus_norm + 2.5722534081245696 + zr * b1
        pi = zi * b1
        tr = 2.0 * (pr * dr - pi * di) + 0.5641895835477563
        ti = 2.0 * (pr * di + pi * dr)
        wr = tr * dr - ti * di
        wi = tr * di + ti * dr
        norm = inv_s * 0.5641895835477563  # 1/(s√π)
        value = wr * norm
        dwr = -2.0 * (x * wr - y * wi)  # w' = −2 z w + 2i/√π
        dwi = -2.0 * (x * wi + y * wr) + 2.0 * 0.5641895835477563
        norm_s = norm * inv_s
        d_dx = dwr * norm_s
        d_gamma = -dwi * norm_s
        d_sigma = (wr + x * dwr - y * dwi) * norm_s * -1.4142135623730951
        return value, d_dx, d_sigma, d_gamma

    @triton.jit
    def _voigt(x, sigma, gamma):
        # V and ∂V/∂dx, ∂V/∂σ, ∂V/∂γ in the working dtype, each region where it holds.
        # 2|z|² against 2·CORE_RADIUS² = 72 and 2·FAR_RADIUS² = 288 (faddeeva's radii, 6 and
        # 12; the tests against the PyTorch kernel at 1e-13 would catch other bounds)
        ratio = (x * x + gamma * gamma) / (sigma * sigma)
        core = ratio < 72.0
        far = ratio >= 288.0
        fv, fdx, fds, fdg = _far_wing(x, sigma, gamma)
        rv, rdx, rds, rdg = _ring(x, sigma, gamma)
        cv, cdx, cds, cdg = _core(x, sigma, gamma)
        value = tl.where(core, cv.to(x.dtype), tl.where(far, fv, rv))
        d_dx = tl.where(core, cdx.to(x.dtype), tl.where(far, fdx, rdx))
        d_sigma = tl.where(core, cds.to(x.dtype), tl.where(far, fds, rds))
        d_gamma = tl.where(core, cdg.to(x.dtype), tl.where(far, fdg, rdg))
        return value, d_dx, d_sigma, d_gamma

    @triton.jit
    def _voigt_rows(r, row_ok, shift_ptr, a_ptr, sigma_ptr, gamma_ptr, sign_ptr):
        # Rows past the end get harmless values (σ = γ = 1 keep every formula finite).
        shift = tl.load(shift_ptr + r, mask=row_ok, other=0.0)
        a = tl.load(a_ptr + r, mask=row_ok, other=0.0)
        sigma = tl.load(sigma_ptr + r, mask=row_ok, other=1.0)
        gamma = tl.load(gamma_ptr + r, mask=row_ok, other=1.0)
        sign = tl.load(sign_ptr + r, mask=row_ok, other=1.0)
        return shift, a, sigma, gamma, sign

    @triton.jit(do_not_specialize=["rows"])
    def _voigt_forward_kernel(
        wavelength_ptr,
        center_ptr,
        start_ptr,
        shift_ptr,
        a_ptr,
        sigma_ptr,
        gamma_ptr,
        sign_ptr,
        out_ptr,
        n_pixels,
        rows,
        width,
        CLIP: tl.constexpr,
        LINEAR: tl.constexpr,
        EMISSION: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        col = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        row_ok = r < rows
        shift, a, sigma, gamma, sign = _voigt_rows(
            r, row_ok, shift_ptr, a_ptr, sigma_ptr, gamma_ptr, sign_ptr
        )
        inside, pixel, off = window_positions(
            r, row_ok, col, width, start_ptr, center_ptr, wavelength_ptr, n_pixels, shift
        )
        x = off - shift[:, None]
        value, d_dx, d_sigma, d_gamma = _voigt(x, sigma[:, None], gamma[:, None])
        av = a[:, None] * value
        if EMISSION:
            av = av * sign[:, None]
        if LINEAR:
            # the guard in the working dtype (see triton_kernels._forward_kernel)
            out = log1p_kernel(-tl.minimum(av, tl.full([1, 1], CLIP, av.dtype)))
        else:
            out = -av
        tl.atomic_add(out_ptr + pixel, out, mask=inside, sem="relaxed")

    @triton.jit(do_not_specialize=["rows"])
    def _voigt_backward_kernel(
        wavelength_ptr,
        center_ptr,
        start_ptr,
        grad_ptr,
        shift_ptr,
        a_ptr,
        sigma_ptr,
        gamma_ptr,
        sign_ptr,
        grad_a_ptr,
        grad_sigma_ptr,
        grad_gamma_ptr,
        grad_shift_ptr,
        n_pixels,
        rows,
        width,
        CLIP: tl.constexpr,
        LINEAR: tl.constexpr,
        EMISSION: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = r < rows
        shift, a, sigma, gamma, sign = _voigt_rows(
            r, row_ok, shift_ptr, a_ptr, sigma_ptr, gamma_ptr, sign_ptr
        )
        zero = shift * 0.0
        sum_value = zero
        sum_sigma = zero
        sum_gamma = zero
        sum_dx = zero
        for start in range(0, width, BLOCK_W):
            col = start + tl.arange(0, BLOCK_W)
            inside, pixel, off = window_positions(
                r, row_ok, col, width, start_ptr, center_ptr, wavelength_ptr, n_pixels, shift
            )
            x = off - shift[:, None]
            value, d_dx, d_sigma, d_gamma = _voigt(x, sigma[:, None], gamma[:, None])
            w = tl.load(grad_ptr + pixel, mask=inside, other=0.0)
            if EMISSION:
                w = w * sign[:, None]
            if LINEAR:
                av = a[:, None] * value
                if EMISSION:
                    av = av * sign[:, None]
                # d ln(1 − s·aV)/d(aV) = s/(s·aV − 1); zero where the guard clipped it
                w = tl.where(av > tl.full([1, 1], CLIP, av.dtype), 0.0, w / (av - 1.0))
            else:
                w = -w
            w = tl.where(inside, w, 0.0)  # no NaN from padding pairs into the sums
            sum_value += tl.sum(w * value, 1)
            wa = w * a[:, None]
            sum_sigma += tl.sum(wa * d_sigma, 1)
            sum_gamma += tl.sum(wa * d_gamma, 1)
            sum_dx += tl.sum(wa * d_dx, 1)
        tl.store(grad_a_ptr + r, sum_value, mask=row_ok)
        tl.store(grad_sigma_ptr + r, sum_sigma, mask=row_ok)
        tl.store(grad_gamma_ptr + r, sum_gamma, mask=row_ok)
        tl.store(grad_shift_ptr + r, -sum_dx, mask=row_ok)


def _launch(layout, start, per_line, linear, clip, emission, grad_out=None):
    """Forward (``grad_out`` None: the log transmission) or backward (the four sums)."""
    constants = {"CLIP": float(clip), "LINEAR": bool(linear), "EMISSION": bool(emission)}
    if grad_out is None:
        out = torch.zeros(layout.n_pixels, dtype=per_line[0].dtype, device=layout.device)
    else:
        grad_out = grad_out.contiguous()
        grads = [torch.empty_like(per_line[0]) for _ in range(4)]
    # under Triton's CPU interpreter the kernels are numpy: a formula outside its region
    # may overflow there (harmless, never selected) and must not warn
    with np.errstate(all="ignore"):
        for _, rows, scalars in bucket_arguments(layout):
            n_pixels, n_rows, width = scalars[:3]
            line_args = (layout.wavelength, layout.row_center[rows], start[rows])
            if grad_out is None:
                block_rows, block_columns = block_shape(width, VOIGT_BLOCK_ELEMENTS)
                grid = (triton.cdiv(n_rows, block_rows), triton.cdiv(width, block_columns))
                _voigt_forward_kernel[grid](
                    *line_args,
                    *(t[rows] for t in per_line),
                    out,
                    n_pixels,
                    n_rows,
                    width,
                    BLOCK_R=block_rows,
                    BLOCK_W=block_columns,
                    **constants,
                )
            else:
                block_rows, block_columns = block_shape(width, VOIGT_BACKWARD_BLOCK_ELEMENTS)
                _voigt_backward_kernel[(triton.cdiv(n_rows, block_rows),)](
                    *line_args,
                    grad_out,
                    *(t[rows] for t in per_line),
                    *(g[rows] for g in grads),
                    n_pixels,
                    n_rows,
                    width,
                    BLOCK_R=block_rows,
                    BLOCK_W=block_columns,
                    **constants,
                )
    return out if grad_out is None else grads


class _TritonVoigtLogTransmission(torch.autograd.Function):
    """Same contract as :class:`~blase_specutils.core.sparse._VoigtLogTransmission`.

    The windows start where the layout's last ``refresh`` put them.
    """

    @staticmethod
    def forward(ctx, amplitude, sigma, gamma, shift, sign, layout, linear, clip, emission):
        order = layout.order
        # bucket order, in the kernels' argument order
        per_line = [t[order].contiguous() for t in (shift, amplitude, sigma, gamma, sign)]
        start = torch.cat([b.start for b in layout.buckets])
        out = _launch(layout, start, per_line, linear, clip, emission)
        ctx.layout, ctx.linear, ctx.clip, ctx.emission = layout, linear, clip, emission
        ctx.save_for_backward(start, *per_line)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        start, *per_line = ctx.saved_tensors
        g_a, g_sigma, g_gamma, g_shift = _launch(
            ctx.layout, start, per_line, ctx.linear, ctx.clip, ctx.emission, grad_out
        )
        grads = (g_a, g_sigma, g_gamma, g_shift)
        line_grads = unbucket(grads, [[g] for g in grads], ctx.layout.order)
        needed = ctx.needs_input_grad
        line_grads = (g if needed[i] else None for i, g in enumerate(line_grads))
        return (*line_grads, None, None, None, None, None)


def voigt_log_transmission_triton(
    amplitude, sigma, gamma, shift, sign, layout, linear, clip, emission
):
    """Triton twin of the fused exact-Voigt kernel (arguments in the same order).

    The same numbers as ``sparse.voigt_log_transmission`` up to rounding: flux and the
    gradients of a, σ, γ (Å) and the centre shifts, from windows placed by the layout's
    last ``refresh``.

    Raises
    ------
    RuntimeError
        If Triton cannot run on the tensors' device (see
        :func:`~blase_specutils.core.triton_kernels.available`).
    """
    require_triton(amplitude.device)
    return _TritonVoigtLogTransmission.apply(
        amplitude, sigma, gamma, shift, sign, layout, linear, clip, emission
    )
