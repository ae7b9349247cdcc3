"""`python -m pipeline <stage> [--experiment NAME] ...`: the entry points the Snakefile and dvc.yaml call.

Exit status: 0 done; 2 bad configuration or arguments, the tracking URI included (nothing computed); 3 a
corrupt, foreign, tampered or missing input file (named in the message); 4 another copy of the same job is
running (named in the message); 5 runtime.cuda_graphs: true and the captured CUDA step failed (with
`auto` the job continues with eager steps instead); 6 the disk is full (the file, the bytes it needs and the
bytes free are named; the temp file is removed, the last checkpoint kept); 7 the MLflow tracking server
stopped answering during the job (after at most about a minute of MLflow's retries; the job stopped at an
epoch boundary with its checkpoint kept: rerun once the server is back to resume); 1 anything else (a training loss that became NaN or
infinite among them: the message names the epoch and step, and no model is written).
"""
from __future__ import annotations

import argparse
import sys

from pipeline import preflight
from pipeline.config.layout import ROOT
from pipeline.config.loading import load
from pipeline.errors import Busy, ConfigError, CorruptFile, Diverged, GraphsFailed, NoSpace, TrackingDown
from pipeline.infra.progress import drop_log, log_to, open_log

# Each stage's home (imported only when it runs: `validate` and a config error never load torch).
STAGES = {"prepare": "pipeline.stages.prepare", "train_dense": "pipeline.stages.training",
          "prune": "pipeline.stages.prune", "retrain": "pipeline.stages.training", "chain": "pipeline.stages.training",
          "spectral": "pipeline.stages.evaluation"}

# Stages holding a job lock (io.exclusive): their --log opens once they hold it, so a refused copy (exit 4)
# writes nothing to the log of the copy that runs.
LOCKED = ("train_dense", "retrain", "chain")

