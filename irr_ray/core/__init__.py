"""Core math of irr-ray: pure torch/numpy, no Ray, no I/O.

``losses`` (matching penalties, KD), ``readouts`` (pooling), ``probes`` and ``erasure`` (sklearn /
concept-erasure baselines), ``hooks`` and ``directions`` (residual capture and ablation).
``probes`` / ``erasure`` names load on first use: importing sklearn costs ~2 s, which Ray workers
that only ablate directions should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# --- losses / readouts / hooks / directions (eager, pure torch) ---------------------------------
from irr_ray.core.directions import (
    RunningMean,
    diff_of_means,
    load_directions,
    orthonormalize,
    project_out,
    projector,
    save_directions,
)
from irr_ray.core.hooks import (
    ResidualCapture,
    ablate_directions,
    ablate_directions_batched,
    add_activation,
    capture_residuals,
    left_pad_position_ids,
)
from irr_ray.core.losses import (
    PenaltyResult,
    cov_penalty,
    gram_is_cheaper,
    kd_loss,
    layer_penalty,
    mean_penalty,
)
from irr_ray.core.readouts import (
    CHAT_OFFSETS,
    Readout,
    ReadoutPlan,
    chat_mean,
    chat_position_indices,
    chat_positions,
    expected_subset_size,
    last_token,
    last_token_indices,
    masked_mean,
    mixed_readout,
    mixed_readout_weights,
    random_subset,
    random_subset_mask,
    sample_readout_plan,
)

# --- probes / erasure (lazy, sklearn + concept-erasure) ---------------------------------------
if TYPE_CHECKING:
    from irr_ray.core.erasure import InlpResult, LeaceEraser, fit_leace, inlp, leace_erase
    from irr_ray.core.probes import (
        linear_probe,
        linear_probe_accuracy,
        mlp_probe_accuracy,
        probe_accuracy,
        stratified_split,
    )

_LAZY: dict[str, str] = {
    "InlpResult": "irr_ray.core.erasure",
    "LeaceEraser": "irr_ray.core.erasure",
    "fit_leace": "irr_ray.core.erasure",
    "inlp": "irr_ray.core.erasure",
    "leace_erase": "irr_ray.core.erasure",
    "linear_probe": "irr_ray.core.probes",
    "linear_probe_accuracy": "irr_ray.core.probes",
    "mlp_probe_accuracy": "irr_ray.core.probes",
    "probe_accuracy": "irr_ray.core.probes",
    "stratified_split": "irr_ray.core.probes",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'irr_ray.core' has no attribute {name!r}")


__all__ = [
    "CHAT_OFFSETS",
    "ResidualCapture",
    "RunningMean",
    "ablate_directions",
    "ablate_directions_batched",
    "add_activation",
    "capture_residuals",
    "diff_of_means",
    "left_pad_position_ids",
    "load_directions",
    "orthonormalize",
    "project_out",
    "projector",
    "save_directions",
    "PenaltyResult",
    "Readout",
    "ReadoutPlan",
    "chat_mean",
    "chat_position_indices",
    "chat_positions",
    "cov_penalty",
    "expected_subset_size",
    "gram_is_cheaper",
    "kd_loss",
    "last_token",
    "last_token_indices",
    "layer_penalty",
    "masked_mean",
    "mean_penalty",
    "mixed_readout",
    "mixed_readout_weights",
    "random_subset",
    "random_subset_mask",
    "sample_readout_plan",
    # lazy (see _LAZY)
    "InlpResult",
    "LeaceEraser",
    "fit_leace",
    "inlp",
    "leace_erase",
    "linear_probe",
    "linear_probe_accuracy",
    "mlp_probe_accuracy",
    "probe_accuracy",
    "stratified_split",
]
