"""Run the core's step generators in napari thread workers.

A `Job` takes a function that returns a step generator (`napari_neurt.progress`), runs it in a
napari `GeneratorWorker`, and

- turns each yielded `Progress` into an optional callback (the widget's own bar), at most 5
  times a second, and a napari progress bar (in the activity dock, with its own cancel button),
  about once a second (it repaints the whole window each time);
- cancels with `Job.cancel()`: the worker stops at the next yield (between batches, so within
  a fraction of a second) and the generator is closed in the worker thread, so its ``finally``
  blocks run there; a plain call inside a step that runs steps of its own (token building)
  stops after its current step too (`napari_neurt.progress.stop_when`); nothing is returned, so
  nothing is added (but a job made with ``keeps_late_result``, whose result is on disk when it
  returns, shows a result that its generator returned after the cancel came);
- reports errors with `show_error` and a clear message (the exception's own text; its type for
  unexpected ones), never as a traceback dialog;
- calls `on_done(result)` in the main thread only when the job ran to the end. Whatever
  `on_done` does must be cheap: build layer data in the job, apply it in `on_done`.

superqt treats a RuntimeError raised in a worker as "the worker was deleted" and drops it, so
every exception from a job is re-raised as `JobFailed` (not a RuntimeError) carrying the original.

While jobs run, torch's intra-op threads are limited to one fewer than the CPUs (`spare_a_core`),
so that the viewer's own thread always finds a free core: on a small machine torch's spinning
threads otherwise crowd it out (measured on 2 cores: event-loop stalls of 100-300 ms, and the
job itself slower, not faster).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_error, show_info

from ..progress import Cancelled, Progress, stop_when

#: Exceptions whose message is written for users; anything else also shows its type (a KeyError,
#: raised on purpose nowhere here, would otherwise show as a bare quoted key).
EXPECTED = (ValueError, FileNotFoundError, ImportError, OSError, TypeError)
UPDATE_INTERVAL_S = 0.2  # progress is shown at most this often (each showing costs a paint)
# napari's own progress bar (in the activity dock) repaints the window synchronously on each
# update (30 to 60 ms on the 2-core test machine): it is updated less often
NAPARI_BAR_INTERVAL_S = 1.0


class JobFailed(Exception):
    """A job raised; `.error` is what it raised."""

    def __init__(self, error: BaseException):
        super().__init__(describe_error(error))
        self.error = error


def describe_error(error: BaseException) -> str:
    from .. import Cancelled

    if isinstance(error, JobFailed):
        return str(error)
    text, kind = str(error).strip(), type(error).__name__
    if not text:
        return kind
    return text if isinstance(error, (*EXPECTED, Cancelled)) else f"{kind}: {text}"


class _JobProgress(cancelable_progress):
    """napari's cancelable progress bar, whose Cancel button (in the activity dock) cancels.

    napari's own calls `cancel_callback` only from its iteration (``for x in progress(...)``);
    a job's bar is updated, never iterated, so there the button only set `is_canceled`."""

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


class _ClosingWorker(GeneratorWorker):
    """A GeneratorWorker that closes its generator (in its own thread) when it is aborted."""

    result_after_abort = None  # what the generator returned though a cancel came first

    def work(self):
        try:
            result = super().work()
            if self.abort_requested and not isinstance(result, Exception):
                self.result_after_abort = result  # superqt emits no `returned` after an abort
            return result
        finally:
            if self.abort_requested:
                try:
                    self._gen.close()
                except Exception:  # the job is being thrown away; its cleanup must not raise
                    pass


_threads_lock = threading.Lock()
_threads_users = 0
_threads_before: int | None = None
_switch_before: float | None = None
# While a job runs, a thread that wants the GIL waits at most this long for the job's thread to
# let go of it (Python's default is 5 ms). The viewer's thread takes and releases the GIL many
# times per repaint, and waited up to 5 ms each time while a job ran Python code (a convoy).
JOB_SWITCH_INTERVAL_S = 0.001


@contextlib.contextmanager
def spare_a_core():
    """Limit torch to ``cpu_count - 1`` intra-op threads while any job runs (module docstring),
    and shorten the GIL's switch interval (`JOB_SWITCH_INTERVAL_S`).

    torch's thread count is kept per thread (OpenMP), and the workers' threads are reused: each
    job sets its own thread's count, and puts it back to the count before the first job, so that
    no thread keeps a lowered count for a later job to take as the one to go back to."""
    global _threads_users, _threads_before, _switch_before
    torch = sys.modules.get("torch")
    if torch is None:
        import torch
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
            _switch_before = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_before, JOB_SWITCH_INTERVAL_S))
        _threads_users += 1
        torch.set_num_threads(max(1, min(_threads_before, (os.cpu_count() or 2) - 1)))
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            torch.set_num_threads(_threads_before)
            if _threads_users == 0:
                sys.setswitchinterval(_switch_before)


