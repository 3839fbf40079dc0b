"""The figures' canvas: matplotlib's Agg drawn directly (no pyplot), so nothing needs a display and no global
backend is set; PNG bytes out, written by the callers atomically."""

from __future__ import annotations

import io


def new_figure(width: float, height: float, dpi: int = 110):
    """A figure of width x height inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
