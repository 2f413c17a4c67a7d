"""Pictures of a merge report, as PNG bytes, for the model card and the Space.

Pure: a report section in, bytes out; nothing is written to disk and no
global plotting state is touched. matplotlib is imported inside the function,
so ``import hubmerge`` works without it, and the figure is drawn on its own
Agg canvas (the object API, never ``pyplot``), so several threads of a Gradio
Space can render at once.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .report import SimilarityReport

__all__ = ["render_heatmap"]

# One fixed canvas whatever the number of adapters, so the card image never jumps in size.
FIGSIZE_IN = (7.0, 6.0)
DPI = 100
MAX_LABEL = 18


def render_heatmap(similarity: SimilarityReport | Mapping[str, Any]) -> bytes:
    """Draw the pairwise RMS-cosine matrix as an annotated heatmap.

    The colour scale is fixed at 0..1 (RMS cosine is never negative), so two
    cards can be compared by eye; cells without a value (``None``: the pair
    shares no adapted module) are grey and marked "—".

    Args:
        similarity: the report's ``similarity`` section (:class:`SimilarityReport`, or its JSON);
            reads ``adapters`` (N names) and ``rms_cosine`` (N×N, ``None`` allowed).

    Returns:
        PNG bytes of a 700×600 pixel image, for any N.

    Raises:
        InvalidArgumentError: the matrix is empty or not N×N for the N names.

    Example:
        >>> png = render_heatmap(result.report.similarity)
        >>> Path("similarity.png").write_bytes(png)
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if isinstance(similarity, Mapping):
        names = [str(name) for name in similarity.get("adapters") or []]
        matrix = list(similarity.get("rms_cosine") or [])
    else:
        names, matrix = [str(name) for name in similarity.adapters], list(similarity.rms_cosine)
    n = len(names)
    if n == 0 or len(matrix) != n or any(len(row) != n for row in matrix):
        raise InvalidArgumentError(
            f"rms_cosine must be an N×N matrix for the {n} adapter name(s); "
            f"got {len(matrix)} row(s) of lengths {[len(row) for row in matrix]}"
        )
    values = [[math.nan if v is None else float(v) for v in row] for row in matrix]

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)
    # Fixed margins (not a tight bounding box) keep the pixel size independent of the labels.
    fig.subplots_adjust(left=0.22, right=0.93, bottom=0.22, top=0.9)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")
    norm = Normalize(vmin=0.0, vmax=1.0)
    image = ax.imshow(values, cmap=cmap, norm=norm, aspect="equal", interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("RMS cosine (0 orthogonal, 1 same direction)")

    labels = [_shorten(name) for name in names]
    label_size = 10 if n <= 8 else 8 if n <= 14 else 6.5
    ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=label_size)
    ax.set_yticks(range(n), labels, fontsize=label_size)
    ax.set_xticks([x - 0.5 for x in range(1, n)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, n)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    ax.set_title("RMS cosine of LoRA weight deltas", fontsize=13, pad=12)

    cell_size = 12 if n <= 4 else 10 if n <= 8 else 7 if n <= 14 else 5.5
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if math.isnan(value):
                text, colour = "—", "#444444"
            else:
                red, green, blue, _ = cmap(norm(value))
                # Dark text on the light (yellow) end of viridis, white text on the dark end.
                colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
                text = f"{value:.2f}"
                if n > 10:  # small cells: drop the leading zero so the number stays inside its square
                    text = text.replace("0.", ".", 1) if value < 1 else "1"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=cell_size)

    buffer = io.BytesIO()
    # No "Software" tag: the bytes then depend only on the report (and the drawing), not on a version string.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _shorten(name: str) -> str:
    # Cut in the middle: adapters of one family often share a prefix and differ at the end.
    if len(name) <= MAX_LABEL:
        return name
    head = (MAX_LABEL - 1) // 2
    return name[:head] + "…" + name[-(MAX_LABEL - 1 - head) :]
