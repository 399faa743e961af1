"""One way to make a matplotlib figure: a bare Figure that renders with Agg and leaves pyplot alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure


def figure(width: float, height: float, nrows: int = 1, ncols: int = 1, *,
           dpi: float = 100) -> tuple[Figure, np.ndarray]:
    """A ``width`` x ``height`` inch Figure with constrained layout, and its axes as an [nrows, ncols] array.

    A bare Figure renders with Agg on ``savefig`` and never touches pyplot's global backend state, so it
    is safe in worker processes and without a display.
    """
    # Imported here: matplotlib is slow to import, and modules that draw only on some paths (stew.eval.explain)
    # should not pay for it on import.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)
