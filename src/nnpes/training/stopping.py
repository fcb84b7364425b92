"""When the epochs stop early: ``training.max_time``'s deadline, or a SIGTERM / SIGINT.

A batch scheduler ends a job with SIGTERM (SLURM: then SIGKILL after ``KillWait``, 30 s by
default), and Ctrl-C sends SIGINT. Either one, the first time, only sets ``StopRequest.signal``: the
step in flight finishes, the trainer saves ``latest.ckpt`` with the batches done (as for
``max_time``), so ``--resume`` goes on from the next batch, and raises
``nnpes.errors.TrainingInterrupted``. A second signal stops at once (``KeyboardInterrupt``), losing
only the batches since the last save.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from contextlib import contextmanager
from typing import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclasses.dataclass
class StopRequest:
    """``deadline``: the ``clock()`` time of max_time (None: none); ``signal``: the signal that asked
    to stop (None until one comes)."""

    clock: Callable[[], float]
    deadline: float | None = None
    signal: signal.Signals | None = None

    def reason(self) -> str | None:
        """"SIGTERM" / "SIGINT" once a signal came, "max_time" once the deadline passed, else None."""
        if self.signal is not None:
            return self.signal.name
        if self.deadline is not None and self.clock() >= self.deadline:
            return "max_time"
        return None


@contextmanager
def signals_request_stop(stop: StopRequest):
    """While inside, the first SIGTERM or SIGINT sets ``stop.signal`` and a second one raises
    ``KeyboardInterrupt``; the handlers before are restored on exit. Outside the main thread
    (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.signal is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped without saving")
        stop.signal = signal.Signals(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
