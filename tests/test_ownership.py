"""The orchestrator owns only what it may delete (issue 31). Snakemake removes a job's declared outputs before
the job starts and after it fails, and DVC does the same for a stage's outs, so none of them may be a file a
user can own or one that must survive a failed run: the report job's outputs are runs/<name>/report_build/
(with their manifest), and the job itself copies them into report.dir by our manifest (publish.place).

Fast tests check the rules in-process and through `python -m pipeline validate`; the slow ones run the real
Snakemake on a clone of the session's smoke run (tests/conftest.py: smoke) and check what survives."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.infra import io
from pipeline import preflight
from pipeline.report import publish as P
from pipeline.config.layout import ROOT, report_build
from pipeline.errors import ConfigError
from pipeline.config.loading import merge, read_yaml
from pipeline.planning.dag import snakemake_jobs

from .conftest import copy_env, make, project_copy, run_stage, shell, write_experiment

FRAMES = re.compile(r'File "[^"]+", line \d+')       # a Python stack frame, as a traceback prints it


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_folder(folder: Path) -> dict:
    (folder / "figures").mkdir(parents=True)
    (folder / "README.md").write_text("the user's")
    (folder / "figures" / "x.png").write_bytes(b"the user's plot")
    return _files(folder)


def _tracked_repo(tmp_path: Path) -> Path:
    """A git repository with one committed file in results/smoke/, as the project's committed report."""
    repo = tmp_path / "repo"
    (repo / "results" / "smoke").mkdir(parents=True)
    (repo / "results" / "smoke" / "README.md").write_text("committed")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "results"], check=True)
    return repo


# ------------------------------------------------------------------------------------------ fast: the rules


def test_no_orchestrator_output_lies_in_report_dir_or_outside_runs():
    """Every Snakemake job's and DVC stage's outputs are under runs/<name>/; the report's are its build, with
    its manifest (so that a pulled report can be placed and rewritten)."""
    jobs = snakemake_jobs("smoke")
    outs = [o for j in jobs for o in j["outs"]]
    assert outs and all(o.startswith("runs/smoke/") and not o.startswith("runs/smoke/report/") for o in outs), \
        [o for o in outs if not o.startswith("runs/smoke/") or o.startswith("runs/smoke/report/")]
    (report,) = [j for j in jobs if j["rule"] == "report"]
    assert f"{report_build('smoke')}/{P.OURS}" in report["outs"]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    dvc_outs = [o for s in stages.values() for o in s.get("outs", []) + s.get("metrics", [])]
    assert sorted(dvc_outs) == sorted(outs)


def test_place_copies_a_build_beside_the_users_files_and_refuses_a_foreign_folder(tmp_path):
    build, target = tmp_path / "build", tmp_path / "report"
    for name, text in {"README.md": "r1", "figures/a.png": "a1"}.items():
        io.write_text(build / name, text)
    io.write_json(build / P.OURS, {"files": ["README.md", "figures/a.png"]})
    P.place(build, target)
    (target / "figures" / "mine.png").write_text("the user's plot")
    io.write_text(build / "README.md", "r2")
    P.place(build, target)
    assert {k: v for k, v in _files(target).items() if k != P.OURS} == {
        "README.md": b"r2", "figures/a.png": b"a1", "figures/mine.png": b"the user's plot"}
    user = tmp_path / "user"
    before = _user_folder(user)
    with pytest.raises(ConfigError, match="refused, it is not empty"):
        P.place(build, user)
    assert _files(user) == before
    (build / P.OURS).unlink()
    with pytest.raises(io.CorruptFile, match="not a finished report build"):
        P.place(build, target)


def test_validate_refuses_a_symlinked_report_dir_onto_tracked_files(tmp_path, env):
    repo = _tracked_repo(tmp_path)
    (tmp_path / "link").symlink_to(repo)
    before = _files(repo / "results")
    experiment = write_experiment(tmp_path, name="t", report={"dir": str(tmp_path / "link/results/smoke")})
    r = run_stage("validate", "--experiment", experiment, env=env)
    assert r.returncode == 2, r.stderr
    assert (f"report.dir = '{tmp_path / 'link/results/smoke'}' (that is {repo / 'results/smoke'}): refused, it "
            "holds git-tracked files (README.md)") in r.stderr, r.stderr
    assert _files(repo / "results") == before


@pytest.mark.parametrize("store", ["/proc/mlruns.db", "{tmp}/no/such/folder/mlruns.db", "{tmp}/lockdir/mlruns.db"])
def test_validate_refuses_a_tracking_store_that_cannot_be_written(store, tmp_path, env):
    """/proc: the store's folder is read-only; a missing folder; a lock path that is a folder (no lock file
    can be opened there, even as root)."""
    (tmp_path / "lockdir" / "mlruns.db.lock").mkdir(parents=True)
    uri = "sqlite:///" + store.format(tmp=tmp_path)
    experiment = write_experiment(tmp_path, name="t")
    r = run_stage("validate", "--experiment", experiment, env={**env, "MLFLOW_TRACKING_URI": uri})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"config error: MLFLOW_TRACKING_URI = {uri!r}: "), r.stderr


def test_the_snakefile_refusal_is_one_line_and_exit_2(tmp_path, capsys):
    raw = merge(read_yaml(ROOT / "params.yaml"), read_yaml(write_experiment(tmp_path, name="t", train={"epochs": -1})))
    with pytest.raises(SystemExit) as e:
        preflight.snakefile(raw, [])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("config error: train.epochs = -1") and err.count("\n") == 1, err


