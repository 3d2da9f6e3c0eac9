"""Run-time options of the edge pipeline (no ROS): changes any thread may ask for, which
the worker applies to the live pipeline between frames (it owns the pipeline)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import Optional

from .builder import EdgePipeline
from .config import AmgOptions


@dataclass(frozen=True)
class OptionChanges:
    """Options to change; None leaves one as it is."""

    deadline_s: Optional[float] = None  # each frame's remote encoding
    multimask: Optional[bool] = None  # SAM's 3 masks per prompt, best kept
    amg: Optional[AmgOptions] = None  # SAM's automatic mask generator

    def __post_init__(self):
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError("deadline must be positive")

    def then(self, later: OptionChanges) -> OptionChanges:
        """These changes followed by ``later`` (its set values win)."""
        return OptionChanges(
            **{
                f.name: getattr(later, f.name) if getattr(later, f.name) is not None else getattr(self, f.name)
                for f in fields(self)
            }
        )

    def apply(self, pipeline: EdgePipeline) -> None:
        """Set the live objects that use each option (the worker's thread only)."""
        if self.deadline_s is not None:
            pipeline.encoder.timeout_s = float(self.deadline_s)
        if self.multimask is not None:
            pipeline.segmenter.multimask_output = bool(self.multimask)
        if self.amg is not None:
            pipeline.segmenter.amg_options = self.amg.to_kwargs()


class PendingOptions:
    """Changes asked for since the worker last applied them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._changes: Optional[OptionChanges] = None

    def add(self, changes: OptionChanges) -> None:
        with self._lock:
            self._changes = changes if self._changes is None else self._changes.then(changes)

    def take(self) -> Optional[OptionChanges]:
        with self._lock:
            changes, self._changes = self._changes, None
            return changes
