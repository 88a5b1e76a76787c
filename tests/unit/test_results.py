"""Results pages from run folders: the stamp, the command read from each folder, the sections."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from src.analysis.results import commit_of, run_command, write_page
from tests.helpers import PROJECT_ROOT


def _job(folder: Path, overrides: list[str], metrics: dict) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_census_page_from_a_sweep_folder(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for seed, outcome in enumerate(["optimal", "optimal", "one_merged_pair"]):
        metrics = {"seed": seed, "test/outcome": outcome, "test/loss": seed / 10}
        _job(sweep / str(seed), [f"seed={seed}"], metrics)
    (sweep / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "overrides": {
                        "task": ["experiment=census_ca_2x2", "seed=range(0,3)"],
                        "hydra": [
                            "hydra.mode=MULTIRUN",
                            "hydra/launcher=batched",
                            f"hydra.sweep.dir={sweep}",
                        ],
                    }
                }
            }
        )
    )
    page = tmp_path / "docs" / "census.md"
    notes = tmp_path / "notes.md"
    notes.write_text("Read by a person.\n")
    text = write_page("census", [sweep], page, notes=notes)
    assert page.read_text() == text
    assert re.search(r"Written by `python -m src.results census .*sweep --output .*census.md --notes", text)
    assert re.search(r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC from commit unknown", text)
    assert "`python -m src.run -m experiment=census_ca_2x2 'seed=range(0,3)' hydra/launcher=batched`" in text
    assert "\n### (base config)" in text and "\n#### test/outcome" in text  # one level down
    assert "| optimal | 2 | 0.667 |" in text and "| one_merged_pair | 1 | 0.333 |" in text
    assert "| test/loss | 0.1 |" in text  # the mean over the three jobs
    assert (page.parent / "census_0_summary.png").stat().st_size > 1000
    assert text.endswith("## Notes\n\nRead by a person.\n")


def test_ood_page_from_a_run_folder(tmp_path: Path) -> None:
    run = _job(tmp_path / "run", ["experiment=ood_mnist_vae"], {"epochs": 3, "test/loss": 101.25})
    (run / "ood.md").write_text("# OOD detection\n\nScore `neg_elbo`\n\n## AUROC\n\n| set | neg_elbo |\n")
    text = write_page("ood", [run], tmp_path / "ood.md", title="OOD presets")
    assert text.startswith("# OOD presets\n")
    assert "`python -m src.run experiment=ood_mnist_vae`" in text
    assert "| epochs | 3 |" in text and "| test/loss | 101.25 |" in text
    assert "Score `neg_elbo`" in text and "# OOD detection" not in text and "\n### AUROC\n" in text


def test_missing_sources_and_unknown_kinds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        write_page("ood", [tmp_path / "nope"], tmp_path / "page.md")
    with pytest.raises(ValueError, match="unknown kind 'tables'"):
        write_page("tables", [tmp_path], tmp_path / "page.md")


def test_commit_and_command_outside_git_and_hydra(tmp_path: Path) -> None:
    assert commit_of(tmp_path) == "unknown"
    assert re.fullmatch(r"[0-9a-f]{4,}(\+changes)?", commit_of(PROJECT_ROOT))
    assert run_command(tmp_path) == "(not recorded: no .hydra/ in the folder)"
