"""Every bad input is answered with exit status 2 and one paragraph naming the problem, never a traceback."""

from __future__ import annotations

import ast
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, shared_data
from reliability_support import FAST, cli, finished_run, plugin_host

from wsolbench.errors import DataError
from wsolbench.runs import rundir


@pytest.fixture(scope="module")
def host():
    with plugin_host() as h:
        yield h


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, host) -> Path:
    """A complete one-epoch cam-avg run that the resume cases copy and doctor."""
    return finished_run(tmp_path_factory.mktemp("base"), "base", "--method", "cam-avg", "--epochs", "1", *FAST)


def interrupted(run: Path) -> None:
    rundir.RunDir(run).update_manifest(status="interrupted")


def edit_checkpoint(**changes):
    def prepare(run: Path) -> None:
        interrupted(run)
        state = torch.load(run / "last.pt", weights_only=True)
        state.update(changes)
        torch.save(state, run / "last.pt")

    return prepare


def edit_json(name: str, **changes):
    def prepare(run: Path) -> None:
        interrupted(run)
        data = json.loads((run / name).read_text())
        for key, value in changes.items():
            section, _, field = key.partition("__")
            (data[section] if field else data)[field or section] = value
        (run / name).write_text(json.dumps(data))

    return prepare


def truncate_last(run: Path) -> None:
    interrupted(run)
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])


BAD_TOML = "[train\nlr = \n"
RUN = ["run", "--method", "cam-avg", "-o", "{tmp}/out"]

#: (id, arguments, what the message must say, how to prepare the copied run directory {run})
CASES = [
    ("unknown-method", ["run", "--method", "cam_avg"], "Unknown method 'cam_avg'. Did you mean 'cam-avg'?", None),
    ("unknown-dataset", ["run", "--dataset", "synthetc"], "Unknown dataset 'synthetc'", None),
    ("unknown-pooling", ["run", "--pooling", "average"], "Unknown pooling 'average'", None),
    ("unknown-profile", ["run", "--profile", "fast"], "'fast' is not one of 'quick', 'paper'", None),
    ("unknown-subcommand", ["rnu"], "No such command 'rnu'. Did you mean 'run'?", None),
    ("unknown-backbone", [*RUN, *FAST, "--set", "model.backbone=resnet_18"], "Unknown backbone 'resnet_18'", None),
    ("set-unknown-key", [*RUN, "--set", "train.lrr=1"], "Did you mean 'train.lr'", None),
    ("set-wrong-type", [*RUN, "--set", "train.lr=fast"], "train.lr = 'fast' has the wrong type", None),
    ("set-no-equals", [*RUN, "--set", "train.lr"], "--set expects key=value", None),
    ("set-bad-value", [*RUN, "--set", "eval.every=0"], "eval.every must be >= 1", None),
    ("set-bad-dataset-value", [*RUN, *FAST, "--set", "dataset.classes=1"], "dataset.classes must be at least 2",
     None),
    ("malformed-toml", [*RUN, "--config", "{tmp}/bad.toml"], "is not valid TOML", None),
    ("missing-toml", [*RUN, "--config", "{tmp}/none.toml"], "config file not found", None),
    ("missing-data-root", [*RUN, *FAST, "--dataset", "rooted"], "dataset 'rooted' needs --data-root PATH", None),
    ("absent-data-root", [*RUN, *FAST, "--dataset", "rooted", "--data-root", "{tmp}/nowhere"], "does not exist",
     None),
    ("label-outside-classes", [*RUN, *FAST, "--dataset", "rooted", "--data-root", "{tmp}",
                               "--set", "dataset.bad_label=5"], "has labels [5] outside its 2 classes", None),
    ("empty-split", [*RUN, *FAST, "--set", "dataset.n_valid=0"], "split 'valid' of dataset 'synthetic' is empty",
     None),
    ("output-dir-not-writable", ["run", "--method", "cam-avg", *FAST, "-o", "{tmp}/bad.toml/out"],
     "cannot create the output directory", None),
    ("too-little-disk", [*RUN, *FAST, "--set", "train.min_free_mb=1e12"], "too little disk space", None),
    ("nan-loss", [*RUN, *FAST, "--method", "fault-cam", "--set", "method.nan_at=0"],
     "the training loss became nan at epoch 0, step 0", None),
    ("resume-not-a-run", ["run", "--resume", "{tmp}"], "is not a wsolbench run directory", None),
    ("resume-with-options", ["run", "--resume", "{run}", "--epochs", "3"], "cannot be combined with --epochs",
     interrupted),
    ("resume-other-method", ["run", "--resume", "{run}"], "is a checkpoint of method 'fault-cam'",
     edit_checkpoint(method="fault-cam")),
    ("resume-newer-checkpoint", ["run", "--resume", "{run}"], "newer wsolbench (checkpoint schema 99",
     edit_checkpoint(schema_version=99)),
    ("resume-newer-run", ["run", "--resume", "{run}"], "newer wsolbench (run schema 99",
     edit_json("manifest.json", schema_version=99)),
    ("resume-config-edited", ["run", "--resume", "{run}"], "another configuration",
     edit_json("config.json", train__lr=0.5)),
    ("resume-corrupt-checkpoint", ["run", "--resume", "{run}"], "cannot load checkpoint", truncate_last),
]


