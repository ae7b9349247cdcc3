"""`python -m pipeline <stage> [--experiment NAME] ...`: the entry points the Snakefile and dvc.yaml call.

Exit status: 0 done; 2 bad configuration or arguments (nothing computed); 3 a corrupt, foreign or missing
input file (named in the message); 1 anything else.
"""
from __future__ import annotations

import argparse
import sys

from .config import ROOT, ConfigError, load
from .errors import CorruptFile
from .progress import log_to


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)

    def stage(name, *args, help):
        s = sub.add_parser(name, help=help)
        s.add_argument("--experiment", default=None, help="experiment name (configs/<name>.yaml) or path; default: "
                                                       "params.yaml alone (the paper)")
        s.add_argument("--log", default=None, help="also write stderr (progress, errors) to this file")
        for a in args:
            kind = {"--seed": int, "--sparsity": float}.get(a, str)
            s.add_argument(a, required=True, type=kind)
        return s

    stage("validate", help="check params.yaml and the experiment, then exit")
    stage("prepare", "--dataset", "--out", help="one dataset into a checksummed train/val/test file")
    stage("train_dense", "--dataset", "--arch", "--seed", "--data", "--out", help="the dense network (teacher)")
    stage("prune", "--dataset", "--arch", "--seed", "--sparsity", "--dense", "--out",
          help="stage 1: the topology, global MBP")
    stage("retrain", "--dataset", "--arch", "--seed", "--sparsity", "--method", "--data", "--dense", "--snapshots",
          "--mask", "--out", help="stage 2: retrain the pruned network with a method")
    s = stage("spectral", "--data", "--model", "--out", help="band-limited accuracy and Fourier heat map")
    s.add_argument("--teacher", default=None, help="dense model to measure agreement with")
    s.add_argument("--mask", default=None, help="apply this mask first (the pruned topology, not retrained)")
    s.add_argument("--tag", action="append", default=[], help="KEY=VALUE for MLflow and the tables")
    stage("report", help="runs/<name>/report/: summary.csv, spectral.csv, README.md with tables, plots and claims")
    stage("publish", help="copy the finished report from runs/<name>/report/ to the committed results/<name>/")
    stage("export_dvc", help="print dvc.yaml derived from the Snakefile's jobs for this experiment; "
                                        "write the merged config its params read to dvc.params.yaml")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    log_to(args.log)
    try:
        cfg = load(args.experiment)                 # the whole config is checked before anything else
        kw = {k: v for k, v in vars(args).items() if k not in ("stage", "experiment", "log")}
        if args.stage == "validate":
            print(f"ok: experiment {cfg.name}")
            return 0
        if args.stage == "report":
            from .report import report
            report(cfg)
            return 0
        if args.stage == "publish":
            from .publish import publish
            print(f"published to {publish(cfg).relative_to(ROOT)}")
            return 0
        if args.stage == "export_dvc":
            from .dag import PARAMS_FILE, export_dvc, resolved_params
            (ROOT / PARAMS_FILE).write_text(resolved_params(args.experiment))
            sys.stdout.write(export_dvc(args.experiment))
            return 0
        from . import stages
        if args.stage == "spectral":
            tags = dict(t.split("=", 1) for t in kw.pop("tag"))
            stages.spectral(cfg, tags=tags, **kw)
        else:
            getattr(stages, args.stage)(cfg, **kw)
        return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except CorruptFile as e:
        print(f"input error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
