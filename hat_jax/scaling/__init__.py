"""Scaling-law fitting, plotting and reporting (`python -m hat_jax.scaling.report`)."""

from hat_jax.scaling.fit import (
    CHINCHILLA_GRID,
    HUBER_DELTA,
    PF_DAY_FLOPS,
    POWER_LAW_GRID,
    BootstrapResult,
    ChinchillaFit,
    HeldOutResult,
    PowerLawFit,
    bootstrap,
    fit_chinchilla,
    fit_compute_law,
    fit_power_law,
    flops_6nd,
    held_out_error,
    non_embedding_params,
)

__all__ = [
    "CHINCHILLA_GRID",
    "HUBER_DELTA",
    "PF_DAY_FLOPS",
    "POWER_LAW_GRID",
    "BootstrapResult",
    "ChinchillaFit",
    "HeldOutResult",
    "PowerLawFit",
    "bootstrap",
    "fit_chinchilla",
    "fit_compute_law",
    "fit_power_law",
    "flops_6nd",
    "held_out_error",
    "non_embedding_params",
]
