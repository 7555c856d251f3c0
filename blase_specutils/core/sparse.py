"""Sparse evaluation of a line forest: which pixels each line touches, and how they sum.

How each line's window of pixels is laid out and grouped into buckets (float64 offsets
included) is :mod:`.layout`'s business; this module evaluates the forest on it.

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

import os
import warnings

import torch

from .fused import (
    PseudoVoigtLogTransmission,
    VoigtLogTransmission,
    pseudo_voigt_coefficients,
    unbucket,
)
from .layout import Bucket, SparseLayout, window_half_widths

__all__ = [
    "SparseLayout",
    "Bucket",
    "window_half_widths",
    "pseudo_voigt_log_transmission",
    "voigt_log_transmission",
]

# the PyTorch kernels by the names they had when they lived here
_PseudoVoigtLogTransmission = PseudoVoigtLogTransmission
_VoigtLogTransmission = VoigtLogTransmission
_unbucket = unbucket


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
    return PseudoVoigtLogTransmission.apply(*args)


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
    return VoigtLogTransmission.apply(*args)
