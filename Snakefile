# Win the Lottery Ticket via Fourier Analysis (Shang et al., ICASSP 2022), as a DAG.
#
#   snakemake --cores all                                      the paper's grid (params.yaml)
#   snakemake --cores all --configfile configs/smoke.yaml     the whole DAG in minutes on a CPU
#   snakemake --profile profiles/slurm                         every job a SLURM job (README: Running on a cluster)
#
# Method: a dense network is trained (the teacher); magnitude-based pruning (MBP) of its weights gives the
# pruned topology (the mask); the pruned network is retrained, by the paper with knowledge distillation from
# the teacher on inputs whose low-pass radius grows from low to high frequencies (fourier_kd), and by the
# traditional MBP baselines at the same budget; every model is then evaluated band by band; a report
# states the paper's claims and our verdicts. Rules hold no logic: each calls `python -m pipeline <stage>`,
# and declares the threads and resources (memory, run time, GPUs) the config's resources section gives it.
# dvc.yaml is generated from this file (python -m pipeline export_dvc), so the DAG is defined only here.

configfile: "params.yaml"
report: "docs/report/workflow.rst"          # snakemake --report: the description on the report's first page

# Torch-free imports (a no-op rerun stays fast): the catalogue, the layout of runs/<name>/ and the config sections
# each job depends on, the checks every entry point runs, and each rule's threads and resources.
from pipeline import preflight
from pipeline.config import layout as L
from pipeline.config.catalog import CHAIN_METHODS, METHODS
from pipeline.planning import resources as R

# The whole config is checked before any job starts, as `python -m pipeline validate` checks it (the
# experiment's name, report.dir and the tracking store included), and must be what the jobs will load with
# --experiment. A refusal is one line naming the key, exit status 2.
CFG = preflight.snakefile(config, workflow.configfiles)
EXPERIMENT = CFG.name
RUNS = L.for_snakemake(EXPERIMENT)               # runs/<name>: every path below is config/layout.py's
# The report job's outputs: the only report files Snakemake may delete. The job copies them into report.dir
# (a folder a user may own, never an output here), by our manifest.
REPORT = L.report_build(EXPERIMENT)
G = CFG.grid
DATA = f"{RUNS}/{L.DATA}"
DENSE = f"{RUNS}/{L.DENSE}"
PRUNED = f"{RUNS}/{L.PRUNED}"
RETRAINED = f"{RUNS}/{L.RETRAINED}"
SPECTRAL = f"{RUNS}/{L.SPECTRAL}"
LOGS = f"{RUNS}/{L.LOGS}"
ONE_SHOT = "|".join(m for m in METHODS if m not in CHAIN_METHODS)   # retrained one job per sparsity


def section(kind, **which):
    """The config sections a kind of job depends on (config/layout.py): Snakemake reruns a job when they change."""
    return CFG.section(*L.sections(kind, **which))


ruleorder: spectral_pruned > spectral

wildcard_constraints:
    dataset="[A-Za-z0-9_]+", arch="[a-z0-9_]+", seed=r"\d+", sparsity=r"0\.\d+", method="[a-z][a-z0-9_]*"


rule all:
    input:
        f"{REPORT}/summary.csv",


rule teachers:
    """Target: the prepared data and the dense teachers only (`make pull-teachers` re-times what it pulled)."""
    input:
        expand(DATA, dataset=G.datasets),
        expand(DENSE + "/{f}", dataset=G.datasets, arch=G.archs, seed=G.seeds, f=("model.pt", "snapshots.pt",
                                                                                  "metrics.json")),


rule prepare:
    """One dataset into a checksummed train/val/test file (torchvision, imagefolder or synthetic)."""
    output:
        data=DATA,
        info=DATA + ".json",
    log:
        LOGS + "/prepare/{dataset}.log",
    params:
        cfg=lambda wc: section("prepare", dataset=wc.dataset),
    threads: R.threads(CFG, "prepare")
    resources:
        **R.rule_resources(CFG, "prepare"),
    shell:
        "python -m pipeline prepare --experiment {EXPERIMENT} --threads {threads}"
        " --dataset {wildcards.dataset} --out {output.data} --log {log}"


rule train_dense:
    """The dense network: the teacher, and the weights MBP reads."""
    input:
        data=rules.prepare.output.data,
    output:
        model=DENSE + "/model.pt",
        snapshots=DENSE + "/snapshots.pt",
        metrics=DENSE + "/metrics.json",
    log:
        LOGS + "/train_dense/{dataset}/{arch}/seed{seed}.log",
    params:
        cfg=section("dense"),
    threads: R.threads(CFG, "train_dense")
    resources:
        **R.rule_resources(CFG, "train_dense"),
    shell:
        "python -m pipeline train_dense --experiment {EXPERIMENT} --threads {threads}"
        " --dataset {wildcards.dataset} --arch {wildcards.arch}"
        " --seed {wildcards.seed} --data {input.data} --out {output.model} --log {log}"