# What the CLI answers, instead of a traceback, for each error a stage raises on purpose.
EXITS = {ConfigError: ("config error", 2), CorruptFile: ("input error", 3), Busy: ("busy", 4),
         Diverged: ("training diverged", 1), GraphsFailed: ("captured CUDA step failed", 5),
         NoSpace: ("disk full", 6), TrackingDown: ("tracking server down", 7)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)

    def stage(name, *args, help):
        s = sub.add_parser(name, help=help)
        s.add_argument("--experiment", default=None, help="experiment name (configs/<name>.yaml; a name, not a path); default: "
                                                       "params.yaml alone (the paper)")
        s.add_argument("--threads", type=int, default=None,
                       help="CPU threads of this job (the DAG passes its resources.threads); default: runtime.threads")
        s.add_argument("--log", default=None, help="also write stderr (progress, errors) to this file")
        for a in args:
            kind = {"--seed": int, "--sparsity": float}.get(a, str)
            s.add_argument(a, required=True, type=kind)
        return s

    stage("validate", help="check params.yaml and the experiment, then exit")
    stage("methods", help="the catalogue: every method, built in or added by the experiment's methods.extra, "
                          "with its family, role, budget, step and source")
    stage("prepare", "--dataset", "--out", help="one dataset into a checksummed train/val/test file")
    stage("train_dense", "--dataset", "--arch", "--seed", "--data", "--out", help="the dense network (teacher)")
    stage("prune", "--dataset", "--arch", "--seed", "--sparsity", "--dense", "--out",
          help="stage 1: the topology, global MBP")
    stage("retrain", "--dataset", "--arch", "--seed", "--sparsity", "--method", "--data", "--dense", "--snapshots",
          "--mask", "--out", help="stage 2: retrain the pruned network with a method")
    stage("chain", "--dataset", "--arch", "--seed", "--method", "--data", "--dense", "--snapshots", "--out-dir",
          help="stage 2 for imp, lth, lth_init: one iterative chain whose levels are the grid's sparsities")
    s = stage("spectral", "--data", "--model", "--out", help="band-limited accuracy and Fourier heat map")
    s.add_argument("--teacher", default=None, help="dense model to measure agreement with")
    s.add_argument("--mask", default=None, help="apply this mask first (the pruned topology, not retrained); "
                   "also evaluates it after batch-norm recalibration and a random control mask")
    s.add_argument("--control-seed", type=int, default=None, help="with --mask: the random control mask's seed")
    s.add_argument("--tag", action="append", default=[], help="KEY=VALUE for MLflow and the tables")
    s = stage("report", help="runs/<name>/report_build/ (the DAG's output): summary.csv, spectral.csv, README.md "
                             "with tables, plots and claims; then a copy into report.dir (default runs/<name>/report/)")
    s.add_argument("--from-build", action="store_true",
                   help="compute nothing: place the finished runs/<name>/report_build/ into report.dir (make pull)")
    stage("publish", help="copy the finished report from runs/<name>/report/ to the committed results/<name>/")
    stage("export_dvc", help="print dvc.yaml derived from the Snakefile's jobs for this experiment; "
                             "write the merged config its params read to dvc.params.yaml")
    stage("sync", help="replay the experiment's offline runs (runs/<name>/tracking/) into the MLflow store, once")
    stage("export_jobs", help="write runs/<name>/jobs.json, the DAG's jobs in order, for `drive` (needs Snakemake)")
    s = stage("drive", help="run runs/<name>/jobs.json's jobs that are not done, in order, without Snakemake")
    s.add_argument("--dry-run", action="store_true", help="list what would run")
    s.add_argument("--jobs", type=int, default=1, help="jobs at once (each gets its share of the cores)")
    s.add_argument("--until", type=float, default=None, help="seconds: then no job starts and the running ones "
                   "stop (they resume from their checkpoints); exit status 75")
    s = stage("plan", help="the grid's jobs, epochs per method and estimated device-hours from measured img/s")
    s.add_argument("--throughput", default=None, help="img/s file from benchmarks/gpu_check.py (default: the "
                                                      "newest benchmarks/results/throughput-*.json)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    log_to(args.log, defer=args.stage in LOCKED)
    busy = False
    try:
        cfg = load(args.experiment)                 # the whole config is checked before anything else
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads = {args.threads}: must be a positive integer")
        kw = {k: v for k, v in vars(args).items()
              if k not in ("stage", "experiment", "threads", "throughput", "log")}
        if args.stage == "validate":
            preflight.check(cfg, probe=True)        # report.dir and the tracking store, as every run checks them
            print(f"ok: experiment {cfg.name}")
            return 0
        if args.stage == "methods":
            from pipeline.config.catalog import catalogue_table
            sys.stdout.write(catalogue_table(cfg.grid.methods))
            return 0
        if args.stage == "publish":
            from pipeline.report.publish import publish
            print(f"published to {publish(cfg).relative_to(ROOT)}")
            return 0
        if args.stage == "export_dvc":
            from pipeline.planning.dag import PARAMS_FILE, export_dvc, resolved_params
            (ROOT / PARAMS_FILE).write_text(resolved_params(args.experiment))
            sys.stdout.write(export_dvc(args.experiment))
            return 0
        if args.stage == "export_jobs":
            from pipeline.stages.driver import export
            print(f"wrote {export(args.experiment, cfg.name)}")
            return 0
        if args.stage == "sync":
            from pipeline.infra.tracking import sync
            synced = sync(cfg)
            for name, run_id, added in synced:
                print(f"{name} -> run {run_id}: {added} item(s) added")
            print(f"synced {len(synced)} offline run(s) of {cfg.name}")
            return 0
        if args.stage == "plan":
            from pipeline.planning.plan import default_throughput, load_throughput, plan
            path = args.throughput or default_throughput()
            try:
                measured = load_throughput(path) if path else None
            except (OSError, ValueError) as e:
                raise CorruptFile(f"--throughput {path}: {e}") from None
            sys.stdout.write(plan(cfg, args.experiment, measured))
            return 0
        preflight.check(cfg, probe=True)            # before any compute: report.dir, and the store every job logs to
        if args.stage == "drive":
            from pipeline.stages.driver import drive
            return drive(cfg.name, dry_run=kw["dry_run"], jobs=kw["jobs"], until=kw["until"])
        if args.stage == "report":
            from pipeline.report.build import place_build, report
            place_build(cfg) if args.from_build else report(cfg)
            return 0
        import importlib

        from pipeline.core.train import set_threads
        set_threads(args.threads or cfg.runtime.threads)   # the job's share of the machine, from its scheduler
        if args.stage == "spectral":
            kw["tags"] = dict(t.split("=", 1) for t in kw.pop("tag"))
        getattr(importlib.import_module(STAGES[args.stage]), args.stage)(cfg, **kw)
        return 0
    except tuple(EXITS) as e:
        label, code = next(v for t, v in EXITS.items() if isinstance(e, t))
        busy = isinstance(e, Busy)
        print(f"{label}: {e}", file=sys.stderr)
        return code
    finally:
        drop_log() if busy else open_log()   # a job that ended before its lock (a config error...): its log now

if __name__ == "__main__":
    sys.exit(main())