def _guarded(make_steps: Callable[[], Any], should_stop: Callable[[], bool]):
    """Run the generator from `make_steps`, re-raising any error as `JobFailed`.

    Inside a stop scope (`napari_neurt.progress.stop_when`), so that a cancel also stops plain
    calls that run steps of their own within one of the job's steps (token building, say); the
    `Cancelled` they raise then ends the job like a cancel between steps: nothing returned."""
    try:
        with spare_a_core(), stop_when(should_stop):
            steps = make_steps()
            result = yield from steps
    except GeneratorExit:
        raise
    except Cancelled as error:
        if should_stop():
            return None
        raise JobFailed(error) from error
    except Exception as error:
        raise JobFailed(error) from error
    return result


class Job:
    """One run of a step generator in a napari thread worker (see the module docstring)."""

    def __init__(
        self,
        make_steps: Callable[[], Any],
        *,
        description: str,
        on_done: Callable[[Any], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_finished: Callable[[Job], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        notify_errors: bool = True,
        keeps_late_result: bool = False,
        owner=None,
    ):
        self.description = description
        # a job whose result is on disk by the time it returns (a fine-tune's model): a cancel
        # that comes after its last step cannot undo it, so the result is shown, not dropped
        self.keeps_late_result = keeps_late_result
        self.late = False  # returned after a cancel, and kept
        self.on_done = on_done
        self.on_progress = on_progress
        self.on_finished = on_finished
        self.on_error = on_error
        self.notify_errors = notify_errors
        self.error: str | None = None
        self.result: Any = None
        self.cancelled = False
        self.done = False
        self.last_progress: Progress | None = None
        self._last_update = 0.0
        self._last_bar_update = 0.0
        self._bar = None
        self.worker = create_worker(
            _guarded,
            make_steps,
            lambda: self.cancelled,
            _worker_class=_ClosingWorker,
            _ignore_errors=True,
            _start_thread=False,
        )
        self.worker.yielded.connect(self._on_yielded)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        self.worker.aborted.connect(self._on_aborted)
        self.worker.finished.connect(self._on_finished)
        if owner is not None:  # a widget whose callbacks must not run once Qt has deleted it
            owner.destroyed.connect(self._forget_owner)

    def _forget_owner(self, *_) -> None:
        self.on_done = self.on_progress = self.on_finished = self.on_error = None
        self.cancel()

    # -- control -----------------------------------------------------------------------------------
    def start(self) -> Job:
        self._bar = _JobProgress(total=0, desc=self.description, cancel_callback=self.cancel)
        self.worker.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop at its next step; nothing it made is kept."""
        if not self.done:
            self.cancelled = True
            self.worker.quit()

    @property
    def running(self) -> bool:
        return not self.done

    # -- signals (main thread) ---------------------------------------------------------------------
    def _on_yielded(self, item) -> None:
        if not isinstance(item, Progress):
            return
        self.last_progress = item
        if self.done or self.cancelled:  # a step delivered after the end: nothing to show
            return
        now = time.perf_counter()
        finished_stage = item.done >= item.total
        if now - self._last_update < UPDATE_INTERVAL_S and not finished_stage:
            return
        self._last_update = now
        if self.on_progress is not None:
            self.on_progress(item)
        if now - self._last_bar_update < NAPARI_BAR_INTERVAL_S and not finished_stage:
            return
        self._last_bar_update = now
        # napari's progress bar may process Qt events while it updates, so the job's end can be
        # handled in the middle of this: hence the callback first and the checks below
        bar = self._bar
        if bar is None or self.done:
            return
        if bar.total != item.total:
            bar.total = item.total
        bar.n = 0
        if self.done:
            return
        bar.update(item.done)
        description = f"{self.description}: {item.stage}" if item.stage else self.description
        if bar.desc != description and not self.done:
            bar.set_description(description)

    def _on_returned(self, result) -> None:
        if self.cancelled:
            return
        self._apply(result)

    def _apply(self, result) -> None:
        try:
            if self.on_done is not None:
                self.on_done(result)
            self.result = result
        except Exception as error:  # applying the result failed: say so, keep the viewer usable
            self._report(f"{self.description} failed while showing its results: "
                         f"{describe_error(error)}")

    def _on_errored(self, error) -> None:
        self._report(f"{self.description} failed: {describe_error(error)}")

    def _on_aborted(self) -> None:
        self.cancelled = True

    def _on_finished(self) -> None:
        self.done = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        late = self.worker.result_after_abort
        if self.cancelled and self.keeps_late_result and late is not None:
            self.late = True
            self._apply(late)
        if self.cancelled and self.error is None and not self.late:
            show_info(f"{self.description}: cancelled, nothing was changed")
        if self.on_finished is not None:
            self.on_finished(self)

    def _report(self, message: str) -> None:
        self.error = message
        if self.notify_errors:
            show_error(message)
        if self.on_error is not None:
            self.on_error(message)


def start_job(make_steps: Callable[[], Any], **options) -> Job:
    """`Job(make_steps, **options).start()`."""
    return Job(make_steps, **options).start()
