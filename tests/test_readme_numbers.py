"""Every figure in the README that a command of the suite produces is recomputed here by that command (in a
copy of the project, as a fresh clone runs it) and must be exactly the figure the README states: the smoke
DAG's job count (`snakemake -n`), the paper grid's jobs and images (`python -m pipeline plan`), the chains'
rounds (pipeline/planning/budget.py, which `plan` prices them with). A change to the grid, a rule or a recipe that moves
one fails here until the README says the new figure. Planning only: nothing trains (about 15 s).

Not checked: measured figures (times, and the job count a timing was measured on, which the README names as
such) and the counts of the tests' own tiny DAGs."""
from __future__ import annotations

import re
import subprocess

import pytest

from pipeline.planning.budget import chain_rounds, chain_targets, method_epochs, split_sizes
from pipeline.config.layout import ROOT
from pipeline.config.loading import load

from pipeline.config.catalog import CATALOG

from .conftest import copy_env, project_copy
from .test_slurm import TARGET as SLURM_TARGET


def readme() -> str:
    """The manual: the README and docs/*.md (a figure is stated once, wherever it lives)."""
    return "\n".join(f.read_text() for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def stated(pattern: str, text: str | None = None) -> tuple[str, ...]:
    """The groups of the README's one match of `pattern` (whitespace in it matches a line break too)."""
    text = readme() if text is None else text
    found = re.findall(pattern.replace(" ", r"\s+"), text)
    assert len(found) == 1, f"the README should state {pattern!r} exactly once; found {found}"
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def millions(images: int) -> str:
    """How the README writes a count of images: millions, rounded, with thousands separators."""
    return f"{round(images / 1e6):,}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return project_copy(tmp_path_factory.mktemp("readme_numbers") / "repo")


def run(cmd: list[str], repo) -> str:
    r = subprocess.run(cmd, cwd=repo, env=copy_env(repo), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout + r.stderr


def planned_jobs(repo, *args: str) -> int:
    """The `total` of `snakemake -n`'s job table in a fresh copy (no outputs yet: every job is planned). It
    counts the target rule `all` too, as Snakemake's progress line (`n of N steps done`) does."""
    out = run(["snakemake", "-n", "--cores", "1", *args], repo)
    total = set(re.findall(r"^total\s+(\d+)\s*$", out, re.M))     # the table is printed twice
    assert len(total) == 1, out[-3000:]
    return int(total.pop())


def plan_rows(repo, *args: str) -> tuple[int, dict[str, dict]]:
    """`python -m pipeline plan`'s total jobs and its rows: {label: {jobs, epochs, images}} (images exact to the
    thousand it prints, as M with 3 decimals)."""
    out = run(["python", "-m", "pipeline", "plan", *args], repo)
    total = int(re.search(r"^experiment \S+: (\d+) jobs;", out, re.M).group(1))
    rows = {}
    for m in re.finditer(r"^(\S+) +(\d+) +(?:(\d+) +)?(\d+)\.(\d{3}) ", out, re.M):
        label, jobs, epochs, whole, frac = m.groups()
        rows[label] = {"jobs": int(jobs), "epochs": int(epochs or 0), "images": int(whole + frac) * 1000}
    assert "spectral" in rows and "dense" in rows, out
    assert sum(r["jobs"] for r in rows.values()) <= total
    return total, rows


def test_smoke_job_count(repo):
    n = planned_jobs(repo, "--configfile", "configs/smoke.yaml")
    methods = len(load("smoke").grid.methods)
    assert stated(r"Snakemake's progress \(`n of (\d+) steps done`\)") == (str(n),)
    # The timings name the DAG they timed: today's.
    assert stated(r"The smoke DAG is (\d+) jobs") == (str(n),)
    assert stated(r"all (\d+) jobs of the smoke DAG in") == (str(n),)
    assert methods <= len(CATALOG) and stated(r"(\d+) methods and their budgets") == (str(len(CATALOG)),)


def test_slurm_dag_job_count(repo):
    n = planned_jobs(repo, SLURM_TARGET, "--configfile", "configs/smoke.yaml")
    assert stated(r"smallest smoke DAG that trains \((\d+) jobs\)") == (str(n),)


def test_paper_grid_plan_figures(repo):
    total, rows = plan_rows(repo)
    cfg = load(None)
    bullet = readme()[readme().index("**`python -m pipeline plan [--experiment NAME]`**"):]
    bullet = bullet[:bullet.index("\n- ")] if "\n- " in bullet else bullet[:bullet.index("\n\n")]

    chains = ("imp", "lth", "lth_init", "lrr")
    training = sum(r["images"] for label, r in rows.items() if label != "spectral")
    # each chain method run as one chain per grid sparsity instead (what `retrain --method imp` by hand runs)
    per_sparsity = 0
    for ds in cfg.grid.datasets:
        cells = len(cfg.grid.archs) * len(cfg.grid.seeds)
        per_sparsity += split_sizes(cfg, ds)[0] * cells * sum(
            e for m in chains for s in cfg.grid.sparsities for _, e in method_epochs(cfg, m, [s]))
    want = {
        "methods": str(len(cfg.grid.methods)),
        "rate": str(round(100 * cfg.imp.rate)),
        "jobs": f"{total:,}",
        "training": millions(training),
        "chains": millions(sum(rows[m]["images"] for m in chains)),
        **{m: millions(rows[m]["images"]) for m in chains},
        "per_sparsity": millions(per_sparsity),
        "spectral": millions(rows["spectral"]["images"]),
    }
    got = dict(zip(("methods", "rate"), stated(r"The paper's grid with (\d+) methods and the iterative methods "
                                                  r"at (\d+)% a round", bullet)))
    got.update(zip(("jobs", "training", "chains", "imp", "lth", "lth_init", "lrr", "per_sparsity", "spectral"),
                   stated(r"([\d,]+) jobs; training ([\d,]+) M images, of which the four iterative chains take "
                          r"([\d,]+) M \(imp ([\d,]+), lth ([\d,]+), lth_init ([\d,]+), lrr ([\d,]+); a chain per "
                          r"sparsity would take ([\d,]+) M\); spectral evaluation ([\d,]+) M forward images", bullet)))
    assert got == want, {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}


def test_chain_rounds():
    cfg = load(None)
    levels, rate = cfg.grid.sparsities, cfg.imp.rate
    assert cfg.lth.rate == cfg.lrr.rate == rate
    rounds = chain_rounds(levels, rate)
    alone = [len(chain_targets([s], rate)) for s in levels]
    n, after = stated(r"The paper's (?:\d+) sparsities at (?:\d+)%: (\d+) rounds \(levels after rounds ([\d, and]+);")
    assert (int(n), re.findall(r"\d+", after)) == (len(chain_targets(levels, rate)), [str(rounds[s]) for s in levels])
    assert stated(r"The paper's (\d+) sparsities at (\d+)%:") == (str(len(levels)), str(round(100 * rate)))
    terms, total = stated(r"against ([\d +]+?) = (\d+) for one chain per sparsity")
    assert (re.findall(r"\d+", terms), int(total)) == ([str(a) for a in alone], sum(alone))