rule prune:
    """Stage 1: the topology, by global magnitude pruning of the trained dense weights."""
    input:
        dense=rules.train_dense.output.model,
    output:
        mask=PRUNED + "/mask.pt",
        stats=PRUNED + "/mask.json",
    log:
        LOGS + "/prune/{dataset}/{arch}/seed{seed}/s{sparsity}.log",
    params:
        cfg=section("prune"),
    threads: R.threads(CFG, "prune")
    resources:
        **R.rule_resources(CFG, "prune"),
    shell:
        "python -m pipeline prune --experiment {EXPERIMENT} --threads {threads}"
        " --dataset {wildcards.dataset} --arch {wildcards.arch}"
        " --seed {wildcards.seed} --sparsity {wildcards.sparsity} --dense {input.dense} --out {output.mask}"
        " --log {log}"


rule retrain:
    """Stage 2: the pruned network retrained by one method (fourier_kd is the paper)."""
    input:
        data=rules.prepare.output.data,
        dense=rules.train_dense.output.model,
        snapshots=rules.train_dense.output.snapshots,
        mask=rules.prune.output.mask,
    output:
        model=RETRAINED + "/model.pt",
        metrics=RETRAINED + "/metrics.json",
    log:
        LOGS + "/retrain/{dataset}/{arch}/seed{seed}/s{sparsity}/{method}.log",
    wildcard_constraints:
        method=ONE_SHOT,
    params:
        cfg=lambda wc: section("retrain", method=wc.method),
    threads: R.threads(CFG, "retrain")
    resources:
        **R.rule_resources(CFG, "retrain"),
    shell:
        "python -m pipeline retrain --experiment {EXPERIMENT} --threads {threads}"
        " --dataset {wildcards.dataset} --arch {wildcards.arch}"
        " --seed {wildcards.seed} --sparsity {wildcards.sparsity} --method {wildcards.method}"
        " --data {input.data} --dense {input.dense} --snapshots {input.snapshots} --mask {input.mask}"
        " --out {output.model} --log {log}"


rule chain:
    """Stage 2 for the iterative methods (imp, lth, lth_init, lrr): ONE chain per dense network, whose levels are
    the grid's sparsities; each level's model is that (sparsity, method)'s retrained model."""
    input:
        data=rules.prepare.output.data,
        dense=rules.train_dense.output.model,
        snapshots=rules.train_dense.output.snapshots,
    output:
        models=expand(RETRAINED + "/model.pt", sparsity=G.sparsities, allow_missing=True),
        metrics=expand(RETRAINED + "/metrics.json", sparsity=G.sparsities, allow_missing=True),
    log:
        LOGS + "/chain/{dataset}/{arch}/seed{seed}/{method}.log",
    wildcard_constraints:
        method="|".join(CHAIN_METHODS),
    params:
        cfg=lambda wc: section("chain", method=wc.method),
        out_dir=lambda wc: f"{RUNS}/" + L.CHAIN.format(dataset=wc.dataset, arch=wc.arch, seed=wc.seed),
    threads: R.threads(CFG, "chain")
    resources:
        **R.rule_resources(CFG, "chain"),
    shell:
        "python -m pipeline chain --experiment {EXPERIMENT} --threads {threads}"
        " --dataset {wildcards.dataset} --arch {wildcards.arch} --seed {wildcards.seed} --method {wildcards.method}"
        " --data {input.data} --dense {input.dense} --snapshots {input.snapshots}"
        " --out-dir {params.out_dir} --log {log}"


rule spectral_dense:
    """Band-limited accuracy and Fourier heat map of the dense teacher."""
    input:
        data=rules.prepare.output.data,
        model=rules.train_dense.output.model,
    output:
        json=SPECTRAL + "/dense.json",
        heatmap=SPECTRAL + "/dense_heatmap.pt",
    log:
        LOGS + "/spectral/{dataset}/{arch}/seed{seed}/dense.log",
    params:
        cfg=section("spectral"),
    threads: R.threads(CFG, "spectral_dense")
    resources:
        **R.rule_resources(CFG, "spectral_dense"),
    shell:
        "python -m pipeline spectral --experiment {EXPERIMENT} --threads {threads}"
        " --data {input.data} --model {input.model}"
        " --out {output.json} --tag dataset={wildcards.dataset} --tag arch={wildcards.arch}"
        " --tag seed={wildcards.seed} --tag sparsity=0.0 --tag method=dense --log {log}"


