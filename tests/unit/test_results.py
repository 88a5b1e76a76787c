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


def test_claims_are_measured_from_sweep_folders_and_judged_by_their_rules(tmp_path: Path) -> None:
    """Four jobs, three optimal (one of them with a dead input revived): each measure's number,
    interval and verdict follow from those counts (3/4 optimal has the Wilson interval [0.30, 0.95],
    wholly above 0.2 and 0.1; 1 revived of 7 dead over 4 jobs, resampled by job, straddles the band
    0.2 +- 0.01; one gray run's x of 3
    lies inside the others' t interval around 1)."""
    from src.analysis.claims import evaluate_claims
    from src.evaluation.intervals import wilson_interval

    sweep = tmp_path / "outputs" / "sweep"
    rows = [("optimal", "0", 0), ("optimal", "1", 1), ("optimal", "2", 0), ("all_gray", "4", 0)]
    for seed, (outcome, dead, revived) in enumerate(rows):
        metrics = {
            "test/outcome": outcome,
            "init/dead_inputs": dead,
            "test/revived_inputs": revived,
            "x": seed,
        }
        _job(sweep / str(seed), [f"seed={seed}"], metrics)
    spec = tmp_path / "claims.yaml"
    frequency = {"kind": "frequency", "sweep": "outputs/sweep", "key": "test/outcome", "values": "optimal"}
    spec.write_text(
        yaml.safe_dump(
            {
                "claims": [
                    {
                        "report": "000",
                        "where": "§4",
                        "claim": "rare",
                        "measure": frequency,
                        "expect": {"below": 0.2},
                    },
                    {
                        "report": "000",
                        "where": "§4",
                        "claim": "common",
                        "measure": frequency,
                        "expect": {"above": 0.1},
                    },
                    {
                        "report": "000",
                        "where": "§4",
                        "claim": "revived",
                        "measure": {
                            "kind": "pooled",
                            "sweep": "outputs/sweep",
                            "numerator": "test/revived_inputs",
                            "denominator": "init/dead_inputs",
                        },
                        "expect": {"near": 0.2, "tolerance": 0.01},
                    },
                    {
                        "report": "000",
                        "where": "fn 7",
                        "claim": "exact",
                        "measure": {
                            "kind": "exact",
                            "function": "src.evaluation.initial_state.opposed_signs_probability",
                            "arguments": {"l1_width": 2, "l3_width": 2},
                        },
                        "expect": {"near": 0.125},
                    },
                    {
                        "report": "004",
                        "where": "T1",
                        "claim": "gray runs have more dead inputs",
                        "measure": {
                            "kind": "mean",
                            "sweep": "outputs/sweep",
                            "key": "x",
                            "where": {"test/outcome": "all_gray"},
                        },
                        "expect": {
                            "compare": {
                                "kind": "mean",
                                "sweep": "outputs/sweep",
                                "key": "x",
                                "where_not": {"test/outcome": "all_gray"},
                            },
                            "relation": "greater",
                        },
                    },
                ]
            }
        )
    )
    claims = evaluate_claims(spec, tmp_path)
    from src.analysis.claims import exhibits_markdown

    (sweep / "3" / "solution.md").write_text("# The solution\n\n## Output 1\n\nthresholds of seed 3\n")
    spec_text = yaml.safe_load(spec.read_text())
    spec_text["exhibits"] = [
        {
            "title": "A gray run",
            "sweep": "outputs/sweep",
            "where": {"test/outcome": "all_gray"},
            "file": "solution.md",
        }
    ]
    spec.write_text(yaml.safe_dump(spec_text))
    shown = exhibits_markdown(spec, tmp_path)
    from src.analysis.claims import measure

    paired = {"kind": "mean", "sweep": "outputs/sweep", "key": "x", "minus": "test/revived_inputs"}
    assert measure(paired, tmp_path)["value"] == pytest.approx((0 + 0 + 2 + 3) / 4)
    assert shown.startswith("### A gray run") and "outputs/sweep/3/solution.md" in shown
    assert "#### Output 1" in shown and "thresholds of seed 3" in shown
    assert claims[0]["result"]["value"] == 0.75 and claims[0]["result"]["interval"] == wilson_interval(3, 4)
    assert [claim["verdict"] for claim in claims] == [
        "refuted",
        "reproduced",
        "partly",
        "reproduced",
        "partly",
    ]
    assert claims[2]["result"]["value"] == pytest.approx(1 / 7) and claims[2]["result"]["n"] == 4
    assert claims[4]["result"]["value"] == 3 and claims[4]["other"]["value"] == 1


