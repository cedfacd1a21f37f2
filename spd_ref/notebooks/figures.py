"""Figures for the notebooks: matplotlib figures drawn outside pyplot and handed back as PNG images, so
the executed notebooks store them and read well as static pages (DESIGN.md, Notebooks)."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Callable, Optional


def new_figure(*subplots, **kw):
    """(Figure, axes): a Figure outside pyplot, so any backend works (plots_latency switches pyplot to Agg)."""
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    return fig, fig.subplots(*subplots)


def as_image(fig):
    """The figure rendered to PNG, as an image a notebook displays (and stores for a static page)."""
    from IPython.display import Image

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return Image(data=buf.getvalue(), format="png")


def show_figure(plot: Callable[[list[dict], Path], Optional[Path]], rows: list[dict]):
    """A spd_ref.latency.plots figure (they write PNG files) as an image a notebook displays."""
    from IPython.display import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = plot(rows, Path(tmp) / "figure.png")
        return None if path is None else Image(data=path.read_bytes(), format="png")


def plain_log_ticks(ax) -> None:
    """Tick labels of a log y axis as plain numbers (20, 30, 100), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:g}"))
