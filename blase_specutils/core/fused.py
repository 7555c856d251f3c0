"""The fused PyTorch kernels: a forest's log transmission with hand-written gradients.

* :class:`PseudoVoigtLogTransmission` — a ``torch.autograd.Function`` for the
  pseudo-Voigt that recomputes the profile in the backward pass and returns
  gradients with respect to four per-line coefficients plus the shift. It stores no
  per-pair intermediates.
* :class:`VoigtLogTransmission` — the same for the exact Voigt, with the Faddeeva
  evaluation shared between the value and its three derivatives.

Both run on a :class:`~blase_specutils.core.layout.SparseLayout`. They are the reference
the Triton kernels are checked against and the fallback where Triton does not run; the
choice between them is made in :mod:`~blase_specutils.core.sparse`, above both.
"""

from __future__ import annotations

import math

import torch

from .layout import Bucket, SparseLayout

__all__ = [
    "PseudoVoigtLogTransmission",
    "VoigtLogTransmission",
    "pseudo_voigt_coefficients",
    "unbucket",
]

# ---------------------------------------------------------------------------
# Fused pseudo-Voigt kernel
# ---------------------------------------------------------------------------
class PseudoVoigtLogTransmission(torch.autograd.Function):
    """Per-pixel sum of ln(1 − s·aV) (linear) or −s·aV (log) for pseudo-Voigt lines.

    Per line the profile times amplitude is ``aV(x) = A/(x² + h2) + B·exp(C·x²)`` with
    x = offset − shift; the Gaussian term is evaluated only on each bucket's core
    columns. Inputs are per-line tensors (all lines); the layout is static. The
    backward pass recomputes the profile instead of storing per-pair intermediates.
    """

    @staticmethod
    def forward(
        ctx,
        A,
        h2,
        B,
        C,
        shift,
        sign,
        layout: SparseLayout,
        linear: bool,
        clip: float,
        emission: bool,
    ):
        order = layout.order
        Ao, h2o, Bo, Co, so, sgo = (t[order][:, None] for t in (A, h2, B, C, shift, sign))
        out = torch.zeros(layout.n_pixels, dtype=A.dtype, device=A.device)
        for b in layout.buckets:
            r = b.rows
            dx = b.offset - so[r]
            av, _, _, _ = _bucket_profile(b, dx, Ao[r], h2o[r], Bo[r], Co[r])
            if emission:
                av.mul_(sgo[r])
            if linear:
                val = av.clamp_(max=clip).neg_().log1p_()
            else:
                val = av.neg_()
            if b.valid is not None:
                val.mul_(b.valid)
            out.index_add_(0, b.pixel.reshape(-1), val.reshape(-1))
        ctx.layout = layout
        ctx.linear = linear
        ctx.clip = clip
        ctx.emission = emission
        ctx.save_for_backward(A, h2, B, C, shift, sign)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        A, h2, B, C, shift, sign = ctx.saved_tensors
        need_a, need_h2, need_b, need_c, need_shift = ctx.needs_input_grad[:5]
        layout = ctx.layout
        order = layout.order
        Ao, h2o, Bo, Co, so, sgo = (t[order][:, None] for t in (A, h2, B, C, shift, sign))
        parts: list[list[torch.Tensor]] = [[], [], [], [], []]
        grad_out = grad_out.contiguous()
        for b in layout.buckets:
            r = b.rows
            c_ = Co[r]
            dx = b.offset - so[r]
            av, inv, eg, x2k = _bucket_profile(b, dx, Ao[r], h2o[r], Bo[r], c_, keep=True)
            k = b.core
            lor = inv * Ao[r]
            gau = eg * Bo[r]
            w = grad_out[b.pixel]
            if b.valid is not None:
                w.mul_(b.valid)
            if ctx.emission:
                sg = sgo[r]
                w.mul_(sg)
                av.mul_(sg)
            if ctx.linear:
                # d ln(1 − s·aV)/d(aV) = −s/(1 − s·aV) = s/(s·aV − 1); zero where clipped.
                clipped = av > ctx.clip
                w.div_(av.sub_(1.0))
                w.masked_fill_(clipped, 0.0)
            else:
                w.neg_()
            # Only the sums some input needs: transfer learning trains amplitudes alone
            # (A and B), and then h2, C and the shifts need none (a third of the work).
            wi = w * inv
            if need_a:
                parts[0].append(wi.sum(1))
            if need_h2 or need_shift:
                wli = wi.mul_(lor)
                if need_h2:
                    parts[1].append(-wli.sum(1))
                if need_shift:
                    shift_l = (wli.mul_(dx)).sum(1)
            if need_b or need_c or need_shift:
                wk = w[:, k]
                if need_b:
                    parts[2].append((wk * eg).sum(1))
                if need_c or need_shift:
                    wg = wk.mul(gau)
                    if need_c:
                        parts[3].append((wg * x2k).sum(1))
                    if need_shift:
                        # d(aV)/d(shift) = −d(aV)/d(dx) = 2 dx (A/(x²+h2)² − C·B·exp(C x²))
                        parts[4].append(2.0 * (shift_l - c_[:, 0] * (wg.mul_(dx[:, k])).sum(1)))
        grads = unbucket((A, h2, B, C, shift), parts, order)
        return (*grads, None, None, None, None, None)


