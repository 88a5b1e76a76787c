"""Results pages (docs/results/*.md) written from run folders, never typed by hand: each page names
the command that wrote it, its date and the commit of the code, then one section per source (its
own command, read from the folder) and, optionally, a person's notes appended verbatim."""

from __future__ import annotations

import datetime
import json
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from src.analysis.claims import claims_markdown, evaluate_claims, exhibits_markdown
from src.analysis.sweep import markdown as sweep_markdown
from src.analysis.sweep import write_summary
from src.analysis.table1 import write_table1
from src.errors import ConfigValueError, MissingFileError
from src.files import write_text_atomic
from src.pipeline.run import read_run
from src.reporting.tables import markdown_table

TITLES = {
    "census": "Sweep results: frequencies with 95% Wilson intervals, metrics over seeds",
    "ood": "OOD detection of single runs",
    "table1": "Report 004's Table 1",
    "bench": "Benchmarks",
    "claims": "Every claim of both reports, measured",
    "oodbench": "OOD benchmark: every score on every OOD set, over seeds",
}


def commit_of(folder: Path) -> str:
    """The short commit of the git checkout holding `folder`, with `+changes` when the tree differs
    from it; `unknown` outside git."""

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *arguments], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


# Hydra overrides that only say where the folder went, not how the runs were made.
PLACEMENT = ("hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode=")
# Task overrides that only say where outputs went.
LOCATION = ("paths.output_root=",)


# Paths in recorded commands are written relative to the repository (a page names no machine path).
REPOSITORY = f"{Path(__file__).resolve().parents[2]}/"


def run_command(folder: Path) -> str:
    """The `python -m src.run` (or `src.eval`) command line that made a run or sweep folder, from
    Hydra's record (where the folder was put left out, paths in the repository made relative)."""
    return _command(folder).replace(REPOSITORY, "")


def _command(folder: Path) -> str:
    multirun = folder / "multirun.yaml"
    if multirun.is_file():
        saved = yaml.safe_load(multirun.read_text())["hydra"]
        recorded = saved["overrides"]
        entry_point = f"src.{saved.get('job', {}).get('name', 'run')}"  # src.run or src.eval
        hydra = [item for item in recorded["hydra"] if not item.startswith(PLACEMENT)]
        task = [item for item in recorded["task"] if not item.startswith(LOCATION)]
        return shlex.join(["python", "-m", entry_point, "-m", *task, *hydra])
    overrides_file, hydra_file = folder / ".hydra" / "overrides.yaml", folder / ".hydra" / "hydra.yaml"
    if overrides_file.is_file():
        job = (
            yaml.safe_load(hydra_file.read_text())["hydra"]["job"]["name"] if hydra_file.is_file() else "run"
        )
        return shlex.join(["python", "-m", f"src.{job}", *(yaml.safe_load(overrides_file.read_text()) or [])])
    return "(not recorded: no .hydra/ in the folder)"


def _figure(source: Path, page: Path, name: str) -> str:
    """Copy a figure beside the page (as <page stem>_<name>) and link it."""
    target = page.parent / f"{page.stem}_{name}"
    shutil.copyfile(source, target)
    return f"![{name}]({target.name})"


def _demoted(markdown: str) -> str:
    """A page's body without its title line, every heading one level down."""
    return ("\n" + markdown.split("\n", 2)[2]).replace("\n#", "\n##")[1:]


def census_sections(folders: Sequence[Path], page: Path) -> list[str]:
    sections = []
    for index, folder in enumerate(folders):
        summary = write_summary(folder)
        body = _demoted(sweep_markdown(summary))
        if (table2 := folder / "table2.md").is_file():  # written beside the summary for OOD sweeps
            body += "\n" + _demoted(table2.read_text())
        figure = _figure(folder / "summary.png", page, f"{index}_summary.png")
        sections.append(f"## {folder.name}\n\n`{run_command(folder)}`\n\n{body}\n{figure}\n")
    return sections


