"""The frames a user marked to hide, shared by the analysis panel and the trace plot of a viewer.

The panel shows them as text ("100-120, 300", what Reconstruct reads); the trace plot shades
them and adds the spans dragged across it. Both edit one `MarkedFrames` per viewer and follow its
`changed` signal, so the text and the shading always agree.
"""

from __future__ import annotations

import weakref

import numpy as np
from psygnal import Signal

from ... import analysis as core


class MarkedFrames:
    """Marked frames as text in the form `napari_neurt.analysis.parse_frames` reads."""

    changed = Signal(str)

    def __init__(self) -> None:
        self.text = ""

    def set_text(self, text: str) -> None:
        if text != self.text:
            self.text = text
            self.changed.emit(text)

    def mask(self, n_frames: int) -> np.ndarray | None:
        """The marked frames as bool (n_frames,), or None while the text cannot be read."""
        try:
            return core.parse_frames(self.text, n_frames)
        except ValueError:
            return None

    def add(self, first: int, last: int, n_frames: int) -> None:
        """Mark frames `first` to `last` (inclusive), merged with those marked already."""
        first, last = sorted((int(first), int(last)))
        first, last = max(first, 0), min(last, n_frames - 1)
        if last < first:
            return
        mask = self.mask(n_frames)
        if mask is None:  # the user's text does not read: keep it, add the span after it
            span = f"{first}-{last}" if last > first else str(first)
            self.set_text(f"{self.text.rstrip(', ')}, {span}")
            return
        mask[first : last + 1] = True
        self.set_text(core.format_frames(mask))

    def clear(self) -> None:
        self.set_text("")


_by_viewer: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def marked_frames(viewer) -> MarkedFrames:
    """The `MarkedFrames` of this viewer (made on first use)."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    marks = _by_viewer.get(viewer)
    if marks is None:
        marks = _by_viewer[viewer] = MarkedFrames()
    return marks
