"""Sparse evaluation of a line forest: which pixels each line touches, and how they sum.

Every line owns a window of pixels centred on its *current* position (so windows
follow the line when its centre or the radial velocity moves). A window's size is
set in Å from the line's own width (core and Lorentzian wings down to a flux
tolerance), converted to pixels on the grid at hand and rounded up to a power of
two. Lines of equal window length form a *bucket*: a dense ``(n_lines, width)``
block, so per-line quantities broadcast instead of being gathered per pixel, and
the per-line gradient sums are plain row sums. Buckets are scattered into the
pixel vector with one ``index_add``. Memory therefore scales with the number of
line–pixel pairs actually needed, never with ``N_lines × N_pixels``.

Offsets ``λ − λc`` are formed once in float64 (``wavelength[pixel] − center_ref``)
and cast to the working dtype; only the small shift ``λc − center_ref`` is applied in
the working dtype. This keeps float32 safe near 10⁴ Å, where float32 spacing is
~1 mÅ.

Three evaluation paths share one layout:

* :func:`pseudo_voigt_log_transmission` — a fused ``torch.autograd.Function`` for the
  pseudo-Voigt that recomputes the profile in the backward pass and returns
  gradients with respect to four per-line coefficients plus the shift. It stores no
  per-pair intermediates.
* :func:`voigt_log_transmission` — the same for the exact Voigt, with the Faddeeva
  evaluation shared between the value and its three derivatives.
* :meth:`SparseLayout.evaluate` with any profile callable — plain autograd, the
  obviously-correct reference in tests.

On a CUDA device the first two run fused Triton kernels
(:mod:`~blase_specutils.core.triton_kernels`, :mod:`~blase_specutils.core.triton_voigt`)
unless ``PSEUDO_VOIGT_KERNEL`` or ``BLASE_SPECUTILS_KERNEL`` says ``"torch"``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "SparseLayout",
    "Bucket",
    "window_half_widths",
    "pseudo_voigt_log_transmission",
    "voigt_log_transmission",
]


@dataclass
class Bucket:
    """Lines sharing one window length.

    Attributes
    ----------
    lines : torch.LongTensor
        Indices of the lines in this bucket, shape ``(n,)``.
    width : int
        Window length in pixels.
    pixel : torch.LongTensor
        Pixel index of every window element, shape ``(n, width)``; clamped into the grid.
    offset : torch.Tensor
        ``wavelength[pixel] − center_ref`` formed in float64, cast to the working dtype, Å.
    valid : torch.Tensor or None
        1 where the window element lies on the grid, 0 where it was clamped; ``None`` when
        every element is valid.
    start : torch.LongTensor
        First (unclamped) pixel of each window, shape ``(n,)``.
    core : slice
        Central columns where the Gaussian part of the profile is evaluated; outside
        them it is below the wing tolerance and only the Lorentzian part is kept.
    rows : slice
        This bucket's rows in the bucket-ordered line arrays (``tensor[layout.order]``),
        so per-line quantities are views rather than gathers.
    """

    lines: torch.Tensor
    width: int
    pixel: torch.Tensor
    offset: torch.Tensor
    valid: torch.Tensor | None
    start: torch.Tensor
    core: slice = field(default_factory=lambda: slice(None))
    rows: slice = field(default_factory=lambda: slice(None))


def window_half_widths(
    amplitude: np.ndarray,
    sigma: np.ndarray,
    gamma: np.ndarray,
    *,
    tolerance: float = 1e-4,
    n_fwhm: float = 4.0,
    budget: np.ndarray | float = 0.0,
    max_half_width: float = 50.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Half-widths (Å) of line windows from each line's own profile.

    The window reaches far enough that the truncated Lorentzian and Gaussian wings each
    contribute less than ``tolerance`` (in units of the continuum) to ``a V``, and at
    least ``n_fwhm`` FWHM, plus a per-line ``budget`` (Å) for later shifts.

    Parameters
    ----------
    amplitude : numpy.ndarray
        Line amplitude ``a`` (area, Å).
    sigma, gamma : numpy.ndarray
        Gaussian standard deviation and Lorentzian HWHM, Å.
    tolerance : float
        Largest truncated ``a V`` at the window edge (dimensionless).
    n_fwhm : float
        Minimum half-width in units of the total FWHM.
    budget : numpy.ndarray or float
        Extra half-width, Å (e.g. ``λc · v_max / c``).
    max_half_width : float
        Upper cap, Å.

    Returns
    -------
    half_width : numpy.ndarray
        Window half-width per line, Å.
    core_half_width : numpy.ndarray
        Half-width of the Gaussian core per line, Å: beyond it the Gaussian part of
        ``a V`` is below ``tolerance`` (never less than 2 FWHM).
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    amplitude = np.abs(np.asarray(amplitude, dtype=np.float64))
    fg = 2.0 * math.sqrt(2.0 * math.log(2.0)) * sigma
    fl = 2.0 * gamma
    f = (
        fg**5
        + 2.69269 * fg**4 * fl
        + 2.42843 * fg**3 * fl**2
        + 4.47163 * fg**2 * fl**3
        + 0.07842 * fg * fl**4
        + fl**5
    ) ** 0.2
    r = fl / f
    eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
    # Lorentzian wing: a eta (f/2) / (pi x^2) = tol
    x_lorentz = np.sqrt(amplitude * eta * 0.5 * f / (math.pi * tolerance))
    # Gaussian wing: a (1-eta) exp(-x^2 / 2 s^2) / (s sqrt(2 pi)) = tol
    s = f / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    peak_g = amplitude * (1.0 - eta) / (s * math.sqrt(2.0 * math.pi))
    x_gauss = s * np.sqrt(2.0 * np.log(np.maximum(peak_g / tolerance, 1.0)))
    half = np.maximum(np.maximum(x_lorentz, x_gauss), n_fwhm * f) + budget
    core = np.maximum(x_gauss, 2.0 * f)
    return np.minimum(half, max_half_width), np.minimum(core, max_half_width)


class SparseLayout:
    """Line windows on one wavelength grid, grouped into power-of-two buckets.

    Parameters
    ----------
    wavelength : torch.Tensor or numpy.ndarray
        Strictly increasing grid, Å (kept in float64).
    center_ref : torch.Tensor or numpy.ndarray
        Reference line centres, Å (float64). Offsets are formed relative to these.
    half_width : numpy.ndarray
        Window half-width per line, Å (see :func:`window_half_widths`).
    core_half_width : numpy.ndarray, optional
        Half-width of each line's Gaussian core, Å; default: the whole window.
    dtype : torch.dtype
        Working dtype of offsets and profile values.
    device : torch.device or str, optional
        Where the layout lives.
    min_pixels : int
        Smallest window, pixels.
    max_pixels : int, optional
        Largest window, pixels (default: twice the grid length rounded up to a power of two).
    bucket_ratio : int
        Window lengths are powers of this (2, 4, …): larger ratios mean fewer buckets
        (fewer kernel launches, good on GPUs) at the cost of more padding.
    merge_pairs : int
        A bucket is merged into the next wider one when that adds at most this many
        line–pixel pairs (and at most 10 % of all pairs): each bucket costs a few dozen
        kernel launches per epoch, which outweighs evaluating a few thousand padded pairs.
    """

    def __init__(
        self,
        wavelength,
        center_ref,
        half_width,
        core_half_width=None,
        *,
        dtype: torch.dtype = torch.float32,
        device=None,
        min_pixels: int = 8,
        max_pixels: int | None = None,
        bucket_ratio: int = 2,
        merge_pairs: int = 32768,
    ) -> None:
        if bucket_ratio < 2 or bucket_ratio & (bucket_ratio - 1):
            raise ValueError("bucket_ratio must be a power of two >= 2")
        self.wavelength = torch.as_tensor(wavelength, dtype=torch.float64, device=device)
        self.center_ref = torch.as_tensor(center_ref, dtype=torch.float64, device=device)
        if self.wavelength.ndim != 1 or self.wavelength.numel() < 2:
            raise ValueError("wavelength grid must be 1-D with at least two samples")
        self.n_pixels = int(self.wavelength.numel())
        self.n_lines = int(self.center_ref.numel())
        self.dtype = dtype
        self.device = self.wavelength.device
        half = np.asarray(half_width, dtype=np.float64)
        if half.shape != (self.n_lines,):
            raise ValueError("half_width must have one entry per line")
        wl = self.wavelength.cpu().numpy()
        c = self.center_ref.cpu().numpy()
        # Pixels on each side of the centre; a side clipped by the grid end borrows
        # the other side's count so windows stay symmetric around the line.
        mid = np.searchsorted(wl, c)
        left = mid - np.searchsorted(wl, c - half)
        right = np.searchsorted(wl, c + half) - mid
        npix = np.maximum(2 * np.maximum(left, right) + 2, min_pixels)
        cap = max_pixels or 1 << int(math.ceil(math.log2(2 * self.n_pixels)))
        steps = np.ceil(np.log2(npix) / math.log2(bucket_ratio) - 1e-9)
        width = np.minimum((bucket_ratio**steps).astype(np.int64), cap)
        if core_half_width is None:
            core_pix = width
        else:
            core = np.asarray(core_half_width, dtype=np.float64)
            n_core = (
                2
                * np.maximum(
                    mid - np.searchsorted(wl, c - core), np.searchsorted(wl, c + core) - mid
                )
                + 3
            )
            core_pix = np.minimum(
                1 << np.ceil(np.log2(np.maximum(n_core, 4))).astype(np.int64), width
            )
        # Merge small buckets upwards while the padding they add stays cheap.
        # Each merge may add at most `merge_pairs` and at most 10 % of the total pairs,
        # so memory still scales with the pairs actually needed.
        widths = list(np.unique(width))
        budget = min(merge_pairs, 0.1 * float(width.sum()))
        for i in range(len(widths) - 1):
            members = width == widths[i]
            if int(members.sum()) * (widths[i + 1] - widths[i]) <= budget:
                width[members] = widths[i + 1]
        self.buckets: list[Bucket] = []
        order = []
        row = 0
        for w in np.unique(width):
            members = np.nonzero(width == w)[0]
            order.append(members)
            lines = torch.as_tensor(members, dtype=torch.long, device=self.device)
            k = int(core_pix[members].max())
            core_slice = slice(None) if k >= w else slice(w // 2 - k // 2, w // 2 + k // 2)
            self.buckets.append(
                Bucket(
                    lines=lines,
                    width=int(w),
                    pixel=None,
                    offset=None,
                    valid=None,
                    start=None,
                    core=core_slice,
                    rows=slice(row, row + members.size),
                )
            )
            row += members.size
        #: Line indices in bucket order: ``tensor[order][bucket.rows]`` are a bucket's lines.
        self.order = torch.as_tensor(np.concatenate(order), dtype=torch.long, device=self.device)
        #: Reference centre (float64) and half the window length of each row, bucket order.
        self.row_center = self.center_ref[self.order]
        self.row_half_width = torch.as_tensor(
            np.concatenate([np.full(b.lines.numel(), b.width // 2) for b in self.buckets]),
            dtype=torch.long,
            device=self.device,
        )
        self.refresh(torch.zeros(self.n_lines, dtype=torch.float64, device=self.device))

    # ------------------------------------------------------------------ layout
    @property
    def n_pairs(self) -> int:
        """Number of line–pixel pairs evaluated per forward pass."""
        return sum(int(b.lines.numel()) * b.width for b in self.buckets)

    @torch.no_grad()
    def refresh(self, shift: torch.Tensor) -> bool:
        """Re-centre windows on ``center_ref + shift``; returns True if any window moved.

        Parameters
        ----------
        shift : torch.Tensor
            Current per-line centre shift from ``center_ref``, Å.
        """
        centers = self.center_ref + shift.detach().to(torch.float64)
        nearest = torch.searchsorted(self.wavelength, centers)[self.order]
        moved = False
        for b in self.buckets:
            start = nearest[b.rows] - b.width // 2
            # On a GPU asking "did any window move?" would synchronise every forward pass;
            # rebuilding the windows is a handful of asynchronous kernels instead.
            on_gpu = self.device.type != "cpu"
            if not on_gpu and b.start is not None and torch.equal(start, b.start):
                continue
            moved = True
            raw = start[:, None] + torch.arange(b.width, device=self.device)[None, :]
            pixel = raw.clamp(0, self.n_pixels - 1)
            inside = (raw >= 0) & (raw < self.n_pixels)
            b.start = start
            b.pixel = pixel
            b.valid = inside.to(self.dtype) if on_gpu or not bool(inside.all()) else None
            b.offset = (self.wavelength[pixel] - self.center_ref[b.lines][:, None]).to(self.dtype)
        return moved

    # -------------------------------------------------------------- evaluation
    def scatter(self, values: list[torch.Tensor]) -> torch.Tensor:
        """Sum per-bucket ``(n, width)`` values into a pixel vector (autograd-aware)."""
        out = torch.zeros(self.n_pixels, dtype=self.dtype, device=self.device)
        flat_idx = torch.cat([b.pixel.reshape(-1) for b in self.buckets])
        flat_val = torch.cat([v.reshape(-1) for v in values])
        return out.index_add(0, flat_idx, flat_val)

    def evaluate(
        self, term, per_line: dict[str, torch.Tensor], shift: torch.Tensor
    ) -> torch.Tensor:
        """Sum a per-pair term over all windows with plain autograd.

        Parameters
        ----------
        term : callable
            ``term(dx, **params) -> Tensor`` evaluated on ``(n, width)`` offsets ``dx`` (Å),
            with every per-line tensor in ``per_line`` given as an ``(n, 1)`` column.
        per_line : dict of torch.Tensor
            Per-line tensors of shape ``(n_lines,)``.
        shift : torch.Tensor
            Per-line centre shift from ``center_ref``, Å.

        Returns
        -------
        torch.Tensor
            Per-pixel sum of ``term``, shape ``(n_pixels,)``.
        """
        values = []
        for b in self.buckets:
            dx = b.offset - shift[b.lines][:, None].to(self.dtype)
            cols = {k: v[b.lines][:, None] for k, v in per_line.items()}
            val = term(dx, **cols)
            if b.valid is not None:
                val = val * b.valid
            values.append(val)
        return self.scatter(values)

    def bucket_table(self) -> list[tuple[int, int]]:
        """(window width in pixels, number of lines) per bucket."""
        return [(b.width, int(b.lines.numel())) for b in self.buckets]


# ---------------------------------------------------------------------------
# Fused pseudo-Voigt kernel
# ---------------------------------------------------------------------------
class _PseudoVoigtLogTransmission(torch.autograd.Function):
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
        grads = _unbucket((A, h2, B, C, shift), parts, order)
        return (*grads, None, None, None, None, None)


def _unbucket(templates, parts, order) -> list[torch.Tensor]:
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


def pseudo_voigt_log_transmission(
    layout: SparseLayout,
    amplitude: torch.Tensor,
    fwhm: torch.Tensor,
    eta: torch.Tensor,
    shift: torch.Tensor,
    sign: torch.Tensor,
    *,
    linear: bool = True,
    clip: float = 1.0 - 1e-6,
    emission: bool = True,
) -> torch.Tensor:
    """ln of the forest transmission per pixel for pseudo-Voigt lines (fused kernel).

    Parameters
    ----------
    layout : SparseLayout
        Windows on the evaluation grid.
    amplitude : torch.Tensor
        Line amplitude ``a`` per line (area, Å).
    fwhm, eta : torch.Tensor
        Total FWHM (Å) and Lorentzian fraction per line (see
        :func:`~blase_specutils.core.profiles.tch_fwhm_and_eta`).
    shift : torch.Tensor
        Per-line centre shift from ``layout.center_ref``, Å (working dtype).
    sign : torch.Tensor
        +1 for absorption, −1 for emission, per line.
    linear : bool
        ``True``: Σ ln(1 − s·aV) (the product mode); ``False``: −Σ s·aV (log mode).
    clip : float
        Largest ``s·aV`` allowed inside the logarithm in linear mode (saturation guard).
    emission : bool
        Whether any line may have ``sign = −1`` (False skips the sign products).

    Returns
    -------
    torch.Tensor
        Per-pixel log transmission, shape ``(layout.n_pixels,)``.
    """
    A, h2, B, C = pseudo_voigt_coefficients(amplitude, fwhm, eta)
    args = (A, h2, B, C, shift, sign, layout, linear, clip, emission)
    if use_triton(A.device):
        out = run_triton("pseudo_voigt_log_transmission_triton", *args)
        if out is not None:
            return out
    return _PseudoVoigtLogTransmission.apply(*args)


#: Which pseudo-Voigt and exact-Voigt kernels to run: "auto" (default: the fused kernels
#: of :mod:`~blase_specutils.core.triton_kernels` and :mod:`~blase_specutils.core.triton_voigt`
#: on a CUDA device when triton imports and
#: they pass :func:`~blase_specutils.core.triton_kernels.self_check` there, else
#: PyTorch), "torch", or "triton" (on the CPU only under Triton's interpreter). The
#: environment variable ``BLASE_SPECUTILS_KERNEL`` overrides it. On an H200 the Triton
#: kernels run the paper's 7,700-line, 335,000-pixel epoch in 0.13 ms as a CUDA graph,
#: against 0.95 ms for the PyTorch kernel (``benchmarks/gpu_run.sh``).
PSEUDO_VOIGT_KERNEL = "auto"
_TRITON_FAILED: list[str] = []
#: Devices on which the Triton kernels passed their self-check ("auto" only).
_TRITON_CHECKED: set[str] = set()


def run_triton(name: str, *args, **kwargs) -> torch.Tensor | None:
    """Call ``triton_kernels.<name>`` (``triton_voigt.<name>`` for ``voigt_*``); ``None`` if it
    fails when the setting is "auto".

    A compiler or driver problem then costs one warning and the PyTorch kernel from
    there on; with the setting "triton" the error is raised.
    """
    try:
        from . import triton_kernels, triton_voigt

        module = triton_voigt if name.startswith("voigt") else triton_kernels
        return getattr(module, name)(*args, **kwargs)
    except Exception as error:
        if _kernel_setting() == "triton":
            raise
        _TRITON_FAILED.append(repr(error))
        warnings.warn(
            f"the Triton kernel failed ({error!r}); using the PyTorch kernel from now on",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _kernel_setting() -> str:
    setting = os.environ.get("BLASE_SPECUTILS_KERNEL", PSEUDO_VOIGT_KERNEL).lower()
    if setting not in ("auto", "torch", "triton"):
        raise ValueError(
            f"BLASE_SPECUTILS_KERNEL / PSEUDO_VOIGT_KERNEL must be 'auto', 'torch' or "
            f"'triton', not {setting!r}"
        )
    return setting


def use_triton(device: torch.device) -> bool:
    """Whether pseudo-Voigt forests on ``device`` run the Triton kernels.

    See ``PSEUDO_VOIGT_KERNEL`` and the environment variable ``BLASE_SPECUTILS_KERNEL``.
    """
    setting = _kernel_setting()
    if setting == "torch":
        return False
    if setting == "triton":
        return True
    if device.type != "cuda" or _TRITON_FAILED:
        return False
    from .triton_kernels import available

    return available(device) and _passes_self_check(device)


def _passes_self_check(device: torch.device) -> bool:
    """Once per device: do the Triton kernels agree with PyTorch there? (warns if not)."""
    key = str(device)
    if key in _TRITON_CHECKED:
        return True
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False  # no checks inside a CUDA graph capture; the next eager call runs it
    from .triton_kernels import self_check

    try:
        problem = self_check(device)
    except Exception as error:  # a compiler or driver problem
        problem = repr(error)
    if problem is None:
        _TRITON_CHECKED.add(key)
        return True
    _TRITON_FAILED.append(problem)
    warnings.warn(
        f"the Triton kernels disagree with PyTorch on {device} ({problem}); "
        "using the PyTorch kernel",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


# ---------------------------------------------------------------------------
# Fused exact-Voigt kernel
# ---------------------------------------------------------------------------
def _flat_bucket_args(b: Bucket, so, sig_o, gam_o):
    r = b.rows
    dx = b.offset - so[r]
    shape = dx.shape
    return dx, shape, sig_o[r].expand(shape).reshape(-1), gam_o[r].expand(shape).reshape(-1)


class _VoigtLogTransmission(torch.autograd.Function):
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
            else _VoigtLogTransmission._recompute_local(ctx, sigma, gamma, shift)
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
        grads = _unbucket((amplitude, sigma, gamma, shift), parts, order)
        return (*grads, None, None, None, None, None)


def voigt_log_transmission(
    layout: SparseLayout,
    amplitude: torch.Tensor,
    sigma: torch.Tensor,
    gamma: torch.Tensor,
    shift: torch.Tensor,
    sign: torch.Tensor,
    *,
    linear: bool = True,
    clip: float = 1.0 - 1e-6,
    emission: bool = True,
) -> torch.Tensor:
    """ln of the forest transmission per pixel for exact-Voigt lines (fused kernel).

    Parameters are as for :func:`pseudo_voigt_log_transmission`, with the Gaussian σ and
    Lorentzian HWHM γ (Å) per line in place of the total FWHM and mixing fraction. The
    kernel choice is that of the pseudo-Voigt (``PSEUDO_VOIGT_KERNEL``): on CUDA, by
    default, :func:`~blase_specutils.core.triton_voigt.voigt_log_transmission_triton`.
    """
    args = (amplitude, sigma, gamma, shift, sign, layout, linear, clip, emission)
    if use_triton(amplitude.device):
        out = run_triton("voigt_log_transmission_triton", *args)
        if out is not None:
            return out
    return _VoigtLogTransmission.apply(*args)
