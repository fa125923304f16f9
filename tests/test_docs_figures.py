"""The pictures the READMEs show: every image link resolves to a file of the repository, every bundle README shows
at least one picture, and ``scripts/readme_figures.py`` reads the committed training logs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
READMES = [REPO / "README.md", *sorted((REPO / "bundles").glob("*/docs/README.md"))]
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
sys.path.insert(0, str(REPO / "scripts"))
import readme_figures  # noqa: E402


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(REPO)))
def test_readme_images_exist_in_the_repository(readme):
    links = IMAGE.findall(readme.read_text())
    if readme.name == "README.md" and readme.parent.name == "docs":
        assert links, f"{readme.relative_to(REPO)} shows no picture"
    for link in links:
        assert not re.match(r"[a-z]+://", link), f"{link}: pictures are files of the repository, not URLs"
        target = (readme.parent / link).resolve()
        assert target.is_file(), f"{readme.relative_to(REPO)} shows {link}, which does not exist"
        assert REPO in target.parents, f"{link} points outside the repository"
        assert target.suffix in (".png", ".gif", ".jpg", ".svg")


def test_main_readme_has_a_gallery_with_samples_restorations_gif_and_curves():
    text = (REPO / "README.md").read_text()
    gallery = text[text.index("## Gallery") : text.index("## Bundles")]
    links = IMAGE.findall(gallery)
    assert any("restoration" in link for link in links) and any(link.endswith(".gif") for link in links)
    assert any("samples.png" in link for link in links) and any("training_curves" in link for link in links)
    assert "notebooks/restore_and_generate.ipynb" in gallery


def test_training_logs_parse_into_curves():
    for bundle in readme_figures.CURVE_BUNDLES:
        parsed = readme_figures.parse_log(REPO / "bundles" / bundle / "docs" / "train_log.txt")
        name, its, values = parsed["train"]
        assert name.startswith("train_") and len(its) == len(values) >= 5
        assert its == sorted(its), f"{bundle}: iterations must grow through resumed runs"
    vdm = readme_figures.parse_log(REPO / "bundles" / "vdm_brain_mri_2d" / "docs" / "train_log.txt")
    # 4000 iterations of train.yaml, then 2200 of train_augment.yaml started from them (init_from)
    assert vdm["val"][0] == "val_bpd" and vdm["val"][1] == list(range(400, 6001, 400))
    assert vdm["val"][2][9] == pytest.approx(2.0545, abs=1e-3)  # the README's held-out bits/dim at epoch 40
    assert vdm["val"][2][-1] == pytest.approx(1.9457, abs=1e-3)  # and after 2000 augmented iterations
    assert vdm["train"][1][-1] == 6200


def test_parse_log_continues_a_run_started_from_trained_weights(tmp_path):
    """A run started with init_from counts on from the weights' iterations, and so does a later resume of it."""
    log = tmp_path / "train_log.txt"
    lines = [f"t - INFO - Epoch: {e}/2, Iter: {i}/10 -- train_bpd: {e + i / 10}" for e in (1, 2) for i in (5, 10)]
    lines += ["t - INFO - Epoch[2] Metrics -- val_bpd: 3.0", "t - INFO - init_from: m.pt, iterations counted from 20"]
    lines += [f"t - INFO - Epoch: 1/3, Iter: {i}/10 -- train_bpd: 2.5" for i in (5, 10)]
    lines += ["t - INFO - Epoch[1] Metrics -- val_bpd: 2.5", "t - INFO - Epoch: 2/3, Iter: 10/10 -- train_bpd: 2.0"]
    lines += ["t - INFO - Epoch: 3/3, Iter: 10/10 -- train_bpd: 1.5"]  # a resumed invocation: no init_from line
    log.write_text("\n".join(lines) + "\n")
    parsed = readme_figures.parse_log(log)
    assert parsed["train"][1] == [5, 10, 15, 20, 25, 30, 40, 50]
    assert parsed["val"] == ("val_bpd", [20, 30], [3.0, 2.5])


def test_parse_log_rejects_a_log_without_training_lines(tmp_path):
    log = tmp_path / "train_log.txt"
    log.write_text("2026-01-01 - INFO - nothing here\n")
    with pytest.raises(ValueError, match="no training loss line"):
        readme_figures.parse_log(log)