# ------------------------------------------------------------------------- slow: under the real Snakemake


def _snakemake(repo: Path, env: dict, *args: str):
    return shell("snakemake --cores 1 --configfile configs/smoke.yaml " + " ".join(args), repo, env)


def _set_report_dir(repo: Path, where) -> None:
    p = repo / "configs" / "smoke.yaml"
    raw = yaml.safe_load(p.read_text())
    raw.setdefault("report", {})["dir"] = str(where)
    p.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.slow
@pytest.mark.parametrize("extra", [False, True], ids=["user-files", "user-files-and-staged-keep"])
def test_snakemake_keeps_the_users_files_in_report_dir(extra, smoke, tmp_path):
    s = smoke.clone(tmp_path / "repo")
    user = tmp_path / "u"
    _user_folder(user)
    if extra:
        (user / ".staged-keep").mkdir()
        (user / ".staged-keep" / "f").write_text("the user's")
    before = _files(user)
    _set_report_dir(s.repo, user)
    for args in (("-n",), ()):
        r = _snakemake(s.repo, s.env, *args)
        assert r.returncode == 2, (args, r.stdout[-2000:], r.stderr[-2000:])
        assert f"config error: report.dir = '{user}': refused, it is not empty" in r.stderr, r.stderr
        assert not FRAMES.search(r.stderr), r.stderr
        assert _files(user) == before


@pytest.mark.slow
def test_a_failing_report_under_snakemake_keeps_the_previous_one(smoke, tmp_path):
    s = smoke.clone(tmp_path / "repo")
    report = s.repo / "runs/smoke/report"
    before = _files(report)
    assert "README.md" in before and "summary.csv" in before
    metrics = next((s.repo / "runs/smoke/retrain").rglob("finetune/metrics.json"))
    metrics.write_text(metrics.read_text().replace('"test_acc": 0.', '"test_acc": 1.'))   # digest mismatch
    r = _snakemake(s.repo, s.env, "--forcerun report")
    assert r.returncode == 1 and str(metrics.relative_to(s.repo)) in r.stdout + r.stderr, r.stderr[-3000:]
    assert _files(report) == before


@pytest.mark.slow
def test_a_users_plot_in_figures_survives_a_forced_report(smoke, tmp_path):
    s = smoke.clone(tmp_path / "repo")
    figures = s.repo / "runs/smoke/report/figures"
    (figures / "mine.png").write_bytes(b"the user's plot")
    readme = (s.repo / "runs/smoke/report/README.md").stat().st_mtime_ns
    r = _snakemake(s.repo, s.env, "--forcerun report")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (figures / "mine.png").read_bytes() == b"the user's plot"
    assert (s.repo / "runs/smoke/report/README.md").stat().st_mtime_ns != readme        # the report was rewritten


@pytest.mark.slow
def test_snakemake_refuses_a_symlinked_report_dir_onto_tracked_files(smoke, tmp_path):
    s = smoke.clone(tmp_path / "repo")
    repo = _tracked_repo(tmp_path)
    (tmp_path / "link").symlink_to(repo)
    before = _files(repo / "results")
    _set_report_dir(s.repo, tmp_path / "link/results/smoke")
    for args in (("-n",), ("--forcerun report",)):
        r = _snakemake(s.repo, s.env, *args)
        assert r.returncode == 2 and "refused, it holds git-tracked files (README.md)" in r.stderr, r.stderr
        assert _files(repo / "results") == before


def test_snakemake_refuses_an_unwritable_store_and_bad_configs_in_one_line(tmp_path):
    """Parsing only (snakemake -n in a project copy): nothing runs, so this is fast."""
    repo = project_copy(tmp_path / "repo")
    env = {**copy_env(repo), "MLFLOW_TRACKING_URI": "sqlite:////proc/mlruns.db"}
    r = shell("snakemake -n --cores 1 --configfile configs/smoke.yaml", repo, env, timeout=300)
    assert r.returncode == 2 and "config error: MLFLOW_TRACKING_URI = 'sqlite:////proc/mlruns.db'" in r.stderr, \
        r.stderr
    assert not FRAMES.search(r.stderr), r.stderr
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    for key, value in (("train.epochs", -1), ("grid.methods", ["no_such_method"]), ("runtime.amp", "fp8")):
        raw = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
        (repo / "configs" / "smoke.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        r = shell("snakemake -n --cores 1 --configfile configs/smoke.yaml", repo, env, timeout=300)
        assert r.returncode == 2 and f"config error: {key}" in r.stderr, (key, r.stderr)
        assert not FRAMES.search(r.stderr), (key, r.stderr)


def test_make_smoke_names_a_bad_yaml_tag_before_snakemake_reads_it(tmp_path):
    """Snakemake parses --configfile itself, before the Snakefile, and then says only "Config file is not valid
    JSON or YAML"; `make smoke` validates with the project's safe loader first, which names the file and tag."""
    repo = project_copy(tmp_path / "repo")
    p = repo / "configs" / "smoke.yaml"
    p.write_text(p.read_text() + "\nextra: !!python/object/apply:os.system [\"touch pwned\"]\n")
    r = shell(make("smoke", repo), repo, copy_env(repo), timeout=300)
    assert r.returncode != 0 and f"config error: config file {p} is not valid YAML" in r.stderr, r.stderr
    assert "python/object/apply:os.system" in r.stderr and not FRAMES.search(r.stderr), r.stderr
    assert not (repo / "runs").exists() and not (repo / "pwned").exists()