rule spectral_pruned:
    """The spectral signature of pruning itself: the MBP topology before any retraining, as is and with
    batch-norm statistics recalibrated, against two random controls (same seed): MBP's per-layer counts, and
    the fraction of them whose full-band accuracy matches MBP's (damage-matched)."""
    input:
        data=rules.prepare.output.data,
        model=rules.train_dense.output.model,
        mask=rules.prune.output.mask,
    output:
        json=SPECTRAL + "/s{sparsity}/pruned.json",
        heatmap=SPECTRAL + "/s{sparsity}/pruned_heatmap.pt",
    log:
        LOGS + "/spectral/{dataset}/{arch}/seed{seed}/s{sparsity}/pruned.log",
    params:
        cfg=section("spectral"),
    threads: R.threads(CFG, "spectral_pruned")
    resources:
        **R.rule_resources(CFG, "spectral_pruned"),
    shell:
        "python -m pipeline spectral --experiment {EXPERIMENT} --threads {threads}"
        " --data {input.data} --model {input.model}"
        " --mask {input.mask} --control-seed {wildcards.seed} --teacher {input.model} --out {output.json}"
        " --tag dataset={wildcards.dataset}"
        " --tag arch={wildcards.arch} --tag seed={wildcards.seed} --tag sparsity={wildcards.sparsity}"
        " --tag method=pruned --log {log}"


rule spectral:
    """Band-limited accuracy, agreement with the teacher and Fourier heat map of a retrained network."""
    input:
        data=rules.prepare.output.data,
        model=rules.retrain.output.model,
        teacher=rules.train_dense.output.model,
    output:
        json=SPECTRAL + "/s{sparsity}/{method}.json",
        heatmap=SPECTRAL + "/s{sparsity}/{method}_heatmap.pt",
    log:
        LOGS + "/spectral/{dataset}/{arch}/seed{seed}/s{sparsity}/{method}.log",
    params:
        cfg=section("spectral"),
    threads: R.threads(CFG, "spectral")
    resources:
        **R.rule_resources(CFG, "spectral"),
    shell:
        "python -m pipeline spectral --experiment {EXPERIMENT} --threads {threads}"
        " --data {input.data} --model {input.model}"
        " --teacher {input.teacher} --out {output.json} --tag dataset={wildcards.dataset}"
        " --tag arch={wildcards.arch} --tag seed={wildcards.seed} --tag sparsity={wildcards.sparsity}"
        " --tag method={wildcards.method} --log {log}"


rule report:
    """summary.csv, spectral.csv, curves.csv and README.md with tables, plots and the claims' verdicts, built in
    runs/<name>/report_build/ with their manifest, then copied into report.dir (by default runs/<name>/report/)."""
    input:
        expand(DENSE + "/metrics.json", dataset=G.datasets, arch=G.archs, seed=G.seeds),
        expand(RETRAINED + "/metrics.json", dataset=G.datasets, arch=G.archs, seed=G.seeds,
               sparsity=G.sparsities, method=G.methods),
        expand(PRUNED + "/mask.json", dataset=G.datasets, arch=G.archs, seed=G.seeds, sparsity=G.sparsities),
        expand(SPECTRAL + "/dense.json", dataset=G.datasets, arch=G.archs, seed=G.seeds),
        expand(SPECTRAL + "/s{sparsity}/{method}.json", dataset=G.datasets, arch=G.archs, seed=G.seeds,
               sparsity=G.sparsities, method=list(G.methods) + ["pruned"]),
    output:
        summary=report(f"{REPORT}/summary.csv", caption="docs/report/summary.rst", category="Summary"),
        spectral=f"{REPORT}/spectral.csv",
        curves=f"{REPORT}/curves.csv",
        readme=report(f"{REPORT}/README.md", caption="docs/report/readme.rst", category="Report"),
        metrics=f"{REPORT}/metrics.json",
        plots=report(directory(f"{REPORT}/figures"), patterns=["{name}.png"], category="Figures",
                     caption="docs/report/figures.rst"),
        manifest=f"{REPORT}/.fourier-mbp-report.json",
    log:
        LOGS + "/report.log",
    params:
        cfg=section("report"),
    threads: R.threads(CFG, "report")
    resources:
        **R.rule_resources(CFG, "report"),
    shell:
        "python -m pipeline report --experiment {EXPERIMENT} --log {log}"
