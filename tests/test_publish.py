"""We delete only what we wrote: a report goes into report.dir by a manifest of our own files; a folder that
holds anyone else's files (no manifest of ours, the project root, runs/, git-tracked files) is refused."""
from __future__ import annotations

import subprocess

import pytest

from pipeline.infra import io
from pipeline.report import publish as P
from pipeline.config.layout import ROOT
from pipeline.errors import ConfigError

from .conftest import write_experiment
from .test_integrity import TINY, _fake_runs, _main


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _report(target, files: dict) -> None:
    with P.Staged(target) as folder:
        for name, text in files.items():
            io.write_text(folder / name, text)


def _user_folder(folder):
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("mine")
    (folder / "figures").mkdir()
    (folder / "figures" / "myplot.png").write_bytes(b"png")
    (folder / ".staged-keep").mkdir()
    (folder / ".staged-keep" / "important.txt").write_text("keep")
    return _files(folder)


def test_a_users_folder_as_report_dir_is_refused_before_compute_and_keeps_every_file(tmp_path, env, monkeypatch):
    from pipeline.report import build as R
    user = tmp_path / "mine"
    before = _user_folder(user)
    experiment = write_experiment(tmp_path, name="t", datasets=TINY, report={"dir": str(user)},
                                  grid={"methods": ["finetune"]})
    monkeypatch.setenv("PIPELINE_RUNS", str(tmp_path / "runs"))     # no outputs there: compute would fail
    code, err = _main(["report", "--experiment", experiment])
    assert code == 2, err
    assert f"config error: report.dir = {str(user)!r}: refused, it is not empty (.staged-keep, README.md, figures)" \
        in err, err
    assert _files(user) == before


@pytest.mark.parametrize("where", [".", "..", "runs", "/"])
def test_the_project_root_and_runs_are_refused_by_validation(where, tmp_path):
    experiment = write_experiment(tmp_path, name="t", report={"dir": where})
    code, err = _main(["validate", "--experiment", experiment])
    assert code == 2 and f"config error: report.dir = {where!r}: must be a folder of its own" in err, err


def test_runs_folder_of_the_jobs_is_refused(tmp_path, env):
    with pytest.raises(ConfigError, match="it is runs/ itself"):
        P.Staged(tmp_path / "runs")                     # PIPELINE_RUNS (conftest's env) points here
    assert not (tmp_path / "runs").exists()


def test_a_folder_holding_git_tracked_files_is_refused(tmp_path):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "docs" / "notes.md").write_text("tracked")
    subprocess.run(["git", "-C", str(repo), "add", "docs/notes.md"], check=True)
    with pytest.raises(ConfigError, match=r"refused, it holds git-tracked files \(notes.md\)"):
        P.check_target(repo / "docs")
    (repo / "empty").mkdir()
    assert P.check_target(repo / "empty") == repo / "empty"     # an untracked empty folder of the same repo


def test_a_new_report_replaces_and_removes_only_the_files_the_manifest_lists(tmp_path):
    target = tmp_path / "report"
    _report(target, {"README.md": "r1", "figures/a.png": "a1", "figures/b.png": "b1"})
    assert io.read_json(target / P.OURS)["files"] == ["README.md", "figures/a.png", "figures/b.png"]
    (target / "figures" / "myplot.png").write_text("user")          # the user's files beside ours
    (target / "notes.txt").write_text("user")
    (target / ".staged-keep").mkdir()
    (target / ".staged-keep" / "important.txt").write_text("user")  # no marker: not ours
    _report(target, {"README.md": "r2", "figures/a.png": "a2", "c.csv": "c2"})
    assert {k: v for k, v in _files(target).items() if k != P.OURS} == {
        "README.md": b"r2", "figures/a.png": b"a2", "c.csv": b"c2", "figures/myplot.png": b"user",
        "notes.txt": b"user", ".staged-keep/important.txt": b"user"}
    assert io.read_json(target / P.OURS)["files"] == ["README.md", "c.csv", "figures/a.png"]
    _report(target, {"README.md": "r3"})                             # figures/ keeps the user's plot
    assert sorted(_files(target)) == sorted([".staged-keep/important.txt", P.OURS, "README.md",
                                             "figures/myplot.png", "notes.txt"])
    _report(target, {"README.md": "r4"})
    (target / "figures" / "myplot.png").unlink()
    _report(target, {"README.md": "r5", "figures/a.png": "a5"})      # figures/ made again, as ours
    assert (target / "figures" / "a.png").read_text() == "a5"


