"""render.natural_width (which picks the widest estimate-table layout that fits the terminal) is rich's own
measure of the table, computed from the cells: checked against Console.measure on the real estimate table's
layouts and on random tables of the same style (markup, two-line headers, wide characters)."""

from __future__ import annotations

import random

from rich.console import Console
from rich.table import Table

from planner import catalog
from planner.cli import render
from planner.estimate.core import estimate
from planner.models import load_model
from planner.specs import Cluster, Method, TrainSpec


def _rich(table: Table) -> int:
    return Console(width=100_000).measure(table).maximum


def test_estimate_layouts_match_rich():
    model = load_model("gpt2")
    cluster = Cluster(gpu=catalog.gpu("a10-24gb"), num_gpus=1)
    rows = [estimate(model, TrainSpec(method=m, seq_len=512), cluster) for m in Method]
    for layout in render._ESTIMATE_LAYOUTS:
        table = render._estimate_table(rows, layout)
        assert render.natural_width(table) == _rich(table)


def test_random_tables_match_rich():
    rng = random.Random(7)
    words = ["", "a", "12.34", "[green]yes[/]", "[red]no (host)[/]", "optim+params", "日本", "x" * 17, "[bold]b[/]"]
    for _ in range(200):
        table = Table(title="t" * rng.randint(0, 90), **render._TABLE_STYLE)
        num_columns = rng.randint(1, 9)
        for _ in range(num_columns):
            header = rng.choice(words[1:]) + ("\n" + rng.choice(words[1:]) if rng.random() < 0.5 else "")
            table.add_column(header, justify=rng.choice(["left", "right"]), no_wrap=True)
        for _ in range(rng.randint(0, 5)):
            table.add_row(*(rng.choice(words) for _ in range(num_columns)))
        assert render.natural_width(table) == _rich(table)


def test_other_styles_fall_back_to_rich():
    table = Table(title="plain")
    table.add_column("a")
    table.add_row("[green]yes[/]")
    assert render.natural_width(table) == _rich(table)
