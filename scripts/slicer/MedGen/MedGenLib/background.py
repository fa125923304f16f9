"""Run one blocking server call beside Slicer's event loop, and say what is running while it does.

MONAI Label 0.8.5 answers ``POST /infer/<model>`` once, when the whole volume is done; it has no progress report
for a single request (its only status endpoints, ``GET /train/`` and ``GET /batch/infer``, follow training and
batch jobs over the datastore).  So the module cannot show "slices done / total" for a request: it shows a busy
indicator instead, whose text (:func:`busy_text`) names the model, the input and its size, and counts the seconds.

Standard library only, no Slicer: tested by the main test suite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

__all__ = ["BackgroundCall", "busy_text", "describe_volume"]


class BackgroundCall:
    """``function()`` in a daemon thread; the caller polls :attr:`done` (keeping its event loop alive) and takes
    :meth:`result`.

    Example::

        call = BackgroundCall(lambda: client.infer(...))
        while not call.done:
            dialog.setLabelText(busy_text("denoise", call.elapsed))
            slicer.app.processEvents()
            time.sleep(0.05)
        answer = call.result()      # re-raises the call's exception, if any

    Args:
        function: what to run; takes no argument.
        clock: seconds since an arbitrary origin (``time.monotonic``; replaceable in tests).
    """

    def __init__(self, function: Callable[[], object], clock: Callable[[], float] = time.monotonic):
        if not callable(function):
            raise ValueError(f"function must be callable, got {type(function).__name__}.")
        self._function, self._clock = function, clock
        self._value, self._error = None, None
        self._start = clock()
        self._end: float | None = None
        self._thread = threading.Thread(target=self._target, daemon=True, name="MedGen server call")
        self._thread.start()

    def _target(self) -> None:
        try:
            self._value = self._function()
        except BaseException as e:  # handed to the caller's thread by result()
            self._error = e
        finally:
            self._end = self._clock()

    @property
    def done(self) -> bool:
        """Whether the call has returned or raised."""
        return not self._thread.is_alive()

    @property
    def elapsed(self) -> float:
        """Seconds since the call started (until it ended, once it has)."""
        return (self._end if self._end is not None else self._clock()) - self._start

    def wait(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds (None: until the end); returns :attr:`done`."""
        self._thread.join(timeout)
        return self.done

    def result(self):
        """The function's return value; raises its exception in the caller's thread.

        Raises:
            RuntimeError: when the call is still running.
        """
        if not self.done:
            raise RuntimeError("the call is still running; poll `done` or `wait()` first.")
        if self._error is not None:
            raise self._error
        return self._value


def describe_volume(shape: Sequence[int] | None) -> str:
    """``"256 x 256 x 130 voxels"`` for a shape (None or empty: ``""``)."""
    if not shape:
        return ""
    return " x ".join(str(int(n)) for n in shape) + " voxels"


def busy_text(label: str, seconds: float, detail: str = "") -> str:
    """The busy indicator's text: what runs, on what, and for how long, e.g.
    ``"cddpm_denoising_2d on MRHead (256 x 256 x 130 voxels): 12 s - the server reports no progress for one volume;
    waiting for its answer."``"""
    what = f"{label} ({detail})" if detail else label
    return f"{what}: {max(0.0, float(seconds)):.0f} s - the server reports no progress for one volume; waiting for its answer."
