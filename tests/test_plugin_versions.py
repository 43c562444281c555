"""Reports warn when the runs of one table used different versions of a method's plug-in."""

from __future__ import annotations

import json

from test_report import cli, fake_run

from wsolbench.runs import report as rep


def provided(version: str, method: str = "hide-and-seek", dist: str = "wsolbench-hide-and-seek") -> dict:
    return {"method": {"name": method, "plugin": "hide-and-seek", "distribution": dist, "version": version},
            "dataset": {"name": "synthetic", "plugin": "datasets", "distribution": "wsolbench", "version": "0.1.0"}}


def test_differing_versions_of_a_methods_plugin_are_named_with_their_runs(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "a", "hide-and-seek", "synthetic", 0, provided_by=provided("0.1.0"), pxap=1.0)
    fake_run(root, "b", "hide-and-seek", "synthetic", 1, provided_by=provided("0.1.0"), pxap=1.0)
    fake_run(root, "c", "hide-and-seek", "glas", 0, provided_by=provided("0.2.0"), pxap=1.0)
    fake_run(root, "d", "cam-avg", "synthetic", 0, provided_by=provided("0.1.0", "cam-avg", "wsolbench"), pxap=1.0)
    runs = rep.collect([root]).runs
    (line,) = rep.version_warnings(runs)
    assert "method 'hide-and-seek'" in line
    assert "wsolbench-hide-and-seek 0.1.0 (2 runs), wsolbench-hide-and-seek 0.2.0 (1 run)" in line
    # the table of one dataset compares runs of one version only
    assert rep.version_warnings(runs, rep.summarize(runs, datasets=["synthetic"])) == []


def test_other_plugins_versions_do_not_matter_and_old_runs_use_their_manifest(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "new", "cam-avg", "synthetic", 0, pxap=1.0,
             provided_by=provided("0.1.0", "cam-avg", "wsolbench"))
    old = fake_run(root, "old", "cam-avg", "synthetic", 1, pxap=1.0)  # written before provided_by existed
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["versions"]["plugins"] = {"wsolbench": "0.1.0", "some-other-plugin": "9.9"}
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert rep.version_warnings(rep.collect([root]).runs) == []
    manifest["versions"]["plugins"]["wsolbench"] = "0.0.9"
    (old / "manifest.json").write_text(json.dumps(manifest))
    (line,) = rep.version_warnings(rep.collect([root]).runs)
    assert "method 'cam-avg'" in line and "wsolbench 0.0.9 (1 run), wsolbench 0.1.0 (1 run)" in line


def test_the_report_command_prints_the_warning(tmp_path, capsys):
    root = tmp_path / "runs"
    fake_run(root, "a", "hide-and-seek", "synthetic", 0, provided_by=provided("0.1.0"), pxap=1.0)
    fake_run(root, "b", "hide-and-seek", "synthetic", 1, provided_by=provided("0.2.0"), pxap=1.0)
    code, out, err = cli(capsys, "report", str(root))
    assert code == 0 and "hide-and-seek" in out
    assert "warning:" in err and "different versions of its plug-in" in err
