"""Loss terms of transfer learning: χ², the profiled continuum, the line priors.

Everything here is plain torch over tensors: the data ``d``, the inverse uncertainties
``w = 1/σ`` and the boolean ``good`` mask per pixel, the model's line ``shape`` at the
pixels (star × telluric through the instrument, before the continuum) and the per-order
Chebyshev ``basis``. The continuum is linear in its coefficients, so for a given shape
it is solved exactly by weighted least squares: χ² minimised over the continuum is the
*continuum-profiled* χ² (variable projection), the loss of every global stage and of
the grid searches.
"""

from __future__ import annotations

import torch

__all__ = [
    "chi2",
    "solve_continuum",
    "profiled_chi2_batch",
    "l1_prior",
    "gaussian_prior",
]


def chi2(model_flux: torch.Tensor, data, inv_sigma, good) -> torch.Tensor:
    """Σ over good pixels of ((model − data)/σ)²."""
    r = (model_flux - data) * inv_sigma
    return torch.sum(torch.where(good, r * r, torch.zeros_like(r)))


def _weighted_lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """Least-squares solution of ``a x = b`` (float64), robust to bad conditioning.

    Columns are scaled to unit norm first (tiny uncertainties make them huge and LAPACK's
    ``gelsy`` may then fail inside torch); a failing or non-finite solve falls back to
    the SVD pseudo-inverse; None when even that fails.
    """
    if not (bool(torch.all(torch.isfinite(a))) and bool(torch.all(torch.isfinite(b)))):
        return None  # LAPACK would only complain on stderr (MKL: "DGELSY parameter 4")
    norms = torch.linalg.vector_norm(a, dim=0)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    scaled = a / norms
    try:
        solution = torch.linalg.lstsq(scaled, b[:, None]).solution[:, 0]
    except RuntimeError:
        solution = None
    if solution is None or not bool(torch.all(torch.isfinite(solution))):
        try:
            solution = torch.linalg.pinv(scaled) @ b
        except RuntimeError:
            return None
        if not bool(torch.all(torch.isfinite(solution))):
            return None
    return solution / norms


def solve_continuum(
    coefficients: torch.Tensor,
    basis: torch.Tensor,
    order_index: torch.Tensor,
    shape: torch.Tensor,
    data,
    inv_sigma,
    good,
) -> torch.Tensor:
    """Write the least-squares continuum for ``shape`` into ``coefficients``; return χ².

    Parameters
    ----------
    coefficients : torch.Tensor
        ``[n_orders, degree + 1]``, updated in place (orders with no more good pixels than
        coefficients keep theirs).
    basis : torch.Tensor
        ``[n_pixels, degree + 1]`` Chebyshev design of every pixel in its order.
    order_index : torch.Tensor
        ``[n_pixels]`` order of each pixel.
    shape : torch.Tensor
        ``[n_pixels]`` model before the continuum.
    data, inv_sigma, good : torch.Tensor
        ``[n_pixels]`` data, 1/σ and the mask.

    Returns
    -------
    torch.Tensor
        χ² (float64) with the solved continuum. It keeps the autograd graph of ``shape``
        but not of the solution: at the least-squares solution ∂χ²/∂c = 0, so the gradient
        with respect to whatever made ``shape`` is that of the profiled χ².
    """
    basis64 = basis.double()
    w = inv_sigma.double() * good.double()
    d = data.double()
    with torch.no_grad():
        fixed = shape.detach().double()
        for k in range(coefficients.shape[0]):
            sel = order_index == k
            if int(good[sel].sum()) <= basis.shape[1]:
                continue
            a = basis64[sel] * (fixed[sel] * w[sel])[:, None]
            solution = _weighted_lstsq(a, d[sel] * w[sel])
            if solution is not None:
                coefficients[k] = solution.to(coefficients.dtype)
    continuum = (basis64 * coefficients.detach().double()[order_index]).sum(1)
    r = (shape.double() * continuum - d) * w
    return torch.sum(r * r)


