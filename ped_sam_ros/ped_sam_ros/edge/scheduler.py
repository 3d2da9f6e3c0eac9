"""Which frame the edge worker takes next (no ROS): a latest-frame-wins slot for stream
frames, a bounded queue of one-off requests that run first, and the prompts and mode held
for stream frames. Callers never block on the worker; the worker waits here."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Deque, List, Optional, Sequence

from ped_sam_ros.core.pipeline import ObjectPrompt

from .records import Frame


@dataclass
class Job:
    """A frame to process and what to do with it (resolved against the held prompts and mode
    when the worker takes it)."""

    frame: Frame
    prompts: List[ObjectPrompt]
    automatic: bool
    future: Optional[concurrent.futures.Future] = None  # a request's; None for a stream frame

    @property
    def from_request(self) -> bool:
        return self.future is not None


@dataclass
class _Queued:
    frame: Frame
    prompts: Optional[List[ObjectPrompt]] = None  # None: the held prompts
    automatic: Optional[bool] = None  # None: the held mode
    future: Optional[concurrent.futures.Future] = None


class FrameScheduler:
    """Thread-safe; one worker calls :meth:`next_job`, any thread the rest."""

    def __init__(self, max_requests: int = 4):
        self.max_requests = max_requests
        self._cond = threading.Condition()
        self._pending: Optional[_Queued] = None
        self._requests: Deque[_Queued] = collections.deque()
        self._latest: Optional[Frame] = None
        self._prompts: List[ObjectPrompt] = []
        self._automatic = False
        self._stopping = False

    # ----------------------------------------------------------------- producers

    def submit(self, frame: Frame) -> bool:
        """Make ``frame`` the pending stream frame; True when it replaced an unprocessed one."""
        with self._cond:
            replaced = self._pending is not None
            self._pending = _Queued(frame)
            self._latest = frame
            self._cond.notify()
        return replaced

    def request(
        self, frame: Optional[Frame], prompts: Optional[Sequence[ObjectPrompt]], automatic: Optional[bool]
    ) -> concurrent.futures.Future:
        """Queue a one-off job (``frame`` None: the latest stream frame). The returned future
        has already failed when it cannot be queued (no frame yet, stopping, full)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            frame = frame or self._latest
            if frame is None:
                fut.set_exception(LookupError("no frame received yet on the image topic"))
            elif self._stopping:
                fut.set_exception(RuntimeError("the edge runtime is stopping"))
            elif len(self._requests) >= self.max_requests:
                fut.set_exception(RuntimeError(f"busy: {len(self._requests)} requests already queued"))
            else:
                self._requests.append(_Queued(frame, None if prompts is None else list(prompts), automatic, fut))
                self._cond.notify()
        return fut

    def hold(self, prompts: Sequence[ObjectPrompt]) -> None:
        """Use these prompts for the following stream frames (replacing the previous ones)."""
        with self._cond:
            self._prompts = list(prompts)

    def set_automatic(self, automatic: bool) -> None:
        with self._cond:
            self._automatic = bool(automatic)

    def wake(self) -> None:
        """Make a waiting worker look again (e.g. for new options)."""
        with self._cond:
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # -------------------------------------------------------------------- worker

    def next_job(self, timeout_s: float) -> Optional[Job]:
        """The next request, else the pending stream frame; None after ``timeout_s`` idle or
        once stopping (check :attr:`stopping`)."""
        with self._cond:
            if not self._stopping and not self._requests and self._pending is None:
                self._cond.wait(timeout_s)
            if self._stopping:
                return None
            if self._requests:
                q = self._requests.popleft()
            elif self._pending is not None:
                q, self._pending = self._pending, None
            else:
                return None
            prompts = self._prompts if q.prompts is None else q.prompts
            automatic = self._automatic if q.automatic is None else q.automatic
            return Job(q.frame, list(prompts), automatic, q.future)

    def drain(self) -> List[concurrent.futures.Future]:
        """Remove every queued request; their futures (for the caller to fail)."""
        with self._cond:
            left = [q.future for q in self._requests if q.future is not None]
            self._requests.clear()
        return left

    # ---------------------------------------------------------------------- reads

    @property
    def stopping(self) -> bool:
        with self._cond:
            return self._stopping

    @property
    def latest(self) -> Optional[Frame]:
        with self._cond:
            return self._latest

    @property
    def prompts(self) -> List[ObjectPrompt]:
        with self._cond:
            return list(self._prompts)

    @property
    def automatic(self) -> bool:
        with self._cond:
            return self._automatic

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._pending is not None
