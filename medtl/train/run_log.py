"""What a run tells the user and writes down: console lines, history CSVs, stage summaries.

:class:`RunLog` prints the run and stage headers (only with ``progress``), keeps one history
row per epoch and the per-stage summary in the :class:`~medtl.train.state.RunState` (so they
survive a resume), writes history.csv and history_stage<i>.csv, and owns the Keras callbacks
that report inside an epoch (TensorBoard event files, the progress bar).

Example:
    >>> log = RunLog(run_dir, progress=True)
    >>> log("Run started")
    Run started
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from medtl.io.atomic import write_csv
from medtl.run.layout import HISTORY_FILE, TENSORBOARD_DIR, history_stage_file
from medtl.train.callbacks import EpochProgress, EpochSummaries
from medtl.train.state import RunState
from medtl.train.tracking import MlflowTracker

__all__ = ["RunLog", "write_histories"]


class RunLog:
    """The run's console output, history files and stage summaries.

    Args:
        run_dir: the run folder (history CSVs and tensorboard/ go there).
        progress: print headers and per-epoch progress; notes and warnings print regardless.
        tracker: also log the run to MLflow (``train.log_to: mlflow``); None logs TensorBoard only.
    """

    def __init__(self, run_dir: Path, progress: bool, tracker: MlflowTracker | None = None) -> None:
        self.dir = Path(run_dir)
        self.progress = progress
        self._tb: EpochSummaries | None = None
        self.tracker = tracker

    def __call__(self, msg: str) -> None:
        """Print ``msg`` when ``progress`` is on."""
        if self.progress:
            print(msg, flush=True)

    def note(self, msg: str) -> None:
        """Print ``msg`` even when quiet (to stderr then), so nothing is left out unannounced."""
        print(msg, file=sys.stdout if self.progress else sys.stderr, flush=True)

    def on_run_start(self, n_train: int, n_val: int | None, fixed: list[int] | None, runtime: str) -> None:
        """The run's first line; opens the TensorBoard event files."""
        if n_val is None:
            self(f"Run {self.dir}: {n_train} training images, no validation split, "
                 f"fixed epochs per stage {fixed}; {runtime}")
        else:
            self(f"Run {self.dir}: {n_train} training / {n_val} validation images; {runtime}")
        self._tb = EpochSummaries(str(self.dir / TENSORBOARD_DIR))
        if self.tracker is not None:
            self.tracker.start()

    def on_stage_start(self, state: RunState, s: int, st, n_stages: int, epochs: int, n_params: int,
                       cached: bool, monitored: bool) -> dict:
        """Print the stage header and return its summary (kept in ``state.stages``).

        Args:
            st: the stage's config (``cfg.train.stages[s]``).
            epochs: the stage's epochs (configured maximum, or the fixed count).
            monitored: the run has a monitor, so the summary gets best / stopped_early fields.
        """
        what = {"head": "head only", "all": "all layers"}.get(
            st.unfreeze, f"unfreeze {st.unfreeze} block{'s' if st.unfreeze != 1 else ''}")
        resumed = f", resuming at epoch {state.epoch + 1}" if state.epoch else ""
        self(f"Stage {s + 1}/{n_stages}: {what}, lr {st.lr:g}, {epochs} epochs, "
             f"{n_params:,} trainable params{', cached features' if cached else ''}{resumed}")
        while len(state.stages) <= s:
            state.stages.append({})
        summary = state.stages[s]
        if not summary:  # a resumed stage keeps the summary it had
            summary.update(stage=s + 1, unfreeze=st.unfreeze, lr=st.lr, optimizer=st.optimizer,
                           schedule=st.schedule, epochs_planned=epochs, epochs_run=0)
            if monitored:  # a fixed run has no monitor: nothing stops or improves
                summary.update(stopped_early=False, best=None, improved_overall=False)
            summary.update(trainable_params=n_params, feature_cache=cached, seconds=0.0)
        return summary

    def callbacks(self, epochs: int, first_epoch: int, steps: int) -> list:
        """Keras callbacks for a stage's ``fit`` calls: TensorBoard, and progress if shown."""
        found: list = [self._tb]
        if self.progress:
            found.append(EpochProgress(epochs, first_epoch, steps))
        return found

    def on_epoch_end(self, state: RunState, s: int, e: int, logs: dict, summary: dict, lr: float,
                     seconds: float, fit_seconds: float, best: bool | None) -> None:
        """Add the epoch's history row and count it in the stage summary.

        Args:
            best: the epoch is the best so far (a ``best`` column); None in a run without a
                monitor, whose history has no such column.
        """
        summary.update(epochs_run=e + 1, seconds=round(summary["seconds"] + seconds, 3))
        row = {"stage": s + 1, "epoch": e + 1, "global_epoch": state.global_epoch + 1, **logs,
               "lr": lr, "seconds": round(seconds, 3), "fit_seconds": round(fit_seconds, 3)}
        if best is not None:
            row["best"] = best
        state.history.append(row)
        if self.tracker is not None:
            self.tracker.log_epoch(row)

    def on_early_stop(self, s: int, monitor: str, patience: int) -> None:
        self(f"Stage {s + 1}: early stop, no improvement of {monitor} in {patience} epochs")

    def write_histories(self, history: list[dict]) -> None:
        write_histories(self.dir, history)

    def on_run_end(self, failed: bool = False) -> None:
        """The run's result files are written (or it failed): close its MLflow run, if any."""
        if self.tracker is not None:
            self.tracker.finish("FAILED" if failed else "FINISHED")

    def close(self) -> None:
        """Close the TensorBoard event files."""
        if self._tb is not None:
            self._tb.close()


def write_histories(run_dir: Path, history: list[dict]) -> None:
    """history.csv (every epoch) and one history_stage<i>.csv per stage, atomically."""
    if not history:
        return
    df = pd.DataFrame(history)
    write_csv(Path(run_dir) / HISTORY_FILE, df)
    for stage, part in df.groupby("stage"):
        write_csv(Path(run_dir) / history_stage_file(stage), part.drop(columns="stage"))
