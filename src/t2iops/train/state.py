"""A run's progress: what a checkpoint restores besides weights, optimizer state and RNG states."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TrainState:
    """Counters and histories, saved as ``state/trainer.json`` in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # data position: the next micro-batch is (epoch, batch)
    batch: int = 0
    skipped_steps: int = 0
    bad_streak: int = 0
    samples_seen: int = 0
    losses: list = field(default_factory=list)  # mean loss of every optimizer step (None when skipped)
    validation: list = field(default_factory=list)  # {"step", "val_loss", <fidelity>}

    @classmethod
    def from_saved(cls, saved: dict) -> "TrainState":
        """The state in a checkpoint's ``trainer.json`` (which also holds other facts)."""
        return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})

    def move_past(self, epoch: int, batch: int, batches_per_epoch: int) -> None:
        """The micro-batch (epoch, batch) was drawn: the next one is the one after it."""
        batch += 1
        self.epoch, self.batch = (epoch + 1, 0) if batch == batches_per_epoch else (epoch, batch)

    def count_step(self, samples: int, loss: Optional[float], applied: bool) -> None:
        """One optimizer step done: ``loss`` is its mean loss, None when it was bad (a non-finite
        loss on some rank); a step that was bad or not applied counts as skipped."""
        self.step += 1
        self.samples_seen += samples
        if loss is None or not applied:
            self.skipped_steps += 1
        if loss is None:
            self.bad_streak += 1
        else:
            self.bad_streak = 0
        self.losses.append(loss)

    @property
    def final_loss(self) -> Optional[float]:
        return next((x for x in reversed(self.losses) if x is not None), None)


@dataclass
class Timing:
    """Wall time of this process's optimizer steps (not of validation or checkpoints)."""

    first_step: int = 0
    train_time: float = 0.0
    timed_steps: int = 0

    def add(self, seconds: float) -> None:
        self.train_time += seconds
        self.timed_steps += 1

    def samples_per_s(self, samples_per_step: int) -> Optional[float]:
        return samples_per_step * self.timed_steps / self.train_time if self.train_time else None
