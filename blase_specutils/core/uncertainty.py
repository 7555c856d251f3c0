"""Gauss–Newton uncertainties of a few global parameters with nuisance parameters.

The model Jacobian ``J`` (weighted by 1/σ: one column per global parameter) and the
columns ``N`` of linear nuisance parameters (the continuum coefficients) make the Fisher
matrix ``F = [J N]ᵀ [J N]``; the covariance of the globals is the top-left block of
``F⁻¹``, which marginalises the nuisance parameters. The same matrices restricted to the
pixels of one order give that order's own estimate, one Gauss–Newton step from the joint
solution: ``δ = F_k⁻¹ [J N]_kᵀ r_k`` with ``r`` the weighted residual.
"""

from __future__ import annotations

import torch

__all__ = ["covariance", "gauss_newton_step", "marginal_covariance"]


def _scaled_pinv(fisher: torch.Tensor) -> torch.Tensor | None:
    """Pseudo-inverse after Jacobi scaling (columns differ by orders of magnitude)."""
    diag = torch.diagonal(fisher).clamp(min=0)
    scale = torch.where(diag > 0, torch.sqrt(diag), torch.ones_like(diag))
    scaled = fisher / (scale[:, None] * scale[None, :])
    try:
        inverse = torch.linalg.pinv(scaled, hermitian=True)
    except RuntimeError:
        return None
    if not bool(torch.all(torch.isfinite(inverse))):
        return None
    return inverse / (scale[:, None] * scale[None, :])


def _with_nuisance(columns: torch.Tensor, nuisance: torch.Tensor | None) -> torch.Tensor:
    """The parameters' columns followed by the nuisance parameters' (if any)."""
    if nuisance is None or nuisance.numel() == 0:
        return columns
    return torch.cat([columns, nuisance], dim=1)


def covariance(columns: torch.Tensor, nuisance: torch.Tensor | None = None) -> torch.Tensor | None:
    """Covariance ``[p, p]`` of the parameters behind ``columns`` (``[n, p]``, weighted),
    with the ``nuisance`` columns (``[n, q]``) marginalised; None when singular."""
    full = _with_nuisance(columns, nuisance)
    inverse = _scaled_pinv(full.T @ full)
    if inverse is None:
        return None
    p = columns.shape[1]
    return inverse[:p, :p]


def gauss_newton_step(
    columns: torch.Tensor, nuisance: torch.Tensor | None, residual: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One Gauss–Newton step ``δ`` (``[p]``) of the parameters and their covariance.

    ``residual`` is the weighted residual (data − model)/σ, ``[n]``. None when the
    Fisher matrix is singular.
    """
    full = _with_nuisance(columns, nuisance)
    inverse = _scaled_pinv(full.T @ full)
    if inverse is None:
        return None
    p = columns.shape[1]
    step = inverse @ (full.T @ residual)
    return step[:p], inverse[:p, :p]


def marginal_covariance(
    global_columns: torch.Tensor,
    blocks: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """Covariance of the global parameters with per-block nuisance parameters
    marginalised, and the variances of each block's own parameters.

    The Fisher matrix is arrow-shaped: the globals couple to everything, each block (an
    order's trained lines and continuum) only to itself. Its global block is the Schur
    complement ``A − Σ_k B_kᵀ F_k⁻¹ B_k``; a block's own covariance is
    ``F_k⁻¹ + F_k⁻¹ B_k C B_kᵀ F_k⁻¹`` with ``C`` the globals' covariance.

    Parameters
    ----------
    global_columns : torch.Tensor
        ``[n, p]`` weighted derivatives of the model with respect to the globals.
    blocks : list of (rows, columns)
        Per block, the boolean pixel selection ``[n]`` and its own weighted derivative
        columns ``[n_k, m_k]`` at those pixels.

    Returns
    -------
    covariance : torch.Tensor or None
        ``[p, p]``, None when singular.
    block_variances : list of torch.Tensor or None
        Per block, ``[m_k]`` variances of its parameters (None when singular).
    """
    p = global_columns.shape[1]
    schur = global_columns.T @ global_columns
    pieces = []
    for rows, columns in blocks:
        jg = global_columns[rows]
        inverse = _scaled_pinv(columns.T @ columns) if columns.shape[1] else None
        if inverse is None:
            pieces.append(None)
            continue
        coupling = columns.T @ jg  # [m_k, p]
        schur = schur - coupling.T @ inverse @ coupling
        pieces.append((inverse, coupling))
    cov = _scaled_pinv(schur) if p else torch.zeros(0, 0, dtype=global_columns.dtype)
    variances = []
    for piece in pieces:
        if piece is None or cov is None:
            variances.append(None)
            continue
        inverse, coupling = piece
        lifted = inverse @ coupling  # [m_k, p]
        variances.append(torch.diagonal(inverse) + torch.sum((lifted @ cov) * lifted, dim=1))
    return cov, variances
