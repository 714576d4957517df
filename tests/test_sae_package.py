"""The ``clipgen.analysis.sae`` package: every public name importable from it, resolved lazily (no torch for the
config)."""

from __future__ import annotations

import importlib
import subprocess
import sys


def test_every_public_name_resolves_from_its_submodule():
    import clipgen.analysis.sae as sae

    assert sorted(sae.__all__) == sorted(sae._WHERE) and len(set(sae.__all__)) == len(sae.__all__)
    for name in sae.__all__:
        module = importlib.import_module(f"clipgen.analysis.sae.{sae._WHERE[name]}")
        assert getattr(sae, name) is getattr(module, name), name
    assert set(sae.__all__) <= set(dir(sae))
    try:
        sae.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_the_config_imports_no_torch():
    probe = ("import sys; from clipgen.analysis.sae import SAETrainConfig, DEFAULT_BATCH_SIZE, ACTIVATIONS; "
             "import clipgen.cli.sae; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
