"""Where each line of a forest is evaluated: windows of pixels, grouped into buckets.

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

The lowest of the kernel modules: the PyTorch kernels (:mod:`.fused`), the Triton
kernels (:mod:`.triton_kernels`, :mod:`.triton_voigt`) and the dispatch between them
(:mod:`.sparse`) all read this layout; it imports none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Bucket", "SparseLayout", "window_half_widths"]


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