def test_a_comparison_claim_is_judged_by_the_interval_of_the_difference(tmp_path: Path) -> None:
    """Newcombe's example, 56/70 optimal against 48/80: the two Wilson intervals overlap
    ([0.692, 0.877] and [0.490, 0.700]), the difference's interval [0.0524, 0.3339] lies above 0,
    so "greater" is reproduced; means shifted by exactly 0.25 in every seed, paired, likewise."""
    from src.analysis.claims import claims_markdown, evaluate_claims

    sweep = tmp_path / "outputs" / "sweep"
    for model, optimal, runs in (("a", 48, 80), ("b", 56, 70)):
        for seed in range(runs):
            metrics = {"seed": seed, "test/outcome": "optimal" if seed < optimal else "other", "x": seed % 7}
            metrics["x"] += 0.25 if model == "b" else 0.0
            _job(sweep / f"{model}{seed}", [f"model={model}", f"seed={seed}"], metrics)
    frequency = {"kind": "frequency", "sweep": "outputs/sweep", "key": "test/outcome", "values": "optimal"}
    mean = {"kind": "mean", "sweep": "outputs/sweep", "key": "x"}
    claims = [
        {
            "measure": {**frequency, "overrides": ["model=b"]},
            "compare": {**frequency, "overrides": ["model=a"]},
        },
        {
            "measure": {**mean, "overrides": ["model=b"]},
            "compare": {**mean, "overrides": ["model=a"], "where": {"seed": list(range(70))}},
        },
    ]
    spec = tmp_path / "claims.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "claims": [
                    {
                        "report": "000",
                        "where": "§3",
                        "claim": "B beats A",
                        "measure": claim["measure"],
                        "expect": {"compare": claim["compare"], "relation": "greater"},
                    }
                    for claim in claims
                ]
            }
        )
    )
    rows = evaluate_claims(spec, tmp_path)
    proportions, means = rows[0], rows[1]
    assert proportions["result"]["interval"][0] < proportions["other"]["interval"][1]  # they overlap
    assert proportions["difference"]["value"] == pytest.approx(0.2)
    assert proportions["difference"]["interval"] == pytest.approx([0.0524, 0.3339], abs=5e-5)
    assert proportions["verdict"] == "reproduced"
    # A's seeds 0-69, as B's: paired, and every seed's difference is 0.25 (x = seed % 7, + 0.25 for b),
    # while the two t intervals overlap.
    assert means["result"]["interval"][0] < means["other"]["interval"][1]
    assert means["difference"]["method"] == "bootstrap, paired by seed"
    assert means["difference"]["interval"] == pytest.approx([0.25, 0.25]) and means["verdict"] == "reproduced"
    page = claims_markdown(rows, {"outputs/sweep": "python -m src.run -m ..."})
    assert "; difference 0.2 [0.05243, 0.3339] (Newcombe)" in page


def test_the_ood_benchmark_table_gives_each_score_on_each_set_with_its_cost() -> None:
    from src.analysis.results import oodbench_table

    metrics = {
        "ood/hflip/auroc_dose": {"mean": 0.91, "ci95": [0.9, 0.92], "n": 3},
        "ood/rot90/auroc_dose": {"mean": 0.97, "ci95": [0.96, 0.98], "n": 3},
        "ood/hflip/auroc_recon_mse": {"mean": 0.8, "ci95": [0.79, 0.81], "n": 3},
        "ood/time_per_1000_images/dose": {"mean": 1.25, "ci95": [1.2, 1.3], "n": 3},
        "ood/hflip/auroc": {"mean": 0.8, "ci95": [0.79, 0.81], "n": 3},
        "ood/hflip/f1_ood": {"mean": 0.5, "ci95": [0.4, 0.6], "n": 3},
        "ood/hflip/auroc_by_class/one": {"mean": 0.4, "ci95": [0.3, 0.5], "n": 3},
    }
    lines = oodbench_table(metrics)
    assert lines[0].startswith("seeds: 3")
    assert "| dose | 0.910 [0.900, 0.920] | 0.970 [0.960, 0.980] | 1.25 |" in lines
    assert "| recon_mse | 0.800 [0.790, 0.810] | – | – |" in lines
    assert not any("F1" in line or "by_class" in line for line in lines)
    with_decision = oodbench_table(metrics, "dose")
    assert with_decision[: len(lines)] == lines
    assert "| dose | 0.500 [0.400, 0.600] | – |" in with_decision
    assert "| hflip | 0.400 [0.300, 0.500] |" in with_decision


def test_a_recorded_path_in_the_repository_is_written_relative(tmp_path: Path) -> None:
    checkpoint = PROJECT_ROOT / "outputs" / "runs" / "a" / "checkpoints" / "last.ckpt"
    run = _job(tmp_path / "run", [f"ckpt_path={checkpoint}", f"data.root={tmp_path}"], {})
    command = run_command(run)
    assert "ckpt_path=outputs/runs/a/checkpoints/last.ckpt" in command
    assert str(PROJECT_ROOT) not in command and str(tmp_path) in command  # only the repository's
