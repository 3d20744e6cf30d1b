"""`PlotWidget`: one matplotlib canvas that follows the napari theme (as napari-matplotlib's base).

Concrete plots subclass it, make their axes in `make_axes` and draw in `draw`; the base colours
the figure and every axes with the viewer's theme, and recolours them when the theme changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
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


class Canvas(FigureCanvasQTAgg):
    """A Qt canvas that lays its figure out (constrained layout) only when asked to.

    Constrained layout measures every tick label on each draw, which costs more than drawing a
    10,000-point trace; the plots here change data far more often than their size or labels, so
    the layout is computed on the first draw, after a resize, and when `relayout` is called.
    """

    def __init__(self, figure):
        super().__init__(figure)
        self.layout_dirty = True
        self._engine = ConstrainedLayoutEngine(h_pad=0.03, w_pad=0.03)

    def relayout(self) -> None:
        self.layout_dirty = True

    def draw(self):
        if self.layout_dirty:
            self.layout_dirty = False
            self._engine.execute(self.figure)
        super().draw()

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
    ):
        super().__init__(parent)
        self.viewer = unwrap(viewer)
        self.figure = Figure(figsize=figsize)
        self.canvas = Canvas(self.figure)
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

    def draw(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
