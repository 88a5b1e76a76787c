"""Hostile run folders, spec files and inputs (issue 29), through the entry points as a user runs
them: a folder's config.yaml or a claims file never runs code (class 1), nothing is written through
a planted link (class 2), booleans are booleans (class 3), no input hangs (class 9), and damaged
files are one line each. Each case checks the exit status, the one line, and that no file was
harmed."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from src.pipeline.config import compose_config
from src.pipeline.run import Run
from src.pipeline.training import train
from tests.helpers import FAST, entry_point, one_line_failure, python_m

pytestmark = pytest.mark.slow

KEEP = "a file another run wrote\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished CA run on the 2x2 images: the genuine checkpoint beside each crafted config."""
    run = tmp_path_factory.mktemp("genuine") / "run"
    train(Run(compose_config(["data=lines2x2", *FAST, "trainer.max_epochs=1"], run), run))
    return run


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A file that code run from a folder would truncate (open in write mode) or remove."""
    path = tmp_path / "canary.txt"
    path.write_text(KEEP)
    return path


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _crafted(run: Path, to: Path, key: str, node: object) -> Path:
    """A copy of `run` whose config.yaml has `node` at the dotted `key`, beside the genuine checkpoint."""
    folder = _copy(run, to)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    *parents, name = key.split(".")
    place = config
    for parent in parents:
        place = place.setdefault(parent, {})
    place[name] = node
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


class _Touches:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def _hostile_nodes(tmp_path: Path, canary: Path) -> dict[str, tuple[str, object]]:
    payload = tmp_path / "payload.pt"
    payload.write_bytes(pickle.dumps(_Touches(tmp_path / "unpickled")))
    return {
        "open_model": ("model", {"_target_": "builtins.open", "file": str(canary), "mode": "w"}),
        "torch_load_model": (
            "model",
            {"_target_": "torch.load", "f": str(payload), "weights_only": False},
        ),
        "nested_net": ("model.net", {"_target_": "builtins.open", "file": str(canary), "mode": "w"}),
        "copy_data": (
            "data",
            {"_target_": "shutil.copyfile", "src": str(payload), "dst": str(canary)},
        ),
        "evaluation": (
            "evaluations.evil",
            {"_target_": "builtins.open", "file": str(canary), "mode": "w"},
        ),
        "interpolated": ("model._target_", "${oc.env:HOME}"),
    }


def _no_code_ran(tmp_path: Path, canary: Path) -> None:
    assert canary.read_text() == KEEP
    assert not (tmp_path / "unpickled").exists()


CASES = ["open_model", "torch_load_model", "nested_net", "copy_data", "evaluation", "interpolated"]
KEYS = {
    "open_model": "model._target_='builtins.open'",
    "torch_load_model": "model._target_='torch.load'",
    "nested_net": "model.net._target_='builtins.open'",
    "copy_data": "data._target_='shutil.copyfile'",
    "evaluation": "evaluations.evil._target_='builtins.open'",
    "interpolated": "model._target_='${oc.env:HOME}'",
}


@pytest.mark.parametrize("case", CASES)
def test_score_builds_nothing_a_folder_names_outside_the_project(
    finished: Path, tmp_path: Path, canary: Path, case: str, capsys: pytest.CaptureFixture
) -> None:
    key, node = _hostile_nodes(tmp_path, canary)[case]
    folder = _crafted(finished, tmp_path / "crafted", key, node)
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((2, 2, 2), dtype=np.uint8))
    status, stderr = entry_point(
        "src.score",
        [
            f"ckpt_path={folder}/checkpoints/last.ckpt",
            f"input={images}",
            f"output={tmp_path / 'scores.csv'}",
        ],
        capsys,
    )
    line = one_line_failure(status, stderr, KEYS[case])
    assert "is not a class this project builds" in line and "config.yaml" in line
    _no_code_ran(tmp_path, canary)
    assert not (tmp_path / "scores.csv").exists()


def test_a_crafted_folder_runs_no_code_in_a_fresh_process(
    finished: Path, tmp_path: Path, canary: Path
) -> None:
    """The same as a user meets it: `python -m src.score` in its own process, and `src.eval`."""
    key, node = _hostile_nodes(tmp_path, canary)["torch_load_model"]
    folder = _crafted(finished, tmp_path / "crafted", key, node)
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((2, 2, 2), dtype=np.uint8))
    ckpt = f"ckpt_path={folder}/checkpoints/last.ckpt"
    for module, arguments in (
        ("src.score", [ckpt, f"input={images}", f"output={tmp_path / 'scores.csv'}"]),
        ("src.eval", [ckpt, f"hydra.run.dir={tmp_path / 'evaluated'}"]),
    ):
        result = python_m(module, *arguments)
        one_line_failure(result.returncode, result.stderr, KEYS["torch_load_model"])
    _no_code_ran(tmp_path, canary)


@pytest.mark.parametrize("case", ["open_model", "torch_load_model", "evaluation"])
def test_eval_builds_nothing_a_folder_names_outside_the_project(
    finished: Path, tmp_path: Path, canary: Path, case: str, capsys: pytest.CaptureFixture
) -> None:
    key, node = _hostile_nodes(tmp_path, canary)[case]
    folder = _crafted(finished, tmp_path / "crafted", key, node)
    status, stderr = entry_point(
        "src.eval",
        [f"ckpt_path={folder}/checkpoints/last.ckpt", f"hydra.run.dir={tmp_path / 'evaluated'}"],
        capsys,
    )
    one_line_failure(status, stderr, KEYS[case])
    _no_code_ran(tmp_path, canary)
    assert not (tmp_path / "evaluated" / "metrics.json").exists()


@pytest.mark.parametrize("case", ["open_model", "copy_data"])
def test_table1_builds_nothing_a_folder_names_outside_the_project(
    finished: Path, tmp_path: Path, canary: Path, case: str, capsys: pytest.CaptureFixture
) -> None:
    key, node = _hostile_nodes(tmp_path, canary)[case]
    _crafted(finished, tmp_path / "sweep" / "0", key, node)
    status, stderr = entry_point("src.table1", [str(tmp_path / "sweep"), "--samples", "4"], capsys)
    one_line_failure(status, stderr, KEYS[case])
    _no_code_ran(tmp_path, canary)
    assert not (tmp_path / "sweep" / "table1.md").exists()


@pytest.mark.parametrize(
    "function",
    ["shutil.rmtree", "src.pipeline.config.config_yaml", "src.evaluation.initial_state._private"],
)
def test_a_claims_file_calls_only_the_measurement_module(
    tmp_path: Path, function: str, capsys: pytest.CaptureFixture
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "kept.txt").write_text(KEEP)
    spec = tmp_path / "claims.yaml"
    claim = {
        "report": "000",
        "where": "§1",
        "claim": "crafted",
        "says": "-",
        "measure": {"kind": "exact", "function": function, "arguments": {"path": str(victim)}},
    }
    spec.write_text(yaml.safe_dump({"claims": [claim]}))
    output = tmp_path / "page.md"
    status, stderr = entry_point("src.results", ["claims", str(spec), "--output", str(output)], capsys)
    one_line_failure(status, stderr, f"measure function '{function}' is not a function of src.evaluation")
    assert (victim / "kept.txt").read_text() == KEEP and not output.exists()


def _sweep_of(finished: Path, tmp_path: Path) -> Path:
    """A sweep folder of one finished job, as src.summary reads it."""
    job = _copy(finished, tmp_path / "sweep" / "0")
    (job / ".hydra").mkdir(exist_ok=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    return job.parent


def test_summary_replaces_planted_links_and_leaves_their_targets(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = _sweep_of(finished, tmp_path)
    victims = {}
    for name in ("summary.md", "summary.json", "summary.png"):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text(KEEP)
        (sweep / name).symlink_to(victims[name])
    (sweep / "table2.md").symlink_to(tmp_path / "dangling-victim")
    status, stderr = entry_point("src.summary", [str(sweep)], capsys)
    assert status == 0, stderr[-3000:]
    for name, victim in victims.items():
        assert victim.read_text() == KEEP
        assert not (sweep / name).is_symlink() and (sweep / name).stat().st_size > 0
    assert not (tmp_path / "dangling-victim").exists()
    assert not [path for path in sweep.iterdir() if ".partial-" in path.name]


@pytest.mark.parametrize("damage", ["binary_metrics", "overrides", "config"])
def test_summary_names_a_damaged_file_in_one_line(
    finished: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture
) -> None:
    sweep = _sweep_of(finished, tmp_path)
    job = sweep / "0"
    if damage == "binary_metrics":
        (job / "metrics.json").write_bytes(os.urandom(64) + b"\xff\xfe")
    elif damage == "overrides":
        (job / ".hydra" / "overrides.yaml").write_text("- seed=0\n  [unclosed: {")
    else:
        (job / "config.yaml").write_bytes(b"\xff\xfe\x00binary")
    status, stderr = entry_point("src.summary", [str(sweep)], capsys)
    if damage == "binary_metrics":  # the job counts as failed, with the reason
        assert status == 0, stderr[-3000:]
        summary = yaml.safe_load((sweep / "summary.json").read_text())
        assert summary["n_failed"] == 1 and "metrics.json is corrupt" in summary["failed"]["0"]
    else:
        name = "overrides.yaml" if damage == "overrides" else "config.yaml"
        one_line_failure(status, stderr, name)


def _images(tmp_path: Path) -> Path:
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((3, 2, 2), dtype=np.uint8))
    return images


def _score(capsys: pytest.CaptureFixture, run: Path, *arguments: str) -> tuple[int, str]:
    return entry_point("src.score", [f"ckpt_path={run}/checkpoints/last.ckpt", *arguments], capsys)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("value", ["flase", "n", "2", "maybe"])
def test_score_refuses_a_boolean_that_is_not_one(
    finished: Path, tmp_path: Path, value: str, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "scores.csv"
    output.write_text(KEEP)
    status, stderr = _score(
        capsys, finished, f"input={_images(tmp_path)}", f"output={output}", f"overwrite={value}"
    )
    one_line_failure(status, stderr, f"src.score: overwrite={value} is not a boolean")
    assert output.read_text() == KEEP


def test_score_reads_yes_and_no_as_booleans(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "scores.csv"
    output.write_text(KEEP)
    status, stderr = _score(
        capsys, finished, f"input={_images(tmp_path)}", f"output={output}", "overwrite=no"
    )
    one_line_failure(status, stderr, "exists; give overwrite=true")
    assert output.read_text() == KEEP
    status, stderr = _score(
        capsys, finished, f"input={_images(tmp_path)}", f"output={output}", "overwrite=yes"
    )
    assert status == 0, stderr[-3000:]
    assert output.read_text().startswith("id,score,ood")


@pytest.mark.parametrize("argument", ["test=flase", "figures=nope", "ood.enabled=sometimes", "compile=2"])
def test_run_refuses_a_boolean_that_is_not_one(
    tmp_path: Path, argument: str, capsys: pytest.CaptureFixture
) -> None:
    status, stderr = entry_point(
        "src.run", ["data=lines2x2", *FAST, argument, f"hydra.run.dir={tmp_path / 'run'}"], capsys
    )
    key, value = argument.split("=")
    one_line_failure(status, stderr, f"{key}={value} is not a boolean")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_eval_refuses_a_boolean_that_is_not_one(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status, stderr = entry_point(
        "src.eval",
        [
            f"ckpt_path={finished}/checkpoints/last.ckpt",
            "figures=ja",
            f"hydra.run.dir={tmp_path / 'evaluated'}",
        ],
        capsys,
    )
    one_line_failure(status, stderr, "figures=ja is not a boolean")


def test_score_replaces_a_planted_link_not_its_target(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    victim, output = tmp_path / "victim.csv", tmp_path / "scores.csv"
    victim.write_text(KEEP)
    output.symlink_to(victim)
    status, stderr = _score(
        capsys, finished, f"input={_images(tmp_path)}", f"output={output}", "overwrite=true"
    )
    assert status == 0, stderr[-3000:]
    assert victim.read_text() == KEEP
    assert not output.is_symlink() and output.read_text().startswith("id,score,ood")


def test_score_does_not_create_a_dangling_links_target(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "scores.csv"
    output.symlink_to(tmp_path / "elsewhere.csv")
    status, stderr = _score(capsys, finished, f"input={_images(tmp_path)}", f"output={output}")
    assert status == 0, stderr[-3000:]
    assert not (tmp_path / "elsewhere.csv").exists() and not output.is_symlink()


def test_score_skips_a_fifo_in_an_input_folder(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(folder / "a.png")
    os.mkfifo(folder / "b.png")
    status, stderr = _score(capsys, finished, f"input={folder}", f"output={tmp_path / 'scores.csv'}")
    assert status == 0, stderr[-3000:]
    assert "skipped ['b.png']" in stderr
    assert (tmp_path / "scores.csv").read_text().splitlines()[1].startswith("a.png,")


def test_score_refuses_a_fifo_given_as_input(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fifo = tmp_path / "images.npy"
    os.mkfifo(fifo)
    status, stderr = _score(capsys, finished, f"input={fifo}", f"output={tmp_path / 'scores.csv'}")
    one_line_failure(status, stderr, "is not a regular file")


def test_score_refuses_a_huge_png_from_its_header(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    huge = tmp_path / "huge.png"
    Image.new("1", (30000, 30000)).save(huge)  # a few kB of file, 900 M pixels
    status, stderr = _score(capsys, finished, f"input={huge}", f"output={tmp_path / 'scores.csv'}")
    one_line_failure(status, stderr, "huge.png")
    assert not (tmp_path / "scores.csv").exists()


def test_score_refuses_a_png_of_another_size_before_decoding(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    large = tmp_path / "large.png"
    Image.new("L", (4000, 3000)).save(large)
    status, stderr = _score(capsys, finished, f"input={large}", f"output={tmp_path / 'scores.csv'}")
    one_line_failure(status, stderr, "large.png is 4000x3000 pixels; the model takes 2x2 images")


@pytest.mark.parametrize("damage", ["scores_csv", "config_yaml", "binary_metrics"])
def test_score_names_a_damaged_run_file_in_one_line(
    finished: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture
) -> None:
    folder = _copy(finished, tmp_path / "run")
    if damage == "scores_csv":
        (folder / "scores.csv").write_text("set,label,index,recon_bce\nval,0,0,0.5\nval,0\n")
        expected = "scores.csv is damaged at line 3"
    elif damage == "config_yaml":
        (folder / "config.yaml").write_text((folder / "config.yaml").read_text()[:60])
        expected = "config.yaml"
    else:
        (folder / "metrics.json").write_bytes(b"\x80\x81\x82binary")
        expected = "metrics.json is corrupt"
    status, stderr = _score(capsys, folder, f"input={_images(tmp_path)}", f"output={tmp_path / 'scores.csv'}")
    one_line_failure(status, stderr, expected)
    assert not (tmp_path / "scores.csv").exists()


@pytest.mark.parametrize("same", ["spec", "notes"])
def test_results_refuses_an_output_that_is_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture, same: str
) -> None:
    spec, notes = tmp_path / "claims.yaml", tmp_path / "notes.md"
    spec.write_text(yaml.safe_dump({"claims": []}))
    notes.write_text(KEEP)
    output = spec if same == "spec" else notes
    arguments = ["claims", str(spec), "--notes", str(notes), "--output", str(output)]
    status, stderr = entry_point("src.results", arguments, capsys)
    one_line_failure(status, stderr, f"--output {output} is an input")
    assert notes.read_text() == KEEP and yaml.safe_load(spec.read_text()) == {"claims": []}


def test_table1_without_finished_runs_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status, stderr = entry_point("src.table1", [str(tmp_path)], capsys)
    one_line_failure(status, stderr, "no finished runs (*/metrics.json)")


def test_an_unexpected_failure_is_one_line_naming_its_traceback_file(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = _sweep_of(finished, tmp_path)
    (sweep / "summary.json").mkdir()  # a folder where the summary goes: no user error foreseen
    status, stderr = entry_point("src.summary", [str(sweep)], capsys)
    line = one_line_failure(status, stderr, "src.summary: unexpected IsADirectoryError", expected=1)
    traceback_file = Path(line.rsplit("traceback in ", 1)[1].rstrip(")"))
    assert "Traceback" in traceback_file.read_text()
    traceback_file.unlink()