def test_a_file_of_someone_else_that_a_report_would_overwrite_is_refused(tmp_path):
    target = tmp_path / "report"
    _report(target, {"README.md": "r1"})
    (target / "summary.csv").write_text("the user's")
    before = _files(target)
    with pytest.raises(ConfigError, match=r"refused, summary.csv would be overwritten and our manifest"):
        _report(target, {"README.md": "r2", "summary.csv": "ours"})
    assert _files(target) == before


def test_a_publish_interrupted_by_a_kill_is_completed_by_the_next_report(tmp_path):
    target = tmp_path / "results"
    _report(target, {"a.txt": "old a", "figures/old.png": "old"})
    # A publish killed after moving a.txt: its manifest and the folder's (old + new) written, new.png not moved.
    stale = target / ".staged-killed"
    (stale / "figures").mkdir(parents=True)
    (stale / P.MARKER).touch()
    io.write_text(stale / "figures" / "new.png", "new")
    io.write_json(stale / P.MANIFEST, ["a.txt", "figures/new.png"])
    io.write_json(target / P.OURS, {"files": ["a.txt", "figures/new.png", "figures/old.png"]})
    io.write_text(target / "a.txt", "new a")
    half = target / ".staged-half-built"                      # ours, killed while building: no manifest
    half.mkdir()
    (half / P.MARKER).touch()
    io.write_text(half / "a.txt", "half")
    P.Staged(target).__exit__(RuntimeError, RuntimeError("x"), None)   # the next report, failing at once
    assert (target / "a.txt").read_text() == "new a"
    assert sorted(p.name for p in (target / "figures").iterdir()) == ["new.png"]
    assert not list(target.glob(".staged-*"))


def test_publish_to_results_copies_by_the_manifest(tmp_path, monkeypatch):
    src, dst = tmp_path / "report", tmp_path / "results" / "t"
    _report(src, {f: f for f in P.FILES} | {"figures/a.png": "a", "figures/b.png": "b"})
    dst.mkdir(parents=True)
    (dst / "extra.md").write_text("kept")
    monkeypatch.setattr(P, "published_dir", lambda cfg: dst)
    cfg = type("Cfg", (), {"report": type("R", (), {"dir": str(src)}), "name": "t"})
    P.publish(cfg)
    assert sorted(_files(dst)) == sorted([P.OURS, *P.FILES, "extra.md", "figures/a.png", "figures/b.png"])
    _report(src, {f: f + "2" for f in P.FILES} | {"figures/a.png": "a2"})
    P.publish(cfg)
    assert _files(dst)["figures/a.png"] == b"a2" and "figures/b.png" not in _files(dst)
    assert _files(dst)["extra.md"] == b"kept"


def test_a_report_from_before_manifests_is_refused_with_what_to_do(tmp_path):
    old = tmp_path / "report"
    old.mkdir()
    (old / "README.md").write_text("# Report: experiment `smoke`\n")
    (old / "summary.csv").write_text("a\n")
    with pytest.raises(ConfigError, match=r"or by a version before manifests: if it holds nothing of yours, "
                                          rf"delete it, rm -r {old}, and rerun\)"):
        P.Staged(old)
    assert sorted(p.name for p in old.iterdir()) == ["README.md", "summary.csv"]

