"""Progress and cancellation for long jobs, shared by the API, the CLI and the napari workers.

Every long job in napari-neurt is written once, as a generator that yields `Progress` between
units of work (chunks of frames, batches of windows) and returns its result. Three drivers
consume it:

- the plain API runs it to the end with `run_steps`, optionally calling a callback and checking
  a stop flag between steps;
- a napari `thread_worker` does ``result = yield from steps`` so that each `Progress` updates a
  progress bar and ``worker.quit()`` stops it at the next step;
- the CLI prints the steps.

Cancellation therefore happens between steps, never inside one, so nothing is half-written.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """`done` of `total` units of the stage `stage` are finished."""

    done: int
    total: int
    stage: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def __str__(self) -> str:
        return f"{self.stage}: {self.done}/{self.total}"


Steps = Generator[Progress, None, T]


class Cancelled(RuntimeError):
    """The job was asked to stop; nothing of its output was kept."""


class StopFlag(Protocol):
    def is_set(self) -> bool: ...  # threading.Event fits


def run_steps(
    steps: Steps[T],
    progress: Callable[[Progress], object] | None = None,
    stop: StopFlag | Callable[[], bool] | None = None,
) -> T:
    """Run a step generator to the end and return its result.

    `progress` is called with each `Progress`; `stop` (a `threading.Event` or a callable returning
    True) is checked after each step and raises `Cancelled` when set.
    """
    should_stop = stop.is_set if hasattr(stop, "is_set") else stop
    try:
        while True:
            item = next(steps)
            if progress is not None:
                progress(item)
            if should_stop is not None and should_stop():
                steps.close()
                raise Cancelled(f"cancelled during {item.stage or 'the job'} at {item.done}/{item.total}")
    except StopIteration as finished:
        return finished.value
