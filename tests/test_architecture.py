"""ARCHITECTURE.md, enforced: no import circle between planner's modules, and only the arrows it allows.

Every import counts, at module level or inside a function (a function-level import hides a circle, it does not
remove it). Modules are grouped as ARCHITECTURE.md groups them: ``planner.estimate.*`` is one group, and so on.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "planner"

# What each group may import from planner (ARCHITECTURE.md, "What may import what"). The CLI may import all.
BASE = {"planner", "planner.errors", "planner.units", "planner.specs"}
ALLOWED: dict[str, set[str]] = {
    "planner": set(),
    "planner.errors": set(),
    "planner.units": {"planner.errors"},
    "planner.specs": {"planner.errors", "planner.units", "planner.config_fields"},
    "planner.config_fields": {"planner.errors"},
    "planner.safe_write": BASE,
    "planner.modelled": BASE,
    "planner.catalog": BASE,
    "planner.family_config": BASE | {"planner.config_fields"},
    "planner.deepspeed_config": BASE,
    "planner.models": BASE | {"planner.catalog", "planner.config_fields", "planner.family_config"},
    "planner.from_config": BASE | {"planner.catalog", "planner.config_fields", "planner.models",
                                   "planner.deepspeed_config"},
    "planner.estimate": BASE | {"planner.catalog", "planner.config_fields", "planner.family_config", "planner.meta",
                                "planner.deepspeed_config"},
    "planner.meta": BASE | {"planner.estimate"},
    "planner.nvml": BASE | {"planner.catalog"},
    # every search: the fit limits, the GPU comparison, the recommender
    "planner.plan": BASE | {"planner.catalog", "planner.estimate"},
    "planner.emit": BASE | {"planner.catalog", "planner.estimate", "planner.safe_write", "planner.plan"},
    "planner.profile": BASE | {"planner.catalog", "planner.estimate", "planner.modelled", "planner.models",
                               "planner.nvml", "planner.safe_write"},
    "planner.compare": BASE | {"planner.estimate", "planner.profile"},
    "planner.report": BASE | {"planner.catalog", "planner.compare", "planner.estimate", "planner.plan", "planner.profile",
                              "planner.safe_write", "planner.modelled"},
    "planner.validate": BASE | {"planner.catalog", "planner.compare", "planner.estimate", "planner.models",
                                "planner.profile", "planner.safe_write", "planner.modelled"},
}
# Third-party packages a group may import (lazily or not). The estimator is pure: none of them.
HEAVY = {"torch", "transformers", "deepspeed", "peft", "bitsandbytes", "accelerate", "trl", "liger_kernel",
         "torchtune", "pandas", "plotly", "rich", "typer", "pynvml"}
THIRD_PARTY: dict[str, set[str]] = {
    "planner.meta": {"torch", "transformers"},  # the meta-device fallback for unknown architectures
    "planner.models": {"transformers"},  # hub configs not in the local cache
    "planner.from_config": set(),
    "planner.nvml": {"pynvml"},
    "planner.profile": {"torch", "transformers", "deepspeed", "peft", "bitsandbytes", "accelerate", "pandas",
                        "pynvml", "rich", "liger_kernel",  # liger_kernel: --loss fused-linear-ce on CUDA
                        "trl"},  # trl: --task dpo runs TRL's DPOTrainer (trl_dpo_script.py, its own process) and
    # --loss trl-fused-lm-head its add_fused_lm_head (loss_run.py)
    "planner.report": {"pandas", "plotly"},
    "planner.validate": {"rich"},
    "planner.cli": {"pandas", "rich", "typer"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod)
    return out


def _group(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def _graph():
    modules = _modules()
    return modules, {m: _imports(m, p, modules) for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_circle():
    modules, imports = _graph()
    graph = {m: {t for t in ts if t in modules and t != m and not m.startswith(t + ".")} for m, ts in imports.items()}
    assert _cycles(graph) == []


def test_only_the_allowed_arrows():
    modules, imports = _graph()
    bad = []
    for m, targets in imports.items():
        g = _group(m)
        if g in ("planner.cli", "planner.__main__"):
            continue
        allowed = ALLOWED.get(g)
        assert allowed is not None, f"{g} is not in ARCHITECTURE.md's table (add it there and here)"
        for t in targets:
            top = t.split(".")[0]
            if t.startswith("planner"):
                tg = _group(t) if t in modules or _group(t) in modules else t
                if tg != g and tg not in allowed:
                    bad.append(f"{m} -> {t}")
            elif top in HEAVY and top not in THIRD_PARTY.get(g, set()):
                bad.append(f"{m} -> {t}")
    assert not bad, "\n".join(sorted(bad))


def test_the_estimator_never_imports_torch_the_cli_or_the_shells():
    """The rule the rest rests on, stated alone: estimate is a pure core."""
    _, imports = _graph()
    for m, targets in imports.items():
        if _group(m) != "planner.estimate":
            continue
        for t in targets:
            assert t.split(".")[0] not in HEAVY, f"{m} imports {t}"
            assert _group(t) not in ("planner.cli", "planner.profile", "planner.report", "planner.validate"), \
                f"{m} imports {t}"
