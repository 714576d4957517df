"""``clipgen circuits plot``: one (domain, class) circuit of a circuits file drawn as a PNG, its graph exported
(GraphML, DOT) beside it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clipgen.circuits.graphs import check_edge_k, circuit_graph, draw_circuit, export_graph, parse_export, to_networkx
from clipgen.circuits.similarity_compute import config_for_source, opened, read_circuit, resolve_domains, source_name
from clipgen.errors import ConfigFieldError


@dataclass
class PlotConfig:
    """``clipgen circuits plot CIRCUITS --domain D --class C``: ``out`` is the PNG (or a folder for it)."""

    circuits: Path
    domain: str
    class_name: str
    out: Path
    edge_k: int = 3
    export: list[str] = field(default_factory=lambda: ["graphml", "dot"])
    force: bool = False


def resolve_class(source, spec: str | int, field: str = "class_name") -> int:
    """A class of the source by label (digits) or name (case-insensitive, ``_`` or space)."""
    from clipgen.domainnet import class_by_name, normalise_class_name

    names = {int(k): str(v) for k, v in dict(source.classes).items()}
    text = str(spec).strip()
    if re.fullmatch(r"\d+", text):
        label = int(text)
        if label not in names:
            raise ConfigFieldError(field, f"class label {label} is not in {source_name(source)}")
        return label
    key = normalise_class_name(text)
    for label, name in names.items():
        if normalise_class_name(name) == key:
            return label
    dn = class_by_name(text, field)  # unknown DomainNet names: an error with suggestions
    if dn.label in names:
        return dn.label
    raise ConfigFieldError(field, f"class {dn.name!r} was not computed in {source_name(source)}")


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "class"


def plot_paths(cfg: PlotConfig, domain: str, name: str, formats: Sequence[str]) -> tuple[Path, list[Path]]:
    out = Path(cfg.out)
    png = out if out.suffix.lower() == ".png" else out / f"circuit_{domain}_{_file_stem(name)}.png"
    return png, [png.with_suffix(f".{f}") for f in formats]


def run_plot(cfg: PlotConfig) -> list[Path]:
    """``clipgen circuits plot``: draw one (domain, class) circuit and export its graph next to the PNG.

    ``cfg.out`` ending in ``.png`` is the PNG; anything else is a folder for ``circuit_<domain>_<class>.png``.
    Returns the PNG, the exported graphs (``.graphml``, ``.dot``) and the config (``<stem>.config.json``).
    """
    from clipgen.artifacts import config_path_for, ensure_writable_output, write_config

    edge_k = check_edge_k(cfg.edge_k)
    formats = parse_export(cfg.export)
    with opened(cfg.circuits) as src:
        domain = resolve_domains(src, cfg.domain, field="domain", minimum=1)
        if len(domain) != 1:
            raise ConfigFieldError("domain", f"names one domain, not {cfg.domain!r}")
        domain = domain[0]
        label = resolve_class(src, cfg.class_name)
        name = str(dict(src.classes)[label])
        complete = {(str(d), int(lab)) for d, lab in src.entries()}
        if (domain, label) not in complete:
            where = sorted(d for d, lab in complete if lab == label)
            raise ConfigFieldError("class_name", f"class {name!r} ({label}) has no complete circuit in {domain} in "
                                          f"{source_name(src)} (it has one in: {', '.join(where) or 'no domain'})")
        png, exports = plot_paths(cfg, domain, name, formats)
        for p in [png, *exports, config_path_for(png)]:
            ensure_writable_output(p, cfg.force)
        result = read_circuit(src, domain, label, [str(x) for x in src.layers])
        n_images = src.n_images(domain, label)
        prov = dict(getattr(src, "provenance", {}) or {})
        config = config_for_source(cfg, src)
    cg = circuit_graph(result, edge_k)
    model = prov.get("model") or prov.get("model_name")
    if isinstance(model, dict):
        model = model.get("name")
    epoch = prov.get("epoch")
    what = ", ".join(str(x) for x in (model, None if epoch is None else f"epoch {epoch}") if x)
    title = (f"{name} ({label}) in {domain}: {n_images} images, {cg.n_nodes} nodes, {cg.n_edges} edges "
             f"(top-{edge_k} upstream per node)" + (f"\n{what}" if what else ""))
    graph = to_networkx(cg, edge_k=edge_k, layers=" ".join(cg.layers), domain=domain, label=label,
                        class_name=name, n_images=int(n_images))
    written: list[Path] = []
    try:  # all or nothing: a failure removes what this call already wrote
        written.append(draw_circuit(result, png, edge_k=edge_k, title=title))
        for p in exports:
            written.append(export_graph(graph, p))
        written.append(write_config(png, "circuits plot", config))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written
