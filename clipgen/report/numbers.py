"""The report's numbers: formatting, the verdict rule, CKA layer means, the intermediate layers, means over seeds."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SETUP_LABELS = {"natural-only": "Natural-only", "cg-low": "CG low-diversity", "cg-high": "CG high-diversity",
                "leave-out-domain": "Leave-out-domain"}



def pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def std_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("nan")


def verdict(a: float, n_a: int, b: float, n_b: int) -> tuple[str, float]:
    """Does accuracy ``a`` exceed ``b``? ``holds`` when a - b > 2 standard errors of the difference,
    ``reversed`` when b - a > 2 SE, ``inconclusive`` otherwise (the rule the report states)."""
    se = math.sqrt(std_error(a, n_a) ** 2 + std_error(b, n_b) ** 2)
    d = a - b
    if se == 0 or math.isnan(se):
        return ("holds" if d > 0 else "reversed" if d < 0 else "inconclusive"), se
    if d > 2 * se:
        return "holds", se
    if d < -2 * se:
        return "reversed", se
    return "inconclusive", se




def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def cka_layer_means(cka: dict[str, Any], highlight: str, subset: str = "all", kernel: str = "linear",
                    estimator: str = "unbiased") -> dict[str, tuple[float, float]]:
    """Per layer: (mean CKA over the pairs with ``highlight``, mean over the other pairs)."""
    by_layer: dict[str, tuple[list[float], list[float]]] = {}
    for r in cka["results"]:
        if (r["subset"], r["kernel"], r["estimator"]) != (subset, kernel, estimator):
            continue
        h, o = by_layer.setdefault(r["layer"], ([], []))
        (h if highlight in (r["domain_a"], r["domain_b"]) else o).append(float(r["cka"]))
    return {layer: (_mean(h), _mean(o)) for layer, (h, o) in by_layer.items() if h and o}


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def intermediate(layers: Sequence[str]) -> list[str]:
    """The middle third of the layer list (the "intermediate layers" the paper's claim is about)."""
    n = len(layers)
    return list(layers[n // 3: max(n // 3 + 1, (2 * n) // 3)])




def _cell(values: Sequence[float | None]) -> str:
    """One seed: ``17.5%``; several: ``17.5 ± 2.3% (n=3)`` (sample std); missing values are left out."""
    from clipgen.evaluation.summary import mean_std

    mu, sd, n = mean_std([float("nan") if v is None else float(v) for v in values])
    if n == 0:
        return "n/a"
    if n == 1:
        return pct(mu)
    return f"{100 * mu:.1f} ± {100 * sd:.1f}% (n={n})"


def _mean_of(values: Sequence[float | None]) -> float | None:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(xs) / len(xs) if xs else None
