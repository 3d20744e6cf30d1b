"""`ScoresLegend`: the colour bar of a scores layer, with its value range and what grey and the
crosses mean.

Plain Qt (a gradient image and labels), not matplotlib: it changes when results arrive, which is
when the viewer has the most to repaint, and Qt draws it in a fraction of the time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget


def significant_digits(values, least: int = 3, most: int = 8) -> int:
    """Enough significant digits (at least `least`) for `values` to read differently."""
    for digits in range(least, most + 1):
        texts = [f"{v:.{digits}g}" for v in values]
        if len(set(texts)) == len(texts):
            return digits
    return most


def gradient_image(cmap: str, width: int = 256) -> QImage:
    """A 1-pixel-high RGB image of `cmap` from left (low) to right (high)."""
    import matplotlib

    rgba = (matplotlib.colormaps[cmap](np.linspace(0, 1, width))[:, :3] * 255).astype(np.uint8)
    data = np.ascontiguousarray(rgba[None, :, :])
    image = QImage(data.data, width, 1, 3 * width, QImage.Format.Format_RGB888)
    return image.copy()  # own the pixels (data is freed when this function returns)


class ScoresLegend(QWidget):
    """A horizontal colour bar from the scores layer's ``metadata["neurt_scores"]``."""

    def __init__(self, viewer=None, parent=None):
        super().__init__(parent)
        self.info: dict[str, Any] | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 2, 0, 2)
        layout.setSpacing(2)
        self.title = QLabel("")
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title.setWordWrap(True)
        self.bar = QLabel()
        self.bar.setMinimumHeight(18)
        self.bar.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.bar.setScaledContents(True)
        ticks = QWidget()
        row = QHBoxLayout(ticks)
        row.setContentsMargins(0, 0, 0, 0)
        self.low_label, self.mid_label, self.high_label = QLabel(), QLabel(), QLabel()
        self.mid_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.high_label.setAlignment(Qt.AlignmentFlag.AlignRight)
        for label in (self.low_label, self.mid_label, self.high_label):
            row.addWidget(label, 1)
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        for widget in (self.title, self.bar, ticks, self.caption):
            layout.addWidget(widget)
        self.show_info(None)

    def show_info(self, info: dict[str, Any] | None) -> None:
        """Show a legend (`Colouring.legend()` keys), or a hint when there are no scores."""
        self.info = dict(info) if info else None
        if not info:
            self.title.setText("no scores yet: extract traces or run the model")
            self.bar.clear()
            self.bar.setVisible(False)
            for label in (self.low_label, self.mid_label, self.high_label, self.caption):
                label.setText("")
            return
        low, high = info["limits"]
        ticks = np.linspace(low, high, 3)
        digits = significant_digits(ticks)
        texts = [f"{v:.{digits}g}" for v in ticks]
        self.title.setText(
            f"{info['label']}: {texts[0]} to {texts[-1]} ({info['n_scored']} neurons)"
        )
        self.bar.setPixmap(QPixmap.fromImage(gradient_image(info["cmap"])))
        self.bar.setVisible(True)
        for label, text in zip((self.low_label, self.mid_label, self.high_label), texts):
            label.setText(text)
        notes = []
        if info.get("n_missing"):
            notes.append(f"grey: no value ({info['n_missing']})")
        if info.get("n_fallback"):
            notes.append(f"×: too few neighbours, context filled in ({info['n_fallback']})")
        self.caption.setText("   ".join(notes))