@pytest.mark.parametrize("args, expected, prepare", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_paragraph(args, expected, prepare, tmp_path, host, base_run):
    (tmp_path / "bad.toml").write_text(BAD_TOML)
    run = tmp_path / "run"
    if prepare is not None:
        shutil.copytree(base_run, run)
        prepare(run)
    code, err = cli(*[a.format(tmp=tmp_path, run=run) for a in args])
    assert code == 2, err
    assert "Traceback" not in err
    message = err[err.index("Error:"):].strip()
    assert "\n\n" not in message, "the error is one paragraph"
    assert expected in " ".join(message.split())
    if prepare is not None:
        assert not (run / "lock").exists(), "a refused resume releases the run"


def test_a_run_being_written_is_refused(tmp_path, host, base_run):
    run = Path(shutil.copytree(base_run, tmp_path / "run"))
    interrupted(run)
    writer = rundir.RunDir(run)
    writer.acquire()
    try:
        code, err = cli("run", "--resume", str(run))
        assert code == 2 and "is being written by process" in err
        with pytest.raises(rundir.RunLockedError):
            rundir.RunDir(run).acquire()
    finally:
        writer.release()
    other = rundir.RunDir(run)
    other.acquire()  # free once released; a lock file left by a killed process never blocks
    other.release()


def test_debug_shows_the_traceback():
    proc = run_cli("--debug", "run", "--method", "cam_avg")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "UnknownNameError" in proc.stderr


def test_settings_that_exhaust_memory_get_a_message_and_a_failed_run(tmp_path):
    # 1.4 PiB of pixels: beyond any machine's address space, so the allocation fails at once everywhere
    # (a size that merely exceeds the RAM can be granted lazily where the kernel overcommits, then thrash)
    proc = run_cli("run", "-q", "--method", "cam-avg", "--set", "dataset.image_size=10000000",
                   "--output-dir", str(tmp_path), "--run-name", "huge")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "out of memory" in proc.stderr and "batch size" in proc.stderr
    assert rundir.read_json(tmp_path / "huge" / "manifest.json")["status"] == "failed"


# -- security -------------------------------------------------------------------
def _torch_load_calls(path: Path) -> list[tuple[int, bool]]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((node.lineno, safe))
    return calls


def test_every_checkpoint_load_is_weights_only():
    sources = [*(REPO / "wsolbench").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]
    calls = {f"{p.relative_to(REPO)}:{line}": safe for p in sources for line, safe in _torch_load_calls(p)}
    assert calls, "the scan found no torch.load at all"
    assert [where for where, safe in calls.items() if not safe] == []


def test_split_file_paths_cannot_leave_the_data_root(tmp_path):
    from wsolbench.data.samples import resolve_under

    root = tmp_path / "glas"
    assert resolve_under(root, "images/a.png") == root / "images" / "a.png"
    assert resolve_under(root, "images/../b.png") == root / "b.png"
    for bad in ("../secret.png", "/etc/passwd", "images/../../x.png", "../glas2/a.png"):
        with pytest.raises(DataError, match="absolute|leaves the data root"):
            resolve_under(root, bad)


MARKER_PLUGIN = """
    from pathlib import Path
    Path(__file__).with_name("imported").touch()

    from wsolbench import hookimpl

    @hookimpl
    def wsolbench_register_methods(register):
        register("marker-method", "collections:OrderedDict")
"""


def test_plugin_autoload_can_be_switched_off_from_the_command_line(tmp_path):
    site = tmp_path / "site"
    (site / "wsolbench_marker-1.0.dist-info").mkdir(parents=True)
    (site / "wsolbench_marker.py").write_text(textwrap.dedent(MARKER_PLUGIN))
    (site / "wsolbench_marker-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: "
                                                                       "wsolbench-marker\nVersion: 1.0\n")
    (site / "wsolbench_marker-1.0.dist-info" / "entry_points.txt").write_text("[wsolbench]\nmarker = "
                                                                               "wsolbench_marker\n")
    env = {"PYTHONPATH": str(site)}
    off = run_cli("list", "methods", env={**env, "WSOLBENCH_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert off.returncode == 0 and "cam-avg" in off.stdout and "marker-method" not in off.stdout
    assert not (site / "imported").exists(), "the plug-in's code ran although autoload was off"
    on = run_cli("list", "methods", env=env)
    assert on.returncode == 0 and "marker-method" in on.stdout and (site / "imported").exists()


# -- data files -------------------------------------------------------------------
def test_a_corrupt_glas_image_or_mask_is_named(tmp_path):
    from wsolbench.data.samples import check_sizes, read_image, read_mask_array

    source = shared_data("glas", "testA_1.png")
    for name, reader in (("testA_1.png", read_image), ("testA_1_anno.png", read_mask_array)):
        data = (source.parent / name).read_bytes()
        broken = tmp_path / name
        broken.write_bytes(data[: len(data) // 3])
        with pytest.raises(DataError, match=str(broken)):
            reader(broken)
    image = read_image(source)
    with pytest.raises(DataError, match="differs from image size.*testA_1"):
        check_sizes(image, torch.zeros(1, 5, 5), source)
