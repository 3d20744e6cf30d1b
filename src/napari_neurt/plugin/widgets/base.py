"""`PlotWidget`: one matplotlib canvas that follows the napari theme (as napari-matplotlib's base).

Concrete plots subclass it, make their axes in `make_axes` and draw in `draw`; the base colours
the figure and every axes with the viewer's theme, and recolours them when the theme changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QVBoxLayout, QWidget

if TYPE_CHECKING:
    import napari


def unwrap(viewer):
    """The viewer itself, not napari's PublicOnlyProxy of it.

    napari hands plugin widgets a proxy that wraps every object from a module whose name starts
    with "napari", which includes this package: our own `Recording` and `Analysis` would come
    back wrapped (identity checks fail, attribute access inspects stack frames). We only use
    napari's public API, so the plain viewer is safe.
    """
    return getattr(viewer, "__wrapped__", viewer)


def fill_model_box(box, choices, default: str | None = None) -> bool:
    """Fill the combo `box` with model `choices` (label, source), keeping the source chosen
    before (else `default`, else the first). False, changing nothing, when Qt has deleted the
    box (its panel's viewer was closed, the panel still referenced)."""
    try:
        current = box.currentData()
    except RuntimeError:
        return False
    box.blockSignals(True)
    box.clear()
    for choice in choices:
        box.addItem(choice.label, choice.source)
    wanted = current if current is not None else default
    box.setCurrentIndex(max(box.findData(wanted), 0) if wanted is not None else 0)
    box.blockSignals(False)
    return True


@dataclass(frozen=True)
class Margins:
    """Fixed space around a figure's grid of axes, in points (they do not grow with the canvas)."""

    left: float
    right: float
    top: float
    bottom: float
    between: float = 6.0  # between rows of axes


class Canvas(FigureCanvasQTAgg):
    """A Qt canvas that lays its figure out only when asked to.

    With `margins`, the axes get that fixed space around them (the layout is a few arithmetic
    operations). Without, constrained layout places them; it measures every tick label, which
    costs more than drawing a 10,000-point trace (80 to 340 ms on the 2-core test machine), so it
    runs on the first draw, after a resize, and when `relayout` is called.
    """

    def __init__(self, figure, margins: Margins | None = None):
        super().__init__(figure)
        self.layout_dirty = True
        self.margins = margins
        self._engine = ConstrainedLayoutEngine(h_pad=0.03, w_pad=0.03)

    def relayout(self) -> None:
        self.layout_dirty = True

    def alive(self) -> bool:
        """Whether Qt still holds the widget. A draw queued by draw_idle can fire after a panel
        was closed, and garbage collection can delete a closed panel in the middle of a draw."""
        try:
            self.objectName()
        except RuntimeError:  # what PyQt and PySide raise for a wrapper whose object is gone
            return False
        return True

    def draw(self):
        if not self.alive():
            return
        if self.layout_dirty:
            self.layout_dirty = False
            if self.margins is None:
                self._engine.execute(self.figure)
            else:
                self._place_axes()
        try:
            super().draw()  # ends by asking Qt to repaint the widget
        except RuntimeError:
            if self.alive():
                raise

    def _place_axes(self) -> None:
        width, height = self.figure.get_size_inches() * 72  # points
        if width <= 0 or height <= 0:
            return
        m = self.margins
        left = min(m.left / width, 0.45)
        right = max(1 - m.right / width, left + 0.1)
        bottom = min(m.bottom / height, 0.45)
        top = max(1 - m.top / height, bottom + 0.1)
        rows = max(len(self.figure.axes), 1)
        mean_height = (top - bottom) * height / rows
        self.figure.subplots_adjust(
            left=left, right=right, bottom=bottom, top=top,
            hspace=m.between / max(mean_height, 1.0),
        )

    def resizeEvent(self, event):
        self.layout_dirty = True
        super().resizeEvent(event)


class PlotWidget(QWidget):
    """A matplotlib canvas that follows the napari theme; subclasses implement `draw`."""

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        parent: QWidget | None = None,
        *,
        figsize: tuple[float, float] = (6, 2.5),
        min_height: int = 180,
        margins: Margins | None = None,
    ):
        super().__init__(parent)
        self.viewer = unwrap(viewer)
        self.figure = Figure(figsize=figsize)
        self.canvas = Canvas(self.figure, margins)
        self.canvas.setMinimumHeight(min_height)
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.layout_.addWidget(self.canvas)
        self.axes = self.make_axes()
        viewer.events.theme.connect(self._apply_theme)
        self._apply_theme()

    def make_axes(self):
        """The figure's main axes (subclasses may make more and keep them as attributes)."""
        return self.figure.add_subplot()

    def all_axes(self):
        return self.figure.axes

    def _apply_theme(self, event=None) -> None:
        from napari.utils.theme import get_theme

        theme = get_theme(self.viewer.theme)
        background, text = theme.canvas.as_hex(), theme.text.as_hex()
        self.figure.set_facecolor(theme.background.as_hex())
        for axes in self.all_axes():
            axes.set_facecolor(background)
            axes.tick_params(colors=text, which="both")
            for spine in axes.spines.values():
                spine.set_color(text)
            axes.xaxis.label.set_color(text)
            axes.yaxis.label.set_color(text)
            axes.title.set_color(text)
        self.text_color = text
        self.background_color = background
        self.on_theme()
        self.canvas.relayout()
        self.canvas.draw_idle()

    def on_theme(self) -> None:
        """Recolour what the subclass drew in theme colours (legends, texts)."""

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            self.on_docked(self.parent() is not None)
        return super().event(event)

    def on_docked(self, docked: bool) -> None:
        """The widget was docked (True), or its dock was closed (False): napari keeps a closed
        dock's widget, unparented, so a subclass that follows the viewer stops here."""

    def draw(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
