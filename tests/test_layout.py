"""The package's layering, checked from the source: no import cycle between its modules (imports inside functions
included), no private name imported from another module, every inferer samples as MONAI's ``sample(input_noise,
network, ...)``, ``__all__`` complete, and the bundles' train.yaml holding only what is their own."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest

import monai_medgen
from monai_medgen.bundle.configs import base_config_path, train_config_files
from monai_medgen.inferers import ConditionalDiffusionInferer, LatentVDMInferer, VDMInferer

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "monai_medgen"
sys.path.insert(0, str(REPO / "scripts"))
from config_sharing import sharing  # noqa: E402


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path):
    """(module, names) of every ``monai_medgen`` import in the file, at any depth (functions included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("monai_medgen"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("monai_medgen"):
                    yield a.name, []


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for target, names in _imports(path):
            for t in [f"{target}.{n}" if f"{target}.{n}" in mods else owner(target) for n in names or [""]]:
                if t and t != mod:
                    edges[mod].add(t)
    return edges


def test_no_import_cycle_between_modules():
    edges = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state:
                found = visit(nxt, [*path, node])
                if found:
                    return found
        state[node] = 2
        return None

    for mod in sorted(edges):
        if mod not in state:
            cycle = visit(mod, [])
            assert cycle is None, " -> ".join(cycle)


def test_no_private_name_crosses_modules():
    offenders = []
    for mod, path in _modules().items():
        for target, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]  # dunders are public
            offenders += [f"{mod}: from {target} import {n}" for n in private if target != mod]
    assert offenders == []


def test_package_all_is_complete():
    for name in monai_medgen.__all__:
        assert hasattr(monai_medgen, name), name
    public = {n for n, v in vars(monai_medgen).items() if not n.startswith("_") and inspect.isclass(v)}
    assert public <= set(monai_medgen.__all__), public - set(monai_medgen.__all__)


@pytest.mark.parametrize("inferer", [VDMInferer, ConditionalDiffusionInferer, LatentVDMInferer])
def test_every_inferer_samples_as_monai(inferer):
    params = list(inspect.signature(inferer.sample).parameters)
    assert params[1:3] == ["input_noise", "network"], params
    assert len(params) - 1 <= 10, params  # options grouped (SamplingOptions)
    assert hasattr(inferer, "noise_shape")


def test_train_configs_share_their_wiring():
    bundles, total, repeated = sharing(REPO / "bundles", "train.yaml")
    assert bundles == len(list((REPO / "bundles").glob("*/configs/train.yaml"))) >= 9 and total > 0
    assert repeated / total < 0.25, f"{repeated} of {total} train.yaml lines repeated verbatim in every bundle"
    for folder in sorted((REPO / "bundles").iterdir()):
        files = train_config_files(folder)
        assert files[0] == base_config_path("train_base") and files[-1].endswith("train.yaml"), folder.name
    with pytest.raises(ValueError, match="not one of the shared configs"):
        base_config_path("no_such_base")
