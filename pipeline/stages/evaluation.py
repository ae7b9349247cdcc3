"""The `spectral` stage: band-limited accuracy, agreement with the teacher and the Fourier heat map of one
model; with a mask, the pruned topology before any retraining against its random controls (the signature)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.config import layout
from pipeline.config.schema import Config
from pipeline.core import data as data_file, train
from pipeline.errors import ConfigError
from pipeline.evaluate import signature, spectral as spectral_eval
from pipeline.infra import io
from pipeline.infra.progress import note
from pipeline.infra.tracking import Run
from pipeline.stages.common import hardware, load_mask, load_model, sibling


def spectral(cfg: Config, data: str, model: str, out: str, teacher: str | None = None, mask: str | None = None,
             control_seed: int | None = None, tags: dict | None = None) -> None:
    """Band-limited accuracy, agreement with the teacher, Fourier heat map, for one model. With a mask: the
    pruned topology before any retraining, as is, after batch-norm recalibration, and against random masks
    with its per-layer counts and damage-matched to it (signature.py; the controls' seed is `control_seed`)."""
    if mask is not None and (control_seed is None or teacher is None):
        raise ConfigError("spectral --mask needs --control-seed (the random control mask's seed) and --teacher")
    rt = train.runtime(cfg)
    blob = data_file.load(Path(data))
    t = {k: "?" for k in ("dataset", "arch", "seed", "sparsity", "method")} | (tags or {})
    cell = f"{t['dataset']}/{t['arch']} seed{t['seed']} s{t['sparsity']} {t['method']}"
    io.clear_stale(out, sibling(out, Path(out).stem + "_heatmap.pt"))
    with Run(cfg, "spectral", {**(tags or {}), "data_sha256": blob["sha256"]}, cfg.section(*layout.sections("spectral"))) as run:
        dd = train.Data(blob, rt.device)
        same = {"classes": dd.classes, "width": cfg.model.width}
        net, made = load_model(model, rt, expect=same, exclude=cfg.prune.exclude)
        ref = load_model(teacher, rt, expect={**same, "arch": made["arch"]})[0] if teacher else None
        if mask is None:
            res = spectral_eval.evaluate(net, dd, rt, cfg.spectral, teacher=ref)
        else:                                         # the pruned topology before any retraining
            masks = load_mask(mask, net, expect={"arch": made["arch"], "dense_sha256": io.sha256(model)},
                              exclude=cfg.prune.exclude)
            res = signature.evaluate_topologies(net, masks, control_seed, dd, rt, cfg.spectral, ref)
        res.update({k: str(v) for k, v in (tags or {}).items()}, experiment=cfg.name, hardware=hardware())
        heat = res.pop("heatmap")
        note("spectral", cell, f"bands and heat map done in {res['heatmap_seconds']:.1f} s (heat map)")
        io.save({"kind": "heatmap", "heatmap": heat}, sibling(out, Path(out).stem + "_heatmap.pt"))
        io.write_json(out, res)
        run.log_metrics({f"{band}_acc_r{r}": a for band in ("low", "high") for r, a in
                         zip(res["radii"], res[f"{band}_acc"])})
        run.log_metrics({"heatmap_seconds": res["heatmap_seconds"]})
        run.log_artifact(out)
        from pipeline.report import figures            # matplotlib: only once the numbers are written
        with tempfile.TemporaryDirectory() as tmp:     # the UI shows images, not tensors
            png = Path(tmp) / f"{Path(out).stem}_spectrum.png"
            figures.model_spectrum(res, heat, f"{cfg.name}: {cell}", png)
            run.log_artifact(png, "figures")
