"""`python -m pipeline plan`: what an experiment's grid costs before it runs.

The jobs come from the Snakefile itself (the DAG Snakemake plans, as for dvc.yaml), so the plan never
disagrees with what runs. Each training job's images are its epochs times the training split; each spectral
job's images are the forward passes of its band evaluation and heat map. Device-hours divide those images by
the img/s MEASURED on a device for each (arch, kind of step): `benchmarks/gpu_check.py` writes that file
(`benchmarks/results/throughput-<device>.json`). Nothing here is typed in: without a measurement for an
(arch, step) the plan says so instead of guessing.

What is counted, and what is not: the training steps and the spectral forward passes, one job at a time on
one device (several jobs sharing a GPU raise the total throughput; see benchmarks/README.md). Start-up,
validation passes, checkpoints and data preparation are left out (seconds per job).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from pipeline.planning.budget import method_epochs, signature_images, spectral_images, split_sizes, total_epochs
from pipeline.config.schema import Config
from pipeline.config.layout import ROOT


def job_cost(cfg: Config, job: dict, sizes: dict) -> tuple[str, list[tuple[str, int]]]:
    """(row label, [(kind, images)]) of one planned job; kind is a step kind or "eval"."""
    w, rule = job["wildcards"], job["rule"]
    if "dataset" not in w:
        return rule, []
    train, test = sizes[w["dataset"]]
    if rule == "train_dense":
        return "dense", [("dense", cfg.train.epochs * train)]
    if rule in ("retrain", "chain"):
        levels = cfg.grid.sparsities if rule == "chain" else None
        return w["method"], [(k, e * train) for k, e in method_epochs(cfg, w["method"], levels)]
    if rule == "spectral_pruned":
        return "spectral", [("eval", signature_images(cfg, train, test))]
    if rule.startswith("spectral"):
        return "spectral", [("eval", spectral_images(cfg, test, teacher="--teacher" in job["cmd"]))]
    return rule, []


def load_throughput(path: Path) -> dict:
    """The measured img/s file that benchmarks/gpu_check.py writes."""
    t = json.loads(Path(path).read_text())
    if not isinstance(t, dict) or not isinstance(t.get("img_per_s"), dict):
        raise ValueError(f"{path}: not a throughput file (no img_per_s mapping)")
    return t


def mismatch(cfg: Config, throughput: dict | None) -> str | None:
    """Why a measurement cannot price this experiment: img/s at another width or batch size says nothing
    about this one's (a step's cost grows about with the square of the width)."""
    if not throughput:
        return None
    got = {"width": throughput.get("width"), "batch": throughput.get("batch")}
    want = {"width": cfg.model.width, "batch": cfg.train.batch_size}
    if any(got[k] is not None and got[k] != want[k] for k in got):
        return (f"measured at width {got['width']}, batch {got['batch']}; this experiment trains width "
                f"{want['width']}, batch {want['batch']}: measure with `python -m benchmarks.gpu_check "
                f"--experiment {cfg.name}`")
    return None


def estimate(cfg: Config, experiment: str | None, throughput: dict | None) -> dict:
    """{row label: jobs, epochs, images, seconds, missing} over every job the Snakefile plans."""
    from pipeline.planning.dag import snakemake_jobs  # imports snakemake: only here
    sizes = {ds: split_sizes(cfg, ds) for ds in cfg.grid.datasets}
    rates = (throughput or {}).get("img_per_s", {}) if not mismatch(cfg, throughput) else {}
    rows: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "epochs": 0, "images": 0, "seconds": 0.0,
                                                 "missing": set()})
    for job in snakemake_jobs(experiment):
        label, parts = job_cost(cfg, job, sizes)
        r = rows[label]
        r["jobs"] += 1
        if job["rule"] == "train_dense":
            r["epochs"] += cfg.train.epochs
        elif job["rule"] in ("retrain", "chain"):
            levels = cfg.grid.sparsities if job["rule"] == "chain" else None
            r["epochs"] += total_epochs(cfg, job["wildcards"]["method"], levels)
        for kind, images in parts:
            r["images"] += images
            rate = rates.get(job["wildcards"]["arch"], {}).get(kind)
            if rate:
                r["seconds"] += images / rate
            else:
                r["missing"].add(f"{job['wildcards']['arch']}/{kind}")
    return dict(rows)


def plan(cfg: Config, experiment: str | None, throughput: dict | None) -> str:
    rows = estimate(cfg, experiment, throughput)
    src = (f"measured on {throughput['device']} ({throughput.get('date', '?')}, batch "
           f"{throughput.get('batch', '?')}, width {throughput.get('width', '?')})") if throughput else \
        "no throughput file: run benchmarks/gpu_check.py on the device, then pass --throughput"
    lines = [f"experiment {cfg.name}: {sum(r['jobs'] for r in rows.values())} jobs; device-hours {src}", "",
             f"{'jobs of':<20}{'jobs':>7}{'epochs':>9}{'images (M)':>13}{'device-hours':>14}  note"]
    if throughput and throughput.get("errors"):     # the device check stopped early or fell back to eager
        lines[1:1] = ["", "the measurement reports errors: " + "; ".join(throughput["errors"])]
    if why := mismatch(cfg, throughput):
        lines[1:1] = ["", f"the measurement does not price this experiment: {why}"]
    measured, unmeasured = 0.0, []
    for label, r in sorted(rows.items(), key=lambda kv: -kv[1]["images"]):
        if not r["images"]:
            lines.append(f"{label:<20}{r['jobs']:>7}  (no training or evaluation)")
            continue
        hours = "unknown" if r["missing"] else f"{r['seconds'] / 3600:.3f}"
        note = ("no measurement for " + ", ".join(sorted(r["missing"]))) if r["missing"] else ""
        lines.append(f"{label:<20}{r['jobs']:>7}{r['epochs'] or '':>9}{r['images'] / 1e6:>13.3f}{hours:>14}  {note}")
        if r["missing"]:
            unmeasured.append(label)
        else:
            measured += r["seconds"]
    lines.append("")
    if not unmeasured:
        lines.append(f"total: {measured / 3600:.3f} device-hours, one job at a time")
        if str(throughput.get("device", "")).startswith("CPU"):
            n = throughput.get("threads") or 1     # the measurement's threads per job, as the DAG runs them
            lines.append(f"on this CPU at {n} thread(s) a job, `snakemake --cores C` runs C/{n} jobs at once: "
                         f"about {measured / 3600 * n:.3f} / C hours of wall time (start-up, validation and "
                         "data preparation not counted)")
    else:    # a sum that leaves rows out is not a total: say so, and what would complete it
        lines.append(f"total: unknown: no measurement for the rows {', '.join(unmeasured)}"
                     + (f" (the measured rows alone: {measured / 3600:.3f} device-hours)" if measured else "")
                     + "; measure them with `python -m benchmarks.gpu_check` on the device, then pass "
                     "--throughput benchmarks/results/throughput-<device>.json")
    return "\n".join(lines) + "\n"


def default_throughput() -> Path | None:
    """The newest measurement under benchmarks/results/, if any."""
    files = sorted((ROOT / "benchmarks" / "results").glob("throughput-*.json"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None
