"""One colour per memory category, used by every figure of the report.

Estimates say ``overhead`` and profiles say ``other`` for memory that is not a tensor of the model's
states or activations: both get the same colour and label so a reader compares like with like.
Colours are from the Tableau 10 palette, chosen to stay distinct for common colour-vision deficiencies
when paired with the legend order.
"""

from __future__ import annotations

import html

# The report's category order, bottom of a stack first.
CATEGORIES = ("params", "grads", "optimizer_states", "activations", "temporaries", "overhead")

CATEGORY_COLORS = {
    "params": "#4C78A8",
    "grads": "#F58518",
    "optimizer_states": "#54A24B",
    "activations": "#E45756",
    "temporaries": "#B279A2",
    "overhead": "#9D755D",
}

CATEGORY_LABELS = {
    "params": "parameters",
    "grads": "gradients",
    "optimizer_states": "optimizer states",
    "activations": "activations",
    "temporaries": "temporaries",
    "overhead": "overhead / other",
}

# Lines drawn over the stacks.
RESERVED_COLOR = "#222222"
DEVICE_COLOR = "#7F7F7F"
CAPACITY_COLOR = "#D62728"
ESTIMATE_COLOR = "#8C8C8C"

PHASE_COLORS = {
    "forward": "rgba(76, 120, 168, 0.10)",
    "loss": "rgba(245, 133, 24, 0.12)",
    "backward": "rgba(228, 87, 86, 0.10)",
    "optimizer_step": "rgba(84, 162, 75, 0.14)",
}
OTHER_PHASE_COLOR = "rgba(127, 127, 127, 0.08)"

# Aliases a profile may use for a category.
_ALIASES = {
    "other": "overhead",
    "optimizer": "optimizer_states",
    "optimizer_state": "optimizer_states",
    "gradients": "grads",
    "parameters": "params",
    "activation": "activations",
    "temporary": "temporaries",
}


def canonical(category: str) -> str:
    """The report's name for a category (``other`` -> ``overhead``); unknown names pass through."""
    return _ALIASES.get(category, category)


def color(category: str) -> str:
    return CATEGORY_COLORS.get(canonical(category), "#BAB0AC")


def label(category: str) -> str:
    name = canonical(category)
    return CATEGORY_LABELS.get(name, name.replace("_", " "))


def phase_color(phase: str) -> str:
    return PHASE_COLORS.get(phase, OTHER_PHASE_COLOR)


def text(value: object) -> str:
    """A user-supplied string made safe for plotly's pseudo-HTML labels.

    plotly renders a few tags (``<b>``, ``<a href>``, ``<br>``...) in labels and decodes ``&lt;``, ``&gt;``
    and ``&amp;`` back to characters, but not ``&quot;``: escaping ``&``, ``<`` and ``>`` is what keeps a
    name from becoming a tag, and quotes stay as they are (outside a tag they are plain text).
    """
    return html.escape(str(value), quote=False)
