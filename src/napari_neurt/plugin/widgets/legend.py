"""`ScoresLegend`: the colour bar of a scores layer, with its value range and what grey and the
crosses mean."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import PlotWidget


def significant_digits(values, least: int = 3, most: int = 8) -> int:
    """Enough significant digits (at least `least`) for `values` to read differently."""
    for digits in range(least, most + 1):
        texts = [f"{v:.{digits}g}" for v in values]
        if len(set(texts)) == len(texts):
            return digits
    return most


class ScoresLegend(PlotWidget):
    """A horizontal colour bar from the scores layer's ``metadata["neurt_scores"]``."""

    def __init__(self, viewer, parent=None):
        super().__init__(viewer, parent, figsize=(4, 1.0), min_height=80)
        self.info: dict[str, Any] | None = None
        self.image = self.axes.imshow(
            np.linspace(0, 1, 256)[None, :], aspect="auto", extent=(0, 1, 0, 1), cmap="viridis"
        )
        self.axes.set_yticks([])
        self.caption = self.figure.text(0.01, 0.02, "", fontsize=7, ha="left", va="bottom")
        self.show_info(None)

    def show_info(self, info: dict[str, Any] | None) -> None:
        """Show a legend (`Colouring.legend()` keys), or a hint when there are no scores."""
        self.info = dict(info) if info else None
        axes = self.axes
        if not info:
            self.image.set_visible(False)
            axes.set_xticks([])
            axes.set_title("no scores yet: extract traces or run the model", fontsize=8)
            self.caption.set_text("")
        else:
            low, high = info["limits"]
            self.image.set_cmap(info["cmap"])
            self.image.set_extent((low, high, 0, 1))
            self.image.set_visible(True)
            axes.set_xlim(low, high)
            ticks = np.linspace(low, high, 3)
            digits = significant_digits(ticks)
            axes.set_xticks(ticks)
            labels = axes.set_xticklabels([f"{v:.{digits}g}" for v in ticks], fontsize=7)
            labels[0].set_horizontalalignment("left")  # keep the end labels inside the figure
            labels[-1].set_horizontalalignment("right")
            axes.set_title(
                f"{info['label']}: {low:.{digits}g} to {high:.{digits}g} "
                f"({info['n_scored']} neurons)",
                fontsize=8,
            )
            notes = []
            if info.get("n_missing"):
                notes.append(f"grey: no value ({info['n_missing']})")
            if info.get("n_fallback"):
                notes.append(
                    f"×: too few neighbours, context filled in ({info['n_fallback']})"
                )
            self.caption.set_text("   ".join(notes))
        self.on_theme()
        self.canvas.draw_idle()

    def on_theme(self) -> None:
        if hasattr(self, "caption"):
            self.caption.set_color(self.text_color)
            self.axes.title.set_color(self.text_color)
