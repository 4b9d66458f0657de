"""The progress of a training run: what ckpt/state.json holds after every epoch.

The loop, early stopping, checkpointing and the run log all read and update one
:class:`RunState`; committing it (:class:`medtl.train.checkpoint.Checkpointer`) is what makes
an epoch count as done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RunState"]


@dataclass
class RunState:
    """Progress of a run, committed to ckpt/state.json after every epoch.

    Example:
        >>> state = RunState()
        >>> (state.stage, state.epoch, state.finished)
        (0, 0, False)
    """

    stage: int = 0  # next stage to run
    epoch: int = 0  # next epoch within that stage
    global_epoch: int = 0  # epochs completed over all stages
    wait: int = 0  # epochs of this stage since the best score last improved
    best: list | None = None  # comparison key of the best epoch so far
    best_at: dict | None = None
    best_logs: dict = field(default_factory=dict)
    # Weights are ckpt files applied in order: the stage's full snapshot, then the variables
    # trained in the stage (nothing else moves within a stage: BatchNorm is always frozen).
    weights: list = field(default_factory=list)  # after the last completed epoch
    optimizer: str | None = None  # ckpt file of the optimizer state (None at a stage start)
    best_weights: list = field(default_factory=list)
    stage_base: str | None = None
    history: list = field(default_factory=list)
    stages: list = field(default_factory=list)
    elapsed_s: float = 0.0
    finished: bool = False
    fixed_epochs: list | None = None  # epochs per stage of a run without validation (fixed mode)
    # train.swa_epochs: the last stage's epochs whose weight files are kept for the average
    # ({epoch, global_epoch, file}), then the average's outcome (medtl.train.swa).
    swa_saved: list = field(default_factory=list)
    swa: dict | None = None
