"""dvc.yaml, derived from the Snakefile: the DAG is defined once (in the Snakefile).

Snakemake builds its job graph for an experiment; every job becomes one DVC stage with the same command, the
same inputs (deps) and outputs (outs), and the config keys its rule passes as `params` (so both tools rerun
exactly the same jobs when a parameter changes). The report's figures and metrics are declared as DVC plots
and metrics. `python -m pipeline export_dvc --experiment smoke > dvc.yaml` regenerates it; a test checks that the
committed dvc.yaml equals the export.
"""
from __future__ import annotations

import contextlib
import io as _io

import yaml

from .config import ROOT, lookup, merge, experiment_path, read_yaml


def snakemake_jobs(experiment: str | None) -> list[dict]:
    """Every job Snakemake plans for the experiment (forced: all of them), as plain dicts."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    p = experiment_path(experiment)
    configfiles = [p] if p is not None else []
    jobs = []
    with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(_io.StringIO()):
        with SnakemakeApi(OutputSettings()) as api:
            wf_api = api.workflow(resource_settings=ResourceSettings(cores=1),
                                  config_settings=ConfigSettings(configfiles=configfiles),
                                  snakefile=ROOT / "Snakefile", workdir=ROOT)
            wf_api.dag(DAGSettings(forceall=True))
            wf = wf_api._workflow            # no public API exposes the planned jobs (snakemake 9)
            wf._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
            wf._build_dag()
            for job in wf.dag.jobs:
                if not job.rule.shellcmd:          # the target rule `all` runs nothing
                    continue
                jobs.append({"rule": job.rule.name, "wildcards": dict(job.wildcards_dict),
                             "cmd": " ".join(job.shellcmd.split()), "deps": sorted(map(str, job.input)),
                             "outs": [str(o) for o in job.output],
                             "params": sorted(job.params.cfg.keys()) if hasattr(job.params, "cfg") else []})
    return sorted(jobs, key=lambda j: (j["rule"], j["outs"][0]))


def _stage_name(job: dict) -> str:
    """e.g. retrain-cifar10-resnet20-seed0-s0p9-fourier_kd (DVC allows no punctuation but - and _)."""
    w = job["wildcards"]
    parts = [job["rule"]] + [f"{'seed' if k == 'seed' else 's' if k == 'sparsity' else ''}{w[k]}".replace(".", "p")
                             for k in ("dataset", "arch", "seed", "sparsity", "method") if k in w]
    return "-".join(parts)


def _param_keys(sections: list[str], experiment: str | None) -> dict:
    """DVC params per file: a section's keys come from params.yaml, or from the experiment where it sets them."""
    base = read_yaml(ROOT / "params.yaml")
    p = experiment_path(experiment)
    over = read_yaml(p) if p is not None else {}
    merged = merge(base, over)
    by_file: dict[str, list[str]] = {}

    def leaves(d, prefix):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}.{k}") if isinstance(v, dict) and v else [f"{prefix}.{k}"]
    for sec in sections:
        value = lookup(merged, sec)
        for key in (leaves(value, sec) if isinstance(value, dict) else [sec]):
            parts = key.split(".")
            node = over
            for part in parts:
                node = node.get(part) if isinstance(node, dict) else None
            f = str(p.relative_to(ROOT)) if p is not None and node is not None else "params.yaml"
            by_file.setdefault(f, []).append(key)
    return by_file


def export_dvc(experiment: str | None) -> str:
    stages, jobs = {}, snakemake_jobs(experiment)
    for job in jobs:
        stage = {"cmd": job["cmd"], "deps": job["deps"] or None}
        params = _param_keys(job["params"], experiment)
        if params:
            stage["params"] = [{f: keys} for f, keys in sorted(params.items())]
        if job["rule"] == "report":
            # The report lives in git (results/ is committed): DVC tracks it without caching or git-ignoring
            # it, and its metrics.json is a DVC metric so that `dvc metrics show` reads it.
            metric = [o for o in job["outs"] if o.endswith("metrics.json")]
            stage["outs"] = [{o: {"cache": False}} for o in job["outs"] if o not in metric]
            stage["metrics"] = [{o: {"cache": False}} for o in metric]
        else:
            stage["outs"] = job["outs"]
        stages[_stage_name(job)] = {k: v for k, v in stage.items() if v is not None}
    figures = [o for j in jobs if j["rule"] == "report" for o in j["outs"] if o.endswith("figures")]
    doc = {"stages": stages}
    if figures:
        doc["plots"] = [f"{figures[0]}/"]            # `dvc plots show` renders the report's figures
    head = ("# GENERATED from the Snakefile by `python -m pipeline export_dvc --experiment "
            f"{experiment or 'paper'}` -- do not edit by hand.\n# tests/test_dag.py checks it matches the Snakefile.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=120)
