"""The claims page: each claim of the two reports, where it is, the verdict, the measured number with
its interval and sample size, and the command that produced it.

The claims, and how each is measured, are declared in a YAML file (docs/results/claims.yaml); every
number is computed here from sweep folders, and each verdict follows from the numbers by the rule
the claim declares (`expect`), so the page is rewritten, never edited. A claim entry:

    - report: "000"                 # which report
      where: "§4, footnote 6"       # where in it
      claim: "..."                  # what it says
      says: "..."                   # the report's own number, or why it has none
      measure: {kind: ..., ...}     # what is measured (below)
      expect: {above: 0.5}          # the rule: above / below / between / near (a point, or a band
                                    #   with tolerance) / `compare: <measure>`, `relation: greater|less`
                                    #   (judged by the interval of the difference, below)
      command: "..."                # optional: the command to show instead of the sweeps' own
      verdict: not testable         # instead of a rule: a fixed verdict (with `why`)
      why: "..."                    # the reason for the verdict, shown with it

Beside the claims, `exhibits` entries ({title, sweep, where, file}) show a file of the first
matching job (e.g. an optimal run's solution.md: report 000's tables read off its weights).

Measures, over the finished jobs of `sweep` (optionally only those whose metrics match `where`, a
mapping key -> value or list of values, match none of `where_not`, and whose overrides include
every one of `overrides`):
- `frequency`: the share of jobs whose `key` is one of `values` (or holds the text `contains`),
  with its 95% Wilson interval;
- `mean`: the mean of the numeric `key` over jobs (or of `key` minus `minus`, a paired difference
  within each job), with its 95% t interval;
- `pooled`: sum of `numerator` over sum of `denominator` (a key, or a number per job), e.g. inputs
  revived of inputs dead, with a 95% interval from resampling the jobs;
- `exact`: the number a function returns (`function`: a dotted path, `arguments`: its keywords);
- `value`: the numeric `key` of the first matching job (a single run's reading);
- `sample_quality`: over jobs, the mean of a measure of each model's prior samples (`key`:
  sharpness, gray, nn_cosine or digit_confidence; src/evaluation/sample_quality.py, as Table 1's
  page measures them);
- `table2_fit`: over jobs, the smallest largest difference from report 004's Table 2 that any
  threshold on `score` gives for the OOD set `set` (src/analysis/table2_fit.py); with
  `field: validation_percentile`, the percentile of validation scores that threshold sits at.

A `compare` rule ("A vs B") is judged by the 95% interval of the difference, measure minus
compared (src/analysis/comparison.py): of two frequencies, Newcombe's interval of the difference
of proportions; of two means over jobs (`mean`, `sample_quality`, `table2_fit`), the bootstrap
interval of the difference of means, paired by seed where both ran the same seeds. `greater` is
reproduced when the whole interval lies above 0, refuted when it lies below, partly otherwise.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

from src.analysis.comparison import RESAMPLES, difference_of_means, difference_of_proportions
from src.analysis.sweep import load_jobs
from src.analysis.table1 import measure_run
from src.analysis.table2_fit import fit_run
from src.errors import ConfigValueError, MissingFileError
from src.evaluation.intervals import numeric_summary, wilson_interval
from src.evaluation.sample_quality import train_digit_classifier
from src.pipeline.config import build
from src.pipeline.run import read_run

VERDICTS = ("reproduced", "refuted", "partly", "not testable", "measured")


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _matches(job: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """Whether a finished job is one `spec` selects (`where`, `where_not`, `overrides`)."""
    metrics = job["metrics"]
    if any(metrics.get(key) not in _listed(allowed) for key, allowed in spec.get("where", {}).items()):
        return False
    if any(metrics.get(key) in _listed(barred) for key, barred in spec.get("where_not", {}).items()):
        return False
    return all(override in job["overrides"] for override in spec.get("overrides", []))


@functools.cache
def _sample_measures(run_dir: Path) -> dict[str, float]:
    """Table 1's sample measures of one run (1000 prior samples, the digit classifier of its data)."""
    data = read_run(run_dir).config().data
    datamodule = build(data)
    classifier = _classifier(json.dumps(OmegaConf.to_container(data, resolve=True), sort_keys=True))
    row, _ = measure_run(run_dir, 1000, datamodule.images("test"), classifier)
    return {key: row[key] for key in ("sharpness", "gray", "nn_cosine", "digit_confidence")}