def ood_sections(folders: Sequence[Path], page: Path) -> list[str]:
    sections = []
    for index, folder in enumerate(folders):
        metrics = read_run(folder).metrics or {}
        report = _demoted((folder / "ood.md").read_text())
        keys = ("epochs", "steps", "parameters", "train/time_s", "test/loss", "test/recon_mse")
        rows = [[key, f"{metrics[key]:.6g}" if isinstance(metrics[key], float) else metrics[key]]
                for key in keys if key in metrics]  # fmt: skip
        figures = [_figure(path, page, f"{index}_{path.name}") for path in sorted(folder.glob("ood_roc.png"))]
        sections.append(
            f"## {folder.parent.name}/{folder.name}\n\n`{run_command(folder)}`\n\n"
            + "\n".join(markdown_table(["run", "value"], rows))
            + f"\n\n{report}\n"
            + "".join(f"{figure}\n" for figure in figures)
        )
    return sections


def table1_sections(folders: Sequence[Path], page: Path) -> list[str]:
    table = write_table1(folders)
    figure = _figure(folders[0] / "table1_samples.png", page, "samples.png")
    commands = "\n".join(f"- `{run_command(folder)}`" for folder in folders)
    return [f"## Runs\n\n{commands}\n\n{table}\n{figure}\n"]


def bench_sections(files: Sequence[Path], page: Path) -> list[str]:
    sections = []
    for path in files:
        results = json.loads(path.read_text())
        lines = [f"## {path}", "", f"device: {results['device']}; repeats: {results['repeats']}", ""]
        for name, figures in results.items():
            if isinstance(figures, dict):
                rows = [[key, f"{value:.6g}"] for key, value in figures.items() if isinstance(value, float)]
                lines += [f"### {name}", "", *markdown_table(["figure", "value"], rows, "lr"), ""]
        sections.append("\n".join(lines))
    return sections


def _mean_interval(stats: dict | None) -> str:
    return "–" if stats is None else "{:.3f} [{:.3f}, {:.3f}]".format(stats["mean"], *stats["ci95"])


def oodbench_table(metrics: dict[str, dict], decision: str | None = None) -> list[str]:
    """One row per score: its AUROC on each OOD set (mean [95% t interval] over seeds) and its
    cost in seconds per 1000 images (mean over seeds), from a sweep summary's metrics; with the
    `decision` score's name, the F1 of the OOD class at its validation threshold on each set too."""
    # ood/<set>/auroc_<score>; not ood/<set>/auroc_by_class/<class>.
    found = [parts for key in metrics if len(parts := key.split("/")) == 3 and parts[2].startswith("auroc_")]
    sets = sorted({parts[1] for parts in found})
    scores = sorted({parts[2].removeprefix("auroc_") for parts in found})
    rows = []
    for score in scores:
        cells = [_mean_interval(metrics.get(f"ood/{ood_set}/auroc_{score}")) for ood_set in sets]
        cost = metrics.get(f"ood/time_per_1000_images/{score}")
        rows.append([score, *cells, "–" if cost is None else f"{cost['mean']:.3g}"])
    n = max((stats["n"] for key, stats in metrics.items() if "/auroc_" in key), default=0)
    header = ["score", *sets, "s / 1000 images"]
    lines = [
        f"seeds: {n}; AUROC mean [95% t interval] over seeds",
        "",
        *markdown_table(header, rows, "l" + "r" * (len(sets) + 1)),
    ]
    if decision is not None:
        f1 = [_mean_interval(metrics.get(f"ood/{ood_set}/f1_ood")) for ood_set in sets]
        lines += [
            "",
            f"The decision score `{decision}` at its threshold from validation images: F1 of the OOD class",
            "",
            *markdown_table(["score", *sets], [[decision, *f1]], "l" + "r" * len(sets)),
        ]
        # One table per class list: the other dataset's classes, and the training set's (shifts).
        classes: dict[str, list[str]] = {}
        for parts in (key.split("/") for key in metrics if "/auroc_by_class/" in key):
            classes.setdefault(parts[1], []).append(parts[3])
        for names in dict.fromkeys(tuple(listed) for listed in classes.values()):
            rows = [
                [name, *(_mean_interval(metrics[f"ood/{name}/auroc_by_class/{c}"]) for c in names)]
                for name in sorted(classes)
                if tuple(classes[name]) == names
            ]
            lines += [
                "",
                f"`{decision}`: AUROC of each class's OOD images (a shift keeps its source image's class)",
                "",
                *markdown_table(["set", *names], rows, "l" + "r" * len(names)),
            ]
    return lines


