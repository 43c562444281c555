"""What a manifest records of a run's origin (code, machine, data), and the report's warnings on mixed origins."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from fixture_trees import make_glas
from test_report import cli, fake_run
from test_runner import tiny

from wsolbench.plugin_host import registry
from wsolbench.runs import provenance
from wsolbench.runs import report as rep
from wsolbench.training import runner

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git repository holding a package folder ``pkg`` with one commit; returns the package folder."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo / "pkg"


@needs_git
def test_a_clean_checkout_records_its_commit_and_a_changed_one_a_hash_of_its_diff(checkout):
    head = git(checkout.parent, "rev-parse", "HEAD")
    clean = provenance.code_state(checkout)["git"]
    tree = clean.pop("tree_sha256")
    assert clean == {"commit": head, "dirty": False, "diff_sha256": None, "untracked_files": 0}
    assert len(tree) == 64

    (checkout / "__init__.py").write_text("VALUE = 2\n")
    (checkout / "notes.txt").write_text("untracked")
    changed = provenance.code_state(checkout)["git"]
    assert changed["commit"] == head and changed["dirty"] is True and changed["untracked_files"] == 1
    # the hash follows the change: the same edit gives the same hash, another edit another one
    assert changed["diff_sha256"] == provenance.code_state(checkout)["git"]["diff_sha256"]
    (checkout / "__init__.py").write_text("VALUE = 3\n")
    assert provenance.code_state(checkout)["git"]["diff_sha256"] != changed["diff_sha256"]
    assert len(changed["diff_sha256"]) == 64
    assert "uncommitted changes" in provenance.describe_code(provenance.code_state(checkout))


@needs_git
def test_the_code_tree_changes_with_the_code_not_with_other_files(checkout):
    repo = checkout.parent
    first = provenance.code_state(checkout)["git"]
    (repo / "suite.toml").write_text("epochs = 2\n")  # a commit outside the code
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "suite")
    second = provenance.code_state(checkout)["git"]
    assert second["commit"] != first["commit"] and second["tree_sha256"] == first["tree_sha256"]
    for changed in (checkout / "__init__.py", repo / "plugins" / "m.py", repo / "pyproject.toml"):
        changed.parent.mkdir(exist_ok=True)
        changed.write_text("VALUE = 5\n")
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", f"change {changed.name}")
        third = provenance.code_state(checkout)["git"]
        assert third["tree_sha256"] != second["tree_sha256"], changed
        second = third
    assert provenance.code_identity({"git": third}) == f"tree {third['tree_sha256']}"


@needs_git
def test_a_run_in_a_git_checkout_holds_its_commit_and_dirty_flag(checkout, tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "CODE_DIR", checkout)
    (checkout / "__init__.py").write_text("VALUE = 2\n")
    result = runner.run(tiny(tmp_path / "runs", 1))
    manifest = result.run_dir.read_manifest()
    assert manifest["code"]["git"]["commit"] == git(checkout.parent, "rev-parse", "HEAD")
    assert manifest["code"]["git"]["dirty"] is True
    assert manifest["code"]["wsolbench"] == manifest["versions"]["wsolbench"]


def test_outside_a_checkout_or_without_git_the_manifest_says_so(tmp_path, monkeypatch):
    plain = tmp_path / "installed" / "pkg"
    plain.mkdir(parents=True)
    (plain / "__init__.py").write_text("")
    monkeypatch.setattr(provenance, "CODE_DIR", plain)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never the checkout tmp_path may lie in
    result = runner.run(tiny(tmp_path / "runs", 1))
    recorded = result.run_dir.read_manifest()["code"]["git"]
    if shutil.which("git"):
        assert recorded["commit"] is None and "not in a git checkout" in recorded["reason"]
    monkeypatch.setattr(provenance, "GIT", "no-such-git-command")
    missing = provenance.code_state(plain)["git"]
    assert missing["commit"] is None and "git is not installed" in missing["reason"]
    assert "outside a git checkout" in provenance.describe_code(provenance.code_state(plain))


@needs_git
def test_a_checkout_that_only_holds_the_package_is_not_its_source(checkout):
    inner = checkout.parent / "venv" / "site-packages" / "pkg"  # a virtual environment inside a project
    inner.mkdir(parents=True)
    (inner / "__init__.py").write_text("")
    (checkout.parent / ".gitignore").write_text("venv/\n")
    recorded = provenance.code_state(inner)["git"]
    assert recorded["commit"] is None and "does not track it" in recorded["reason"]


def test_the_runtime_record_follows_threads_and_deterministic_settings(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = provenance.runtime("cpu")
    finally:
        torch.set_num_threads(threads)
    assert record["torch_threads"] == 1 and record["OMP_NUM_THREADS"] == "3" and record["gpu"] is None
    assert record["cpu"] and record["deterministic"]["algorithms"] is False
    torch.use_deterministic_algorithms(True)
    try:
        assert provenance.runtime("cpu")["deterministic"]["algorithms"] is True
    finally:
        torch.use_deterministic_algorithms(False)


def test_generated_data_is_fingerprinted_by_its_parameters():
    def sha(seed: int = 0, **params):
        return provenance.data_fingerprint(registry("dataset").create("synthetic", seed=seed, **params))

    first = sha(n_train=16)
    assert first["basis"] == "parameters" and first["images"]["train"] == 16
    assert sha(n_train=16, seed=5)["sha256"] == first["sha256"]  # the seed is recorded beside it
    assert sha(n_train=17)["sha256"] != first["sha256"]
    assert sha(n_train=16, noise=0.1)["sha256"] != first["sha256"]


def test_two_copies_of_a_dataset_agree_until_a_file_differs(tmp_path):
    one = make_glas(tmp_path / "one")
    two = tmp_path / "two"
    shutil.copytree(one, two)

    def fingerprint(root: Path) -> dict:
        return provenance.data_fingerprint(registry("dataset").create("glas", root=str(root), valid_fraction=0.2))

    first = fingerprint(one)
    assert first["basis"] == "files" and first["sha256"] == fingerprint(two)["sha256"]
    described = registry("dataset").create("glas", root=str(one)).fingerprint()
    entry = described["splits"]["test"][0]  # [id, label, image, bytes, mask, bytes], relative to the root
    assert entry[3] == (one / entry[2]).stat().st_size and entry[5] == (one / entry[4]).stat().st_size
    image = two / entry[2]
    image.write_bytes(image.read_bytes() + b"\0")
    assert fingerprint(two)["sha256"] != first["sha256"]
    assert first["sha256"] == hashlib.sha256(
        json.dumps(described, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_a_failing_fingerprint_is_recorded_and_does_not_stop_the_run():
    class Broken:
        split_names = ("train",)

        def fingerprint(self):
            raise OSError("unreadable")

    assert provenance.data_fingerprint(Broken()) == {"sha256": None, "error": "OSError: unreadable"}


def with_origin(path: Path, commit: str | None, dirty: bool = False, data: str | None = "d" * 64,
                tree: str | None = None) -> Path:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["code"] = {"wsolbench": "0.1.0",
                        "git": {"commit": commit, "dirty": dirty, "diff_sha256": "f" * 64 if dirty else None,
                                **({"tree_sha256": tree} if tree else {})}}
    manifest["data"] = {"sha256": data, "basis": "files"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_report_warns_on_mixed_commits_and_on_changes(tmp_path):
    root = tmp_path / "runs"
    with_origin(fake_run(root, "a", "cam-avg", "glas", 0, pxap=1.0), "a" * 40)
    with_origin(fake_run(root, "b", "cam-avg", "glas", 1, pxap=1.0), "a" * 40)
    runs = rep.collect([root]).runs
    assert rep.origin_warnings(runs) == []
    with_origin(fake_run(root, "c", "minmax", "glas", 0, pxap=1.0), "a" * 40, dirty=True)
    with_origin(fake_run(root, "d", "minmax", "glas", 1, pxap=1.0), "b" * 40)
    (line,) = rep.origin_warnings(rep.collect([root]).runs)
    assert "different code" in line
    assert f"commit {'a' * 12} (2 runs)" in line and f"commit {'b' * 12} (1 run)" in line
    assert f"commit {'a' * 12} with uncommitted changes (diff {'f' * 12}) (1 run)" in line


def test_report_does_not_warn_on_commits_with_the_same_code(tmp_path):
    root = tmp_path / "runs"
    with_origin(fake_run(root, "a", "cam-avg", "glas", 0, pxap=1.0), "a" * 40, tree="1" * 64)
    with_origin(fake_run(root, "b", "cam-avg", "glas", 1, pxap=1.0), "b" * 40, tree="1" * 64)  # e.g. a docs commit
    assert rep.origin_warnings(rep.collect([root]).runs) == []
    with_origin(fake_run(root, "c", "minmax", "glas", 0, pxap=1.0), "c" * 40, tree="2" * 64)
    with_origin(fake_run(root, "d", "minmax", "glas", 1, pxap=1.0), "a" * 40, tree="1" * 64, dirty=True)
    (line,) = rep.origin_warnings(rep.collect([root]).runs)
    assert f"commit {'a' * 12} = commit {'b' * 12} (2 runs)" in line and f"commit {'c' * 12} (1 run)" in line
    assert f"commit {'a' * 12} with uncommitted changes (diff {'f' * 12}) (1 run)" in line


def test_report_warns_per_dataset_on_different_data_and_the_command_prints_it(tmp_path, capsys):
    root = tmp_path / "runs"
    with_origin(fake_run(root, "a", "cam-avg", "glas", 0, pxap=1.0), "a" * 40)
    with_origin(fake_run(root, "b", "cam-avg", "glas", 1, pxap=1.0), "a" * 40, data="e" * 64)
    with_origin(fake_run(root, "c", "cam-avg", "cub", 0, pxap=1.0), "a" * 40, data="e" * 64)
    fake_run(root, "d", "cam-avg", "cub", 1, pxap=1.0)  # made before manifests recorded their origin
    lines = rep.origin_warnings(rep.collect([root]).runs)
    assert len(lines) == 3
    code, cub, glas = lines
    assert "code not recorded (1 run)" in code
    assert "dataset 'cub'" in cub and "not recorded (1 run)" in cub
    assert "dataset 'glas'" in glas and f"fingerprint {'d' * 12} (1 run), fingerprint {'e' * 12} (1 run)" in glas
    status, _, err = cli(capsys, "report", str(root), "--datasets", "glas")
    assert status == 0 and "read different data" in err and "dataset 'cub'" not in err