@functools.cache
def _classifier(data: str) -> torch.nn.Module:
    datamodule = build(OmegaConf.create(json.loads(data)))
    return train_digit_classifier(datamodule.images("train"), datamodule.labels("train"))


KINDS = ("exact", "frequency", "pooled", "mean", "value", "sample_quality", "table2_fit")


def _mean(values: list[float], seeds: list[Any]) -> dict[str, Any]:
    """The mean over jobs with its t interval; under "sample", the values and the jobs' seeds
    (for the interval of a difference)."""
    stats = numeric_summary(values)
    sample = {"values": values, "seeds": seeds}
    return {"value": stats["mean"], "interval": tuple(stats["ci95"]), "n": stats["n"], "sample": sample}


def pooled_ratio(tops: list[float], bottoms: list[float]) -> dict[str, Any]:
    """Sum of `tops` over sum of `bottoms`, with a 95% percentile interval from resampling the
    jobs (a job's trials, e.g. its four inputs, share its weights and are not independent)."""
    top, bottom = np.asarray(tops, dtype=float), np.asarray(bottoms, dtype=float)
    picks = np.random.default_rng(0).integers(0, len(top), (RESAMPLES, len(top)))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = top[picks].sum(1) / bottom[picks].sum(1)
    low, high = np.nanpercentile(ratios, [2.5, 97.5])
    return {"value": top.sum() / bottom.sum(), "interval": (float(low), float(high)), "n": len(top)}


# The one module whose functions an `exact` measure may call: a claims file is data, never code.
MEASUREMENT_MODULE = "src.evaluation.initial_state"


def exact_function(dotted: Any) -> Callable[..., Any]:
    """The public function of MEASUREMENT_MODULE that an `exact` measure's `function` names;
    anything else is refused before any module is imported."""
    module, _, name = str(dotted).rpartition(".")
    if module != MEASUREMENT_MODULE or name.startswith("_"):
        raise ConfigValueError(
            f"measure function {dotted!r} is not a function of {MEASUREMENT_MODULE}: an exact measure "
            "calls only that module's public functions, e.g. opposed_signs_probability."
        )
    function = getattr(importlib.import_module(module), name, None)
    if not inspect.isfunction(function) or function.__module__ != module:
        raise ConfigValueError(f"measure function {dotted!r}: {MEASUREMENT_MODULE} has no function {name!r}.")
    return function


