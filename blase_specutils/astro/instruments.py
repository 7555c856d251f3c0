"""Nominal resolving powers of high-resolution spectrographs, looked up by name.

``fit`` starts (or, with ``fit_resolving_power=False``, fixes) the instrumental profile at
the resolving power of the instrument a spectrum names in its metadata (the ``INSTRUME``
FITS keyword, or an ``instrument`` meta entry, as muler's spectra carry). The values are
the instruments' published nominal figures; an individual setting, slit or detector
region may differ by ~10 %, so give ``resolving_power`` (or fit it) when it matters.
"""

from __future__ import annotations

__all__ = ["NOMINAL_RESOLVING_POWER", "DEFAULT_RESOLVING_POWER", "nominal_resolving_power"]

#: Resolving power used when the instrument is unknown (HPF's, the method's home).
DEFAULT_RESOLVING_POWER = 55_000.0

#: Published nominal resolving power by instrument name (upper case, as in ``INSTRUME``).
NOMINAL_RESOLVING_POWER: dict[str, float] = {
    "HPF": 55_000.0,
    "IGRINS": 45_000.0,
    "IGRINS-2": 45_000.0,
    "ISHELL": 75_000.0,
    "SPIROU": 70_000.0,
    "CARMENES-NIR": 80_400.0,
    "CARMENES-VIS": 94_600.0,
    "GIANO": 50_000.0,
    "CRIRES": 100_000.0,
    "NIRSPEC": 37_500.0,
    "HARPS": 115_000.0,
    "HARPS-N": 115_000.0,
    "NEID": 110_000.0,
    "ESPRESSO": 140_000.0,
    "KPF": 98_000.0,
    "MAROON-X": 85_000.0,
    "EXPRES": 137_000.0,
}


def nominal_resolving_power(instrument: str | None) -> float | None:
    """Nominal resolving power of ``instrument``, or None when it is not in the table.

    Parameters
    ----------
    instrument : str or None
        Instrument name as written in a header (case and surrounding blanks ignored;
        ``"HARPS-N"`` and ``"HARPS_N"`` are the same).

    Returns
    -------
    float or None
        Resolving power λ/Δλ (dimensionless).

    Examples
    --------
    >>> nominal_resolving_power("IGRINS")
    45000.0
    >>> nominal_resolving_power("my spectrograph") is None
    True
    """
    if not instrument:
        return None
    key = str(instrument).strip().upper().replace("_", "-").replace(" ", "-")
    if key in NOMINAL_RESOLVING_POWER:
        return NOMINAL_RESOLVING_POWER[key]
    if key.startswith("CRIRES"):  # CRIRES+ and CRIRES-PLUS
        return NOMINAL_RESOLVING_POWER["CRIRES"]
    return None
