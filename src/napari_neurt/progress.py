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

A step generator may also call a plain function that runs steps of its own to the end (as
`NeurtModel.tokens_for` runs `neighborhood_tokens`). To stop that too, a driver opens a stop scope,
``with stop_when(should_stop): ...``: in that thread, until the block ends, every `run_steps` also
checks `should_stop` after each step and raises `Cancelled`. The napari workers open one around
each job, so that Cancel reaches inside such calls without Qt or napari in the core.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from contextvars import ContextVar
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


# the stop checks of the enclosing `stop_when` blocks (new threads start with none)
_scope_checks: ContextVar[tuple[Callable[[], bool], ...]] = ContextVar("stop_checks", default=())


@contextlib.contextmanager
def stop_when(should_stop: StopFlag | Callable[[], bool]) -> Iterator[None]:
    """Within this block, in this thread, `run_steps` raises `Cancelled` once `should_stop` is set
    (a `threading.Event` or a callable returning True), besides its own `stop`."""
    check = should_stop.is_set if hasattr(should_stop, "is_set") else should_stop
    token = _scope_checks.set((*_scope_checks.get(), check))
    try:
        yield
    finally:
        _scope_checks.reset(token)


def stop_requested() -> bool:
    """True when an enclosing `stop_when` block of this thread was asked to stop."""
    return any(check() for check in _scope_checks.get())


def relay(steps: Steps[T], progress_of: Callable[[Progress], Progress]) -> Steps[T]:
    """Run the step generator `steps` inside another: yield `progress_of` each of its steps
    (a stage of a larger job renames or rescales its progress) and return its result."""
    while True:
        try:
            step = next(steps)
        except StopIteration as finished:
            return finished.value
        yield progress_of(step)


def run_steps(
    steps: Steps[T],
    progress: Callable[[Progress], object] | None = None,
    stop: StopFlag | Callable[[], bool] | None = None,
) -> T:
    """Run a step generator to the end and return its result.

    `progress` is called with each `Progress`; `stop` (a `threading.Event` or a callable returning
    True) is checked after each step, as are the enclosing `stop_when` blocks, and raises
    `Cancelled` when set.
    """
    own_stop = stop.is_set if hasattr(stop, "is_set") else stop
    checks = (*_scope_checks.get(), *([own_stop] if own_stop is not None else []))
    try:
        while True:
            item = next(steps)
            if progress is not None:
                progress(item)
            if any(check() for check in checks):
                steps.close()
                raise Cancelled(f"cancelled during {item.stage or 'the job'} at {item.done}/{item.total}")
    except StopIteration as finished:
        return finished.value
    except BaseException:
        # the generator's own clean-up (a training run's save on stopping) runs now, not whenever
        # the garbage collector gets to the generator, which a kept traceback can put off to exit
        steps.close()
        raise