def profiled_chi2_batch(
    shapes: torch.Tensor,
    basis: torch.Tensor,
    data: torch.Tensor,
    weight: torch.Tensor,
    *,
    telluric: torch.Tensor | None = None,
    additive: bool = True,
    additive_shape: torch.Tensor | None = None,
    depth_range: tuple[float, float] = (0.2, 3.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """χ² of one order minimised over a continuum (and an additive term) for many shapes.

    The model of candidate ``b`` is ``(c(λ) · s_b + e · g(λ)) · t`` with ``c`` the
    Chebyshev continuum, ``e`` an additive level (veiling; negative values deepen the
    lines, so with it the search is free of a template's overall line depth) of shape
    ``g`` (the order's blaze; flat by default) and ``t`` the telluric transmission.
    Solved through the normal equations in float64, all candidates at once.

    Parameters
    ----------
    shapes : torch.Tensor
        ``[B, N]`` line transmission of each candidate at the order's pixels.
    basis : torch.Tensor
        ``[N, K]`` continuum design.
    data, weight : torch.Tensor
        ``[N]`` data and inverse variance (0 at masked pixels).
    telluric : torch.Tensor, optional
        ``[N]`` telluric transmission at the pixels.
    additive : bool
        Include the additive level ``e``.
    additive_shape : torch.Tensor, optional
        ``[N]`` its shape ``g``, default 1.
    depth_range : (float, float)
        Bounds of the depth scale the additive term may imply: a candidate whose free
        solution lies beyond (a nearly featureless shape fitted by lines scaled up
        twenty-fold, or turned into emission) is solved with the scale at the bound.

    Returns
    -------
    chi2 : torch.Tensor
        ``[B]`` profiled χ².
    depth_scale : torch.Tensor
        ``[B]`` the factor by which the solution scales the lines' depths,
        ``c₀ / (c₀ + e)`` with ``c₀`` the mean continuum (1 without ``additive``).
    """
    s = shapes.double()
    basis = basis.double()
    w = weight.double()
    d = data.double()
    t = torch.ones_like(d) if telluric is None else telluric.double()
    k = basis.shape[1]
    u = s * t  # [B, N]
    outer = (basis[:, :, None] * basis[:, None, :]).reshape(len(d), k * k)  # [N, K²]
    gram_cc = ((u * u) @ (w[:, None] * outer)).reshape(-1, k, k)
    rhs_c = u @ ((w * d)[:, None] * basis)  # [B, K]
    n_par = k + (1 if additive else 0)
    gram = torch.zeros(s.shape[0], n_par, n_par, dtype=torch.float64, device=s.device)
    rhs = torch.zeros(s.shape[0], n_par, dtype=torch.float64, device=s.device)
    gram[:, :k, :k] = gram_cc
    rhs[:, :k] = rhs_c
    if additive:
        g = t if additive_shape is None else t * additive_shape.double()
        cross = u @ ((w * g)[:, None] * basis)  # [B, K]
        gram[:, :k, k] = cross
        gram[:, k, :k] = cross
        gram[:, k, k] = torch.sum(w * g * g)
        rhs[:, k] = torch.sum(w * d * g)
    # A relative ridge keeps singular candidates (an empty order, a flat shape) finite.
    diag = torch.diagonal(gram, dim1=1, dim2=2)
    ridge = 1e-12 * diag.abs().amax(dim=1, keepdim=True).clamp(min=1e-300)
    gram = gram + torch.diag_embed(ridge.expand_as(diag))
    # Jacobi scaling before the solve: the blocks differ by orders of magnitude.
    scale = torch.sqrt(torch.diagonal(gram, dim1=1, dim2=2).clamp(min=1e-300))
    scaled = gram / (scale[:, :, None] * scale[:, None, :])
    solution = torch.linalg.solve(scaled, (rhs / scale)[..., None])[..., 0] / scale
    total = torch.sum(w * d * d)
    chi2_values = total - torch.sum(solution * rhs, dim=1)
    used = w > 0 if bool(torch.any(w > 0)) else torch.ones_like(w, dtype=torch.bool)
    c0 = solution[:, :k] @ basis[used].mean(0)
    if not additive:
        return chi2_values.clamp(min=0.0), torch.ones_like(c0)
    g0 = 1.0 if additive_shape is None else float(additive_shape.double()[used].mean())
    depth_scale = c0 / (c0 + solution[:, k] * g0)
    lo, hi = depth_range
    outside = ~((depth_scale >= lo) & (depth_scale <= hi))
    if bool(torch.any(outside)):
        bound = torch.where(depth_scale < lo, lo, hi)[outside].double()
        bound = torch.where(depth_scale[outside] <= 0, hi, bound).double()
        # With the scale k fixed, e = c₀ (1/k − 1)/g₀: the model is linear in c again,
        # with columns X_i = B_i u + α m_i g/g₀ (α = 1/k − 1, m_i the mean of B_i), whose
        # normal equations follow from the blocks already formed above.
        alpha = (1.0 / bound - 1.0)[:, None]
        m = basis[used].mean(0)[None, :]
        cross_b = gram[outside, :k, k] / g0  # Σ w u g B_i / g₀
        gg = gram[outside, k, k][:, None, None] / g0**2
        gram_b = (
            gram_cc[outside]
            + alpha[:, :, None] * (m[:, :, None] * cross_b[:, None, :]
                                   + cross_b[:, :, None] * m[:, None, :])
            + (alpha**2)[:, :, None] * m[:, :, None] * m[:, None, :] * gg
        )  # fmt: skip
        rhs_b = rhs_c[outside] + alpha * m * (rhs[outside, k] / g0)[:, None]
        diag_b = torch.diagonal(gram_b, dim1=1, dim2=2)
        scale_b = torch.sqrt(diag_b.clamp(min=1e-300))
        scaled_b = gram_b / (scale_b[:, :, None] * scale_b[:, None, :])
        scaled_b = scaled_b + 1e-12 * torch.eye(k, dtype=torch.float64)
        sol_b = torch.linalg.solve(scaled_b, (rhs_b / scale_b)[..., None])[..., 0] / scale_b
        chi2_values[outside] = total - torch.sum(sol_b * rhs_b, dim=1)
        depth_scale[outside] = bound
    return chi2_values.clamp(min=0.0), depth_scale


def l1_prior(values: torch.Tensor, reference: torch.Tensor, scale: float) -> torch.Tensor:
    """Σ |x − x₀| / Λ: the paper's prior on ln-amplitude departures."""
    return torch.sum(torch.abs(values - reference)) / scale


def gaussian_prior(values: torch.Tensor, reference: torch.Tensor, width) -> torch.Tensor:
    """½ Σ ((x − x₀)/width)²."""
    delta = (values - reference) / width
    return 0.5 * torch.sum(delta * delta)
