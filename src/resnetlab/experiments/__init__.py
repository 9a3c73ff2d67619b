"""Experiments that reproduce a figure of a paper with one command, on top of the training engine."""

from resnetlab.experiments.degradation import (
    DEGRADATION_DEFAULTS,
    DEGRADATION_RECIPE,
    gradient_norms_at_init,
    run_degradation,
)

__all__ = ["DEGRADATION_DEFAULTS", "DEGRADATION_RECIPE", "gradient_norms_at_init", "run_degradation"]
