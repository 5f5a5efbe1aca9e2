"""Which plotly.js goes into a report: the vendored basic bundle when it can draw every figure, else the full one.

plotly's full bundle (shipped with the plotly Python package) is 4.8 MB and takes seconds to parse and
initialise on a small CPU; the official basic bundle (scatter, bar, pie: all the report draws) is 1.2 MB
and opens three to four times faster. ``vendor/plotly-basic.min.js`` is the unmodified
``plotly-basic.min.js`` from the npm package ``plotly.js-basic-dist-min`` (MIT licence, in
``vendor/LICENSE.plotly-basic``) at the version the installed plotly Python package was built against.

It is used only when its version equals the installed plotly's own plotly.js version (the figure JSON is
written for that version) and every trace is a basic type; otherwise the full bundle is embedded.
To update after a plotly upgrade: ``npm pack plotly.js-basic-dist-min@$(python -c "import
plotly.offline as o; print(o.get_plotlyjs_version())")`` and copy ``package/plotly-basic.min.js`` here.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib import resources

import plotly.graph_objects as go

BASIC_VERSION = "4.1.1"
BASIC_TRACE_TYPES = frozenset({"scatter", "bar", "pie"})
BASIC_FILE = "plotly-basic.min.js"


@cache
def basic_bundle() -> str | None:
    """The vendored basic bundle's text, or None when it is missing from this installation."""
    try:
        return (resources.files("planner.report") / "vendor" / BASIC_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None


@cache
def full_bundle() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def installed_version() -> str:
    from plotly.offline import get_plotlyjs_version

    return get_plotlyjs_version()


def can_use_basic(figures: Iterable[go.Figure]) -> bool:
    if installed_version() != BASIC_VERSION or basic_bundle() is None:
        return False
    return all((trace.type or "scatter") in BASIC_TRACE_TYPES for fig in figures for trace in fig.data)


def bundle_for(figures: Iterable[go.Figure]) -> str:
    """The plotly.js source to inline once in a report that draws ``figures``."""
    figures = list(figures)
    if can_use_basic(figures):
        return basic_bundle() or full_bundle()
    return full_bundle()