def measure(spec: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """The measurement `spec` declares: value, interval (low, high) or None, and sample size."""
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigValueError(f"measure kind {kind!r} is not one of {list(KINDS)}")
    if kind == "exact":
        value = float(exact_function(spec.get("function"))(**spec.get("arguments", {})))
        return {"value": value, "interval": None, "n": "exact"}
    sweep = root / spec["sweep"]
    if not sweep.is_dir():
        raise MissingFileError(f"sweep folder {sweep} does not exist; run the claim's command first")
    jobs = [job for job in load_jobs(sweep) if job["metrics"] is not None and _matches(job, spec)]
    if not jobs:
        raise ConfigValueError(f"no finished job in {sweep} matches {dict(spec)}")
    metrics = [job["metrics"] for job in jobs]
    seeds = [m.get("seed") for m in metrics]
    if kind == "sample_quality":
        return _mean([_sample_measures(sweep / job["dir"])[spec["key"]] for job in jobs], seeds)
    if kind == "table2_fit":
        fits = [fit_run(sweep / job["dir"], spec["score"], spec["set"]) for job in jobs]
        return _mean([getattr(fit, spec.get("field", "deviation")) for fit in fits], seeds)
    if kind == "frequency":
        if "contains" in spec:  # every value holding this text, e.g. one reason among several
            hits = sum(spec["contains"] in str(m.get(spec["key"], "")) for m in metrics)
        else:
            hits = sum(m.get(spec["key"]) in _listed(spec["values"]) for m in metrics)
        return {
            "value": hits / len(metrics),
            "interval": wilson_interval(hits, len(metrics)),
            "n": len(metrics),
            "sample": {"hits": hits},
        }
    if kind == "pooled":
        per_job = spec["denominator"]  # a key, or a number of trials per job
        counted = isinstance(per_job, int | float)
        bottoms = [float(per_job) if counted else float(m[per_job]) for m in metrics]
        return pooled_ratio([float(m[spec["numerator"]]) for m in metrics], bottoms)
    # `minus`: the per-job difference of two keys (a paired comparison within each run).
    having = [m for m in metrics if spec["key"] in m and spec.get("minus", spec["key"]) in m]
    values = [float(m[spec["key"]]) - (float(m[spec["minus"]]) if "minus" in spec else 0.0) for m in having]
    if not values:
        raise ConfigValueError(f"no job in {sweep} has {spec['key']}")
    if kind == "mean":
        return _mean(values, [m.get("seed") for m in having])
    return {"value": values[0], "interval": None, "n": 1}


def _bounds(result: Mapping[str, Any]) -> tuple[float, float]:
    interval = result["interval"]
    return (result["value"], result["value"]) if interval is None else tuple(interval)


def difference(result: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """`result` minus `other` with the 95% interval of the difference (None where under two jobs
    on a side leave no spread to resample) and the method that gave it."""
    if "hits" in result.get("sample", {}) and "hits" in other.get("sample", {}):
        d = difference_of_proportions(
            other["sample"]["hits"], other["n"], result["sample"]["hits"], result["n"]
        )
        return {"value": d["value"], "interval": d["ci95"], "method": "Newcombe"}
    if "values" in result.get("sample", {}) and "values" in other.get("sample", {}):
        a, b = other["sample"], result["sample"]
        d = difference_of_means(a["values"], b["values"], a["seeds"], b["seeds"])
        method = "bootstrap, paired by seed" if d["paired"] else "bootstrap, unpaired"
        return {"value": d["value"], "interval": d["ci95"], "method": method}
    raise ConfigValueError(
        "a `compare` rule needs two frequencies or two means over jobs (kinds frequency, mean, "
        "sample_quality, table2_fit)"
    )


def verdict(expect: Mapping[str, Any], result: Mapping[str, Any], gap: Mapping[str, Any] | None) -> str:
    """The verdict a rule gives: `reproduced` when the whole interval satisfies it, `refuted` when
    none of it does, `partly` when it straddles the boundary. A `compare` rule is judged by the
    interval of the difference `gap` (`difference`): one without an interval is `partly`."""
    low, high = _bounds(result)
    if "compare" in expect:
        if gap["interval"] is None:
            return "partly"
        gap_low, gap_high = gap["interval"]
        greater = expect.get("relation", "greater") == "greater"
        if (gap_low > 0) if greater else (gap_high < 0):
            return "reproduced"
        if (gap_high < 0) if greater else (gap_low > 0):
            return "refuted"
        return "partly"
    if "near" in expect:
        # A point value (tolerance 0) holds when the interval contains it; a band, when the whole
        # interval lies inside it. Either is refuted by an interval wholly outside.
        target, tolerance = expect["near"], expect.get("tolerance", 0.0)
        if high < target - tolerance or low > target + tolerance:
            return "refuted"
        inside = tolerance == 0 or (low >= target - tolerance and high <= target + tolerance)
        return "reproduced" if inside else "partly"
    lower = expect.get("above", expect.get("between", [None, None])[0])
    upper = expect.get("below", expect.get("between", [None, None])[1])
    inside = (lower is None or low > lower) and (upper is None or high < upper)
    outside = (lower is not None and high < lower) or (upper is not None and low > upper)
    return "reproduced" if inside else "refuted" if outside else "partly"


def _number(value: float) -> str:
    """4 significant digits; rounding noise around 0 (e.g. a Wilson bound of 1e-19) shown as 0."""
    return f"{0.0 if abs(value) < 1e-12 else value:.4g}"


def _shown(result: Mapping[str, Any]) -> str:
    value, interval, n = result["value"], result["interval"], result["n"]
    text = _number(value)
    if interval is not None:
        text += f" [{_number(interval[0])}, {_number(interval[1])}]"
    return f"{text} (n = {n})"


def exhibits_markdown(spec_file: Path, root: Path, page: Path | None = None) -> str:
    """The file each `exhibits` entry of the spec names (e.g. an optimal run's solution.md), from
    the first job of its sweep that matches its `where`, each under its title with its run folder.
    A figure (.png) is copied beside the `page` as <page stem>_exhibit<k>.png and shown."""
    sections = []
    for exhibit in (yaml.safe_load(spec_file.read_text()) or {}).get("exhibits") or []:
        sweep = root / exhibit["sweep"]
        jobs = [job for job in load_jobs(sweep) if job["metrics"] is not None and _matches(job, exhibit)]
        if not jobs:
            raise ConfigValueError(
                f"{spec_file}: no finished job in {sweep} matches exhibit {exhibit['title']!r}"
            )
        folder = sweep / jobs[0]["dir"]
        shown = (folder / exhibit["file"]).relative_to(root) if folder.is_relative_to(root) else folder
        if exhibit["file"].endswith(".png"):
            if page is None:
                raise ConfigValueError(
                    f"{spec_file}: exhibit {exhibit['title']!r} is a figure; give the page"
                )
            copy = page.parent / f"{page.stem}_exhibit{len(sections)}.png"
            shutil.copyfile(folder / exhibit["file"], copy)
            sections.append(
                f"### {exhibit['title']}\n\nFrom `{shown}`:\n\n![{exhibit['title']}]({copy.name})\n"
            )
            continue
        body = (folder / exhibit["file"]).read_text().replace("\n# ", "\n#### ").replace("\n## ", "\n#### ")
        body = body.removeprefix("# ").split("\n", 1)[-1]  # the file's own title gives way to the exhibit's
        sections.append(f"### {exhibit['title']}\n\nFrom `{shown}`:\n{body}")
    return "\n".join(sections)


def evaluate_claims(spec_file: Path, root: Path) -> list[dict[str, Any]]:
    """Every claim of `spec_file` with its measured result(s) and verdict; sweep paths are
    relative to `root`."""
    claims = (yaml.safe_load(spec_file.read_text()) or {}).get("claims") or []
    rows = []
    for number, claim in enumerate(claims, start=1):
        expect = claim.get("expect") or {}
        try:
            result = measure(claim["measure"], root) if "measure" in claim else None
            other = measure(expect["compare"], root) if "compare" in expect else None
            gap = difference(result, other) if other is not None else None
        except (ConfigValueError, MissingFileError) as problem:
            raise type(problem)(f"{spec_file}, claim {number} ({claim.get('claim')!r}): {problem}") from None
        fixed = claim.get("verdict")
        if fixed is not None and fixed not in VERDICTS:
            raise ConfigValueError(
                f"claims: claim {number} has verdict {fixed!r}; use one of {list(VERDICTS)}"
            )
        if fixed is None:
            fixed = verdict(expect, result, gap) if expect and result is not None else "measured"
        rows.append(
            {**claim, "number": number, "result": result, "other": other, "difference": gap, "verdict": fixed}
        )
    return rows


def claims_markdown(rows: list[dict[str, Any]], commands: Mapping[str, str]) -> str:
    """The claims as one section per report: a table of the claims, then each one's command."""
    lines: list[str] = []
    for report in dict.fromkeys(row["report"] for row in rows):
        lines += [f"## Report {report}", ""]
        lines += ["| # | where | claim | the report | verdict | measured [95% interval] (n) | why |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for row in (r for r in rows if r["report"] == report):
            measured = "–" if row["result"] is None else _shown(row["result"])
            if row["other"] is not None:
                gap = row["difference"]
                measured += f" vs {_shown(row['other'])}; difference {_number(gap['value'])}"
                if gap["interval"] is not None:
                    measured += f" [{_number(gap['interval'][0])}, {_number(gap['interval'][1])}]"
                measured += f" ({gap['method']})"
            cells = [row["number"], row["where"], row["claim"], row.get("says", ""), f"**{row['verdict']}**"]
            cells += [measured, row.get("why", "")]
            lines.append(
                "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"
            )
        lines.append("")
        lines += ["Commands:", ""]
        for row in (r for r in rows if r["report"] == report):
            sweeps = [
                spec["sweep"]
                for spec in (row.get("measure"), (row.get("expect") or {}).get("compare"))
                if spec and "sweep" in spec
            ]
            shown = [row["command"]] if "command" in row else [commands[s] for s in dict.fromkeys(sweeps)]
            for command in shown or ["(exact: computed by the page's command)"]:
                lines.append(f"- {row['number']}: `{command}`")
        lines.append("")
    return "\n".join(lines)