def oodbench_sections(folders: Sequence[Path], page: Path) -> list[str]:
    """Per sweep folder and setting: every score's AUROC on every OOD set, with its cost."""
    sections = []
    for folder in folders:
        summary = write_summary(folder)
        for name, group in summary["groups"].items():
            decision = next(iter(group["counts"].get("ood/score", {})), None)
            table = "\n".join(oodbench_table(group["metrics"], decision))
            sections.append(f"## {folder.name}: {name}\n\n`{run_command(folder)}`\n\n{table}\n")
    return sections


def claims_sections(files: Sequence[Path], page: Path) -> list[str]:
    """The claims declared in each spec file (src/analysis/claims.py), sweep paths relative to the
    working directory."""
    sections = []
    for spec in files:
        rows = evaluate_claims(spec, Path.cwd())
        sweeps = {
            measured["sweep"]
            for row in rows
            for measured in (row.get("measure"), (row.get("expect") or {}).get("compare"))
            if measured and "sweep" in measured
        }
        commands = {sweep: run_command(Path(sweep)) for sweep in sweeps}
        counts = {
            name: sum(row["verdict"] == name for row in rows)
            for name in dict.fromkeys(r["verdict"] for r in rows)
        }
        tally = ", ".join(f"{name} {count}" for name, count in counts.items())
        exhibits = exhibits_markdown(spec, Path.cwd(), page)
        sections.append(
            f"Claims: {len(rows)} ({tally}); declared in `{spec}`.\n\n{claims_markdown(rows, commands)}"
            + (f"\n## Readings from single runs\n\n{exhibits}\n" if exhibits else "")
        )
    return sections


SECTIONS: dict[str, Callable[[Sequence[Path], Path], list[str]]] = {
    "census": census_sections,
    "ood": ood_sections,
    "table1": table1_sections,
    "bench": bench_sections,
    "claims": claims_sections,
    "oodbench": oodbench_sections,
}


def write_page(
    kind: str, sources: Sequence[Path], output: Path, title: str | None = None, notes: Path | None = None
) -> str:
    """Write the results page `output` of `kind` from `sources` (sweep or run folders, or bench
    results files); returns its text."""
    if kind not in SECTIONS:
        raise ConfigValueError(f"unknown kind {kind!r}; choose from {list(SECTIONS)}")
    if missing := [str(source) for source in sources if not source.exists()]:
        raise MissingFileError(f"not found: {missing}")
    for source in [*sources, *([notes] if notes is not None else [])]:
        if output.resolve() == source.resolve():
            raise ConfigValueError(
                f"--output {output} is an input ({source}); give another file for the page."
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(
        ["python", "-m", "src.results", kind, *map(str, sources), "--output", str(output)]
        + (["--title", title] if title else [])
        + (["--notes", str(notes)] if notes else [])
    )
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# {title or TITLES[kind]}\n\n"
        f"> Written by `{command}` on {stamp} from commit {commit_of(output.parent)}; "
        "do not edit by hand: rerun the command.\n"
    )
    sections = SECTIONS[kind](sources, output)
    text = "\n".join([header, *sections])
    if notes is not None:
        text += "\n## Notes\n\n" + notes.read_text()
    write_text_atomic(output, text)
    return text
