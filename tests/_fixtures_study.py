"""A study folder in the real layout, built cheaply (in milliseconds) for the report and status tests.

Run directories with real manifests (``write_manifest``) and empty checkpoint files, ``results.json`` files of the
schema ``clipgen eval zero-shot`` writes (``fake_results`` plus the class and image counts), an activation store's
configuration and one CKA output; the SAE, embedding and circuit analyses are absent. The folder names deliberately
differ from the demo's.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests._fixtures_eval import fake_results

#: Last-epoch held-out accuracy (ood_acc) per (test domain, setup) and seed 0, 1; id_acc is 0.9 everywhere.
ACC = {
    ("sketch", "natural-only"): [0.10, 0.20],
    ("sketch", "cg-high"): [0.50, 0.60],
    ("sketch", "leave-out-domain"): [0.70, 0.90],
    ("clipart", "natural-only"): [0.30, 0.40],
    ("clipart", "cg-high"): [0.80, 0.85],
}
PLANNED_EPOCHS = 2
#: Classes, held-out and ID test images of the test domain in every results file.
N_CLASSES, N_OOD, N_ID = 8, 40, 80
#: Hand-made CKA: per layer, (pair, value); the highlight is quickdraw.
CKA = {"act1": {("real", "quickdraw"): 0.9, ("real", "sketch"): 0.9, ("quickdraw", "sketch"): 0.7},
       "resblock1": {("real", "quickdraw"): 0.2, ("real", "sketch"): 0.8, ("quickdraw", "sketch"): 0.4},
       "attnpool": {("real", "quickdraw"): 0.5, ("real", "sketch"): 0.6, ("quickdraw", "sketch"): 0.5}}


def _png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (200, 30, 30)).save(path, format="PNG")
    return path


def run_name(setup: str, td: str | None, seed: int) -> str:
    return f"exp-{setup}" + (f"-{td}" if td else "") + f"-seed{seed}"


def build_study(root: Path) -> Path:
    """The study under ``root`` (returned): ``grid/<run>``, ``h5/<store>.h5``, ``analysis/cka-q``."""
    from clipgen.analysis.cka import CKAConfig
    from clipgen.artifacts import write_config
    from clipgen.extraction import ExtractConfig
    from clipgen.runs import RunManifest, write_manifest

    runs: dict[tuple[str | None, str, int], Path] = {}
    for (td, setup), values in ACC.items():
        for seed, v in enumerate(values):
            mix_td = None if setup == "natural-only" else td
            run = root / "grid" / run_name(setup, mix_td, seed)
            mixture = {"setup": setup, "test_domain": mix_td, "domains": ["real", "sketch"], "pseudo": False,
                       "allow_pct": None, "aligned": False, "base": None}
            if (mix_td, setup, seed) not in runs:
                (run / "checkpoints").mkdir(parents=True, exist_ok=True)
                trained = PLANNED_EPOCHS if (setup, seed) != ("cg-high", 1) or td != "clipart" else 1
                for e in range(trained + 1):
                    (run / "checkpoints" / f"epoch_{e}.pt").write_bytes(b"")
                write_manifest(run, RunManifest(kind="clip", name=run.name, model="RN-tiny", model_config={},
                                                hyperparameters={"epochs": PLANNED_EPOCHS}, seed=seed,
                                                mixture=mixture, extra={"status": "complete"}))
                runs[(mix_td, setup, seed)] = run
            out = run / "eval" / "zero-shot" / td / "results.json"
            fake_results(out, setup=setup, test_domain=td, seed=seed, values=[0.05, v], name=run.name,
                         model="RN-tiny")
            doc = json.loads(out.read_text())
            doc["run"]["mixture"] = mixture
            for d in (td, "real"):
                doc["metrics"][d]["id_acc"] = [0.05, 0.9]
            doc["classes"] = {"count": N_CLASSES}
            doc["counts"] = {d: {"ood": N_OOD, "id": N_ID} for d in (td, "real")}
            out.write_text(json.dumps(doc))
    # one store (of the CG high-diversity sketch run, seed 0) and a CKA of it
    cg = runs[("sketch", "cg-high", 0)]
    store = root / "h5" / "cg-test.h5"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"")
    write_config(store, "extract", ExtractConfig(out=store, model_dir=cg))
    cka = root / "analysis" / "cka-q"
    cka.mkdir(parents=True)
    rows = [{"layer": lay, "domain_a": a, "domain_b": b, "subset": "all", "kernel": "linear",
             "estimator": "unbiased", "cka": v} for lay, pairs in CKA.items() for (a, b), v in pairs.items()]
    (cka / "cka.json").write_text(json.dumps({"format": "clipgen-cka", "layers": list(CKA), "results": rows}))
    _png(cka / "highlight_all_linear_unbiased.png")
    _png(cka / "pairs_all_linear_unbiased.png")
    write_config(cka, "cka", CKAConfig(store=store, out=cka, subsets=["all"], highlight="quickdraw"))
    return root