def unbucket(templates, parts, order) -> list[torch.Tensor]:
    """Per-line gradients from per-bucket row sums (bucket order) back to line order."""
    grads = []
    for template, pieces in zip(templates, parts):
        if not pieces:  # a gradient nobody asked for
            grads.append(None)
            continue
        g = torch.empty_like(template)
        g[order] = torch.cat(pieces)
        grads.append(g)
    return grads


def _bucket_profile(b: Bucket, dx, A, h2, B, C, keep: bool = False):
    """aV on one bucket; with ``keep`` also 1/(x²+h2), exp(C x²) on the core, x² on the core."""
    k = b.core
    x2 = dx * dx
    x2k = x2[:, k]
    # exp of very negative arguments hits slow denormal paths: floor at e^-80.
    eg = torch.exp((x2k * C).clamp_(min=-80.0))
    if keep:
        x2k = x2k.clone()
    inv = x2.add_(h2).reciprocal_()
    av = inv * A if keep else inv.mul_(A)
    av[:, k] += eg * B
    return av, inv, eg, x2k


def pseudo_voigt_coefficients(
    amplitude: torch.Tensor, fwhm: torch.Tensor, eta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coefficients of ``aV(x) = A/(x² + h2) + B·exp(C·x²)`` for pseudo-Voigt lines.

    Parameters
    ----------
    amplitude, fwhm, eta : torch.Tensor
        Amplitude (area, Å), total FWHM (Å) and Lorentzian fraction per line.

    Returns
    -------
    A, h2, B, C : torch.Tensor
        Lorentzian numerator (Å²) and squared half width (Å²), Gaussian peak height and
        exponent factor (1/Å²).
    """
    half = 0.5 * fwhm
    s = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    A = amplitude * eta * half / math.pi
    h2 = half * half
    B = amplitude * (1.0 - eta) / (s * math.sqrt(2.0 * math.pi))
    C = -0.5 / (s * s)
    return A, h2, B, C




# ---------------------------------------------------------------------------
# Fused exact-Voigt kernel
# ---------------------------------------------------------------------------
def _flat_bucket_args(b: Bucket, so, sig_o, gam_o):
    r = b.rows
    dx = b.offset - so[r]
    shape = dx.shape
    return dx, shape, sig_o[r].expand(shape).reshape(-1), gam_o[r].expand(shape).reshape(-1)


class VoigtLogTransmission(torch.autograd.Function):
    """Per-pixel ln transmission for exact-Voigt lines; gradients chained by hand.

    Same layout and conventions as the pseudo-Voigt kernel. When a gradient is needed the
    forward pass evaluates the profile together with its three partial derivatives
    (:func:`blase_specutils.core.faddeeva.voigt_with_gradients`, which shares the Faddeeva
    evaluation) and keeps them per bucket for the backward pass.
    """

    @staticmethod
    def forward(ctx, amplitude, sigma, gamma, shift, sign, layout, linear, clip, emission):
        from .faddeeva import voigt_with_gradients

        need_grad = any(ctx.needs_input_grad[:4])
        need_shift = ctx.needs_input_grad[3]
        order = layout.order
        ao, sig_o, gam_o, so, sgo = (
            t[order][:, None] for t in (amplitude, sigma, gamma, shift, sign)
        )
        out = torch.zeros(layout.n_pixels, dtype=amplitude.dtype, device=amplitude.device)
        saved = []
        for b in layout.buckets:
            dx, shape, sig, gam = _flat_bucket_args(b, so, sig_o, gam_o)
            if need_grad:
                local = [
                    None if t is None else t.view(shape)
                    for t in voigt_with_gradients(dx.reshape(-1), sig, gam, need_shift)
                ]
                saved.append(local)
                v = local[0]
            else:
                v = voigt_with_gradients(dx.reshape(-1), sig, gam, gradients=False)[0].view(shape)
            av = v * ao[b.rows]
            if emission:
                av.mul_(sgo[b.rows])
            val = av.clamp_(max=clip).neg_().log1p_() if linear else av.neg_()
            if b.valid is not None:
                val.mul_(b.valid)
            out.index_add_(0, b.pixel.reshape(-1), val.reshape(-1))
        ctx.layout, ctx.linear, ctx.clip, ctx.emission = layout, linear, clip, emission
        ctx.local = saved
        ctx.save_for_backward(amplitude, sigma, gamma, shift, sign)
        return out

    @staticmethod
    def _recompute_local(ctx, sigma, gamma, shift) -> list:
        """The per-bucket profile and derivatives again (a second backward pass)."""
        from .faddeeva import voigt_with_gradients

        order = ctx.layout.order
        sig_o, gam_o, so = (t[order][:, None] for t in (sigma, gamma, shift))
        local = []
        for b in ctx.layout.buckets:
            dx, shape, sig, gam = _flat_bucket_args(b, so, sig_o, gam_o)
            values = voigt_with_gradients(dx.reshape(-1), sig, gam, ctx.needs_input_grad[3])
            local.append([None if t is None else t.view(shape) for t in values])
        return local

    @staticmethod
    def backward(ctx, grad_out):
        amplitude, sigma, gamma, shift, sign = ctx.saved_tensors
        layout = ctx.layout
        order = layout.order
        ao, sgo = (t[order][:, None] for t in (amplitude, sign))
        parts: list[list[torch.Tensor]] = [[], [], [], []]
        grad_out = grad_out.contiguous()
        # The first backward pass frees the per-bucket derivatives kept by the forward
        # pass (they are the largest allocation of a step); a second pass over a retained
        # graph (``retain_graph=True``, ``torch.autograd.gradcheck``) recomputes them from
        # the saved inputs, bit for bit.
        local = (
            ctx.local
            if ctx.local is not None
            else VoigtLogTransmission._recompute_local(ctx, sigma, gamma, shift)
        )
        ctx.local = None
        for b, (v, d_dx, d_sigma, d_gamma) in zip(layout.buckets, local):
            r = b.rows
            w = grad_out[b.pixel]
            if b.valid is not None:
                w.mul_(b.valid)
            if ctx.emission:
                w.mul_(sgo[r])
            if ctx.linear:
                av = v * ao[r]
                if ctx.emission:
                    av.mul_(sgo[r])
                clipped = av > ctx.clip
                w.div_(av.sub_(1.0))
                w.masked_fill_(clipped, 0.0)
            else:
                w.neg_()
            parts[0].append((w * v).sum(1))
            wa = w.mul_(ao[r])
            parts[1].append((wa * d_sigma).sum(1))
            parts[2].append((wa * d_gamma).sum(1))
            if d_dx is not None:
                parts[3].append(-(wa * d_dx).sum(1))
        grads = unbucket((amplitude, sigma, gamma, shift), parts, order)
        return (*grads, None, None, None, None, None)
