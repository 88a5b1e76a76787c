"""W&B as a dashboard would show it after `wandb sync`: offline runs of real jobs, read back with
wandb's own reader (`wandb leet inspect`), never by grepping its files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import FAST, PROJECT_ROOT, SMALL_DATA, src_run

pytestmark = pytest.mark.slow

WANDB = str(Path(sys.executable).parent / "wandb")


def leet_summary(run: Path) -> dict[str, Any]:
    """The run's state, exit code, name, tags, config and summary, as wandb reads its log."""
    out = subprocess.run(
        [WANDB, "leet", "inspect", "--summary", "--json", str(run)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def leet_records(run: Path, kind: str) -> list[dict[str, Any]]:
    """The run's records of one type (run, history, artifact, ...), as wandb reads its log."""
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [record for line in out.stdout.splitlines() if (record := json.loads(line)).get("type") == kind]


def offline_run(folder: Path) -> Path:
    (run,) = (folder / "wandb").glob("offline-run-*")
    return run


def keys(value: Any) -> set[str]:
    """Every key of a nested config."""
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in keys(item)}
    return set()


def test_a_run_holds_every_result_each_figure_the_scores_the_roc_and_its_checkpoints(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = src_run(
        "model=vae", "logger=wandb", "logger.wandb.log_model=true", "logger.wandb.score_rows=60",
        *[o for o in FAST if not o.startswith("logger")], *SMALL_DATA["lines"], f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    run = offline_run(run_dir)
    seen = leet_summary(run)
    assert (seen["state"], seen["exit_code"]) == ("finished", 0)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = seen["summary"]
    # Every result, strings and integers included; val/loss is its minimum over the epochs.
    assert set(metrics) <= set(summary)
    assert summary["test/lines/outcome"] == metrics["test/lines/outcome"] and summary["epochs"] == 1
    with (run_dir / "history.csv").open() as handle:
        val_losses = [float(row["val/loss"]) for row in csv.DictReader(handle) if row.get("val/loss")]
    assert summary["val/loss"] == {"min": pytest.approx(min(val_losses))}
    # test/* once in the history (Lightning's test stage), not again at the end.
    logged = [r["history"]["item"] for r in leet_records(run, "history")]
    assert sum("test/recon_mse" in items for items in logged) == 1
    # One key per figure; the ROC plot's table and the per-image score table, capped.
    figures = {path.stem for path in run_dir.glob("*.png")}
    assert {key.removeprefix("figures/") for key in summary if key.startswith("figures/")} == figures
    assert "ood/roc_table" in summary and "ood/scores" in summary
    (scores,) = (run / "files" / "media" / "table" / "ood").glob("scores_*.table.json")
    table = json.loads(scores.read_text())
    sets = {row[0] for row in table["data"]}
    assert sets == {"val", "test", "blob", "circle", "crossing", "noise", "scratch"}
    assert len(table["data"]) <= 60 and table["columns"][:3] == ["set", "label", "index"]
    # The config once, as the run's config: no build keys, no model hyperparameters at the root.
    config = seen["config"]
    assert "_target_" not in keys(config) and "offline" not in keys(config)
    assert "beta" not in config and config["model"]["beta"] == 1
    (header,) = leet_records(run, "run")
    assert header["run"]["job_type"] == "train" and "lines" in header["run"]["tags"]
    artifacts = leet_records(run, "artifact")
    assert any(a["artifact"]["type"] == "model" for a in artifacts)
    # src.eval of its checkpoint is a run of its own, of job type eval.
    evaluation = subprocess.run(
        [sys.executable, "-m", "src.eval", f"ckpt_path={run_dir}/checkpoints/last.ckpt",
         f"paths.output_root={tmp_path}", "figures=false"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    (eval_dir,) = (tmp_path / "runs").iterdir()
    (eval_header,) = leet_records(offline_run(eval_dir), "run")
    assert eval_header["run"]["job_type"] == "eval"


def test_batched_members_are_runs_with_their_training_curves(tmp_path: Path) -> None:
    process = src_run(
        "-m", "experiment=census_ca_2x2", "seed=0,1", "trainer.max_epochs=30", "logger=wandb",
        "hydra/launcher=batched", f"paths.output_root={tmp_path}",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "multiruns").iterdir()
    for job in ("0", "1"):
        run = offline_run(sweep_dir / job)
        history = [r["history"]["item"] for r in leet_records(run, "history")]
        losses = [items["train/loss"] for items in history if "train/loss" in items]
        with (sweep_dir / job / "history.csv").open() as handle:
            assert len(losses) == len(list(csv.DictReader(handle))) == 30
        state = leet_summary(run)
        assert (
            state["summary"]["test/outcome"]
            == json.loads((sweep_dir / job / "metrics.json").read_text())["test/outcome"]
        )
        # Each member's run is named by its own overrides (its seed), not by the chunk's first job's.
        assert f"seed={job}" in state["name"].split(), state["name"]


def test_each_job_of_a_sweep_is_its_own_run_grouped_by_setting_even_when_a_job_fails(tmp_path: Path) -> None:
    process = src_run(
        "-m", "data=lines2x2", "trainer.max_epochs=2", "logger=wandb", "figures=false",
        "model=ca,vae", "seed=0,1",
        "+callbacks.fail._target_=tests.fail_probe.FailOnSeed", "+callbacks.fail.seed=${seed}",
        "+callbacks.fail.fail_seed=1", f"paths.output_root={tmp_path}",
    )  # fmt: skip
    assert process.returncode == 1, process.stderr[-3000:]  # two jobs failed on purpose
    (sweep_dir,) = (tmp_path / "multiruns").iterdir()
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name))
    assert len(jobs) == 4
    runs = [offline_run(job) for job in jobs]  # every job has a run of its own, the one after a failure too
    seen = [leet_summary(run) for run in runs]
    headers = [leet_records(run, "run")[0]["run"] for run in runs]
    assert len({s["run_id"] for s in seen}) == 4 and len({s["name"] for s in seen}) == 4
    for job, state, header in zip(jobs, seen, headers, strict=True):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        failed = "seed=1" in overrides
        assert (state["state"], state["exit_code"] != 0) == ("failed" if failed else "finished", failed), job
        model = "vae" if "model=vae" in overrides else "ca"
        assert f"model={model}" in state["name"] and ("beta" in state["config"]["model"]) == (model == "vae")
        group = header["run_group"]
        assert group.startswith(sweep_dir.name) and f"model={model}" in group.split() and len(group) <= 128
        assert not any(word.startswith(("seed=", "paths.")) for word in group.split())
        if not failed:
            assert set(json.loads((job / "metrics.json").read_text())) <= set(state["summary"])
    assert len({header["run_group"] for header in headers}) == 2
    # The summary run, with its config, and every run of the sweep in one folder for leet and sync.
    summary_run = next(p for p in (sweep_dir / "wandb").glob("offline-run-*") if not p.is_symlink())
    assert leet_records(summary_run, "run")[0]["run"]["job_type"] == "summary"
    assert leet_summary(summary_run)["config"]["data"]["name"] == "lines2x2"
    assert {p.resolve() for p in (sweep_dir / "wandb").glob("offline-run-*")} == {
        p.resolve() for p in [*runs, summary_run]
    }
    sync = subprocess.run(
        f"{WANDB} sync --dry-run {sweep_dir}/wandb/offline-run-*",
        shell=True, capture_output=True, text=True, env={**os.environ, "WANDB_API_KEY": "x" * 40},
    )  # fmt: skip
    assert "Would sync 5 run(s)" in sync.stdout + sync.stderr


def test_wandb_disabled_writes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = subprocess.run(
        [sys.executable, "-m", "src.run", "data=lines2x2", "trainer.max_epochs=2", "logger=wandb",
         "figures=false", f"hydra.run.dir={run_dir}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "WANDB_MODE": "disabled"},
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file()
    assert not list(run_dir.rglob("*wandb*"))
