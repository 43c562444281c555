"""Third-party plug-ins, installed for real: the example distribution and docs/plugins.md followed literally.

One pip call installs ``examples/wsolbench-shapes`` and the package that
the "Write your first method" section of docs/plugins.md builds (its files
taken from the document) into a folder; two deliberately broken distributions
are installed beside them (one raises at import, one registers a name
wsolbench already has). Then a run of the built-in HaS on the example's dataset
with its pooling, and every command of the
walkthrough, in order, from the author's folder (its pytest run also runs the
example's own tests, the conformance kit included; its ``wsolbench run``
commands get the tiny settings).

The HaS run and the commands that need no torch (``list``,
``report``, ``--help``) run in fresh interpreters with ``PYTHONPATH`` set, like
a user's. The walkthrough's runs, its pytest run and the preview subcommand run in
this interpreter, with the install folder on ``sys.path`` and the plug-ins
loaded from it: each fresh interpreter would cost seconds of imports.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY
from plugin_support import write_distribution

DOC = REPO / "docs" / "plugins.md"
EXAMPLE = REPO / "examples" / "wsolbench-shapes"
BROKEN = {  # distribution -> (module, source)
    "wsolbench-broken-import": ("wsolbench_broken_import", "raise RuntimeError('this plug-in is broken on purpose')\n"),
    "wsolbench-taken-name": (
        "wsolbench_taken_name",
        """
        from wsolbench import hookimpl

        @hookimpl
        def wsolbench_register_methods(register):
            register("taken-name-own-method", "collections:OrderedDict")
            register("cam-avg", "collections:OrderedDict")
        """,
    ),
}
#: top-level modules of what the fixture installs (and of the tests it runs), forgotten afterwards
INSTALLED_MODULES = ("wsolbench_shapes", "my_wsol_method", "wsolbench_broken_import", "wsolbench_taken_name",
                     "test_smooth_cam", "test_shapes")


#: ``wsolbench --help`` and ``wsolbench list``, then a check that neither imported torch
NO_TORCH = """
import sys
from wsolbench.cli import main
for args in (["--help"], ["list"]):
    try:
        main(args)
    except SystemExit:
        pass
assert "torch" not in sys.modules, "--help or list imported torch"
"""


def walkthrough() -> tuple[dict[str, str], list[str]]:
    """The files ("Create `PATH`:" and the code block after it) and shell commands of the walkthrough."""
    section = DOC.read_text(encoding="utf-8").split("\n## Write your first method\n", 1)[1].split("\n## ", 1)[0]
    files = dict(re.findall(r"Create `([^`]+)`[^\n]*\n\n```\w*\n(.*?)```", section, re.S))
    commands = [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
                for line in block.splitlines() if line.strip()]
    return files, commands


@dataclass
class Done:
    """What one command gave."""

    returncode: int
    stdout: str
    stderr: str


@dataclass
class Workspace:
    """The author's folder (the walkthrough's files, ``runs/``), the install folder and what each command gave."""

    path: Path
    site: Path
    done: dict[str, Done] = field(default_factory=dict)
    load_warnings: list[str] = field(default_factory=list)  #: plug-in warnings when this interpreter loaded them

    def env(self, **extra: str) -> dict[str, str]:
        path = os.pathsep.join(filter(None, [str(self.site), os.environ.get("PYTHONPATH")]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSOLBENCH_")}
        return {**env, "PYTHONPATH": path, "COLUMNS": "200", **extra}

    def run(self, argv: list[str], **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=self.path, env=self.env(**env), capture_output=True, text=True, timeout=600)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        """``wsolbench ARGS`` in a fresh interpreter."""
        return self.run([sys.executable, "-m", "wsolbench", *args], **env)


def in_process(call, *args) -> Done:  # noqa: ANN001
    """``call(*args)`` here, with its output and exit status (``SystemExit`` as the CLI gives it)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = call(*args)
            code = int(result or 0)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Done(code, out.getvalue(), err.getvalue())


def _follow(ws: Workspace, line: str, example_tests: Path) -> Done | None:
    """Run one command of the walkthrough as a user would, in this test's environment."""
    from wsolbench.cli import main

    words = shlex.split(line)
    if words[:2] == ["pip", "install"]:
        return None  # installed with the example, into the site folder (see the fixture)
    if words[:2] == ["wsolbench", "run"]:
        return in_process(main, [*words[1:], *TINY])
    if words[0] == "wsolbench":
        result = ws.cli(*words[1:])
        return Done(result.returncode, result.stdout, result.stderr)
    if words[:3] == ["python", "-m", "pytest"]:
        return in_process(pytest.main, [*words[3:], "-q", "-p", "no:cacheprovider", str(example_tests)])
    pytest.fail(f"docs/plugins.md: the walkthrough has a step this test cannot follow: {line!r}")


@contextlib.contextmanager
def plugins_from(site: Path, cwd: Path):
    """This interpreter, in ``cwd``, with the distributions installed in ``site`` loaded; all undone afterwards."""
    import torch

    import wsolbench.plugin_host as plugins
    from wsolbench.cli import cli

    before, was_added, commands = os.getcwd(), cli._plugins_added, dict(cli.commands)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as for the run above
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plugins.get_host(reload=True)
        cli._plugins_added = False  # the command line asks the new host for plug-in commands
        yield [str(w.message) for w in caught if issubclass(w.category, plugins.PluginWarning)]
    finally:
        torch.set_num_threads(threads)
        os.chdir(before)
        sys.path.remove(str(site))
        for name in list(sys.modules):
            if name.split(".")[0] in INSTALLED_MODULES:
                del sys.modules[name]
        cli.commands.clear()
        cli.commands.update(commands)
        cli._plugins_added = was_added
        plugins._HOST = None


def _offline_build() -> list[str]:
    """``--no-build-isolation`` when this environment's setuptools can build the packages itself.

    Build isolation fetches setuptools from the package index, which a machine without
    internet cannot reach; setuptools 70.1 and later build wheels without anything else.
    """
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    except Exception:  # not installed, or an unusual version string: let pip isolate the build
        return []
    return ["--no-build-isolation"] if (major, minor) >= (70, 1) else []


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("author")
    ws = Workspace(root / "work", root / "site")
    files, commands = walkthrough()
    assert files and commands, "docs/plugins.md: the walkthrough has no files or commands"
    for rel, text in files.items():
        path = ws.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    example = ws.path / EXAMPLE.name  # a copy: building leaves build/ and *.egg-info beside the sources
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    installs = [shlex.split(c)[-1] for c in commands if c.startswith("pip install")]
    assert installs == ["./my-wsol-method"], commands
    pip = ws.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *_offline_build(),
                  "--target", str(ws.site), str(example), *installs])
    assert pip.returncode == 0, pip.stdout + pip.stderr
    for dist, (module, source) in BROKEN.items():
        write_distribution(ws.site, dist, module, source, version="0.0.1")
    # one thread: these tiny tensors gain nothing from more, and on a busy machine more threads spin
    has = ws.cli("run", "--method", "has", "--dataset", "shapes", "--pooling", "gem", *TINY, OMP_NUM_THREADS="1")
    ws.done["shapes run"] = Done(has.returncode, has.stdout, has.stderr)
    from wsolbench.cli import main

    with plugins_from(ws.site, ws.path) as load_warnings:
        ws.load_warnings = load_warnings
        ws.done["shapes-preview"] = in_process(
            main, ["shapes-preview", "--split", "valid", "--count", "3", "--image-size", "32", "--seed", "4",
                   "-o", "shapes.png"]
        )
        for line in commands:
            result = _follow(ws, line, example / "tests")
            if result is not None:
                ws.done[line] = result
    return ws


def _run_dir(ws: Workspace, method: str, dataset: str = "synthetic") -> Path:
    (found,) = [p.parent for p in (ws.path / "runs").glob("*/results.json")
                if (json.loads(p.read_text())["method"], json.loads(p.read_text())["dataset"]) == (method, dataset)]
    return found


def _table_rows(text: str) -> dict[str, list[str]]:
    """``{first cell: other cells}`` of a rich table printed as text (cells wrapped over lines joined)."""
    rows: dict[str, list[str]] = {}
    last = None
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)]
        if line[:1] in ("│", "┃"):  # a table with edges
            cells = cells[1:-1]
        if len(cells) < 2:
            last = None
        elif cells[0]:
            last = rows[cells[0]] = cells[1:]
        elif last is not None:  # the continuation of a wrapped row
            last[:] = [f"{a} {b}".strip() for a, b in zip(last, cells[1:])]
    return rows


def test_the_example_is_its_own_distribution():
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not any(p.startswith("wsolbench_shapes") for p in setuptools["packages"])
    assert not any(folder.startswith("examples") for folder in setuptools["package-dir"].values())
    example = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert example["entry-points"]["wsolbench"] == {"shapes": "wsolbench_shapes.plugin"}


def test_every_command_succeeds_and_broken_plugins_are_named(ws):
    for line, result in ws.done.items():
        assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    fresh = [ws.done[c].stderr for c in ("shapes run", "wsolbench list plugins", "wsolbench report runs")]
    for said in [*fresh, "\n".join(ws.load_warnings)]:  # each broken distribution is named with its error
        assert "wsolbench-broken-import 0.0.1 was not loaded" in said and "broken on purpose" in said, said
        assert "wsolbench-taken-name 0.0.1 was not loaded" in said and "'cam-avg' is registered twice" in said
    tests = next(r for line, r in ws.done.items() if "pytest" in line)
    passed = re.search(r"(\d+) passed", tests.stdout)
    assert passed and int(passed.group(1)) >= 8 and not re.search(r"\d+ failed", tests.stdout), tests.stdout


def test_list_plugins_shows_versions_registrations_and_errors(ws):
    rows = _table_rows(ws.done["wsolbench list plugins"].stdout)
    assert rows["shapes"] == [
        "wsolbench-shapes", "0.1.0", "poolings: gem; datasets: shapes; commands: shapes-preview", "loaded",
    ]
    assert rows["smooth-cam"] == ["my-wsol-method", "0.1.0", "methods: smooth-cam", "loaded"]
    assert rows["wsolbench-broken-import"][:3] == ["wsolbench-broken-import", "0.0.1", ""]
    assert "import failed: RuntimeError: this plug-in is broken on purpose" in rows["wsolbench-broken-import"][3]
    assert rows["wsolbench-taken-name"][2] == ""  # a failing plug-in registers nothing, not even its own names
    assert "cam-avg" in rows["wsolbench-taken-name"][3]
    assert rows["methods"][:3] == ["wsolbench", "0.1.0", rows["methods"][2]] and "cam-avg" in rows["methods"][2]


def test_runs_record_the_plugins_and_the_report_puts_them_next_to_the_builtins(ws):
    has = _run_dir(ws, "has", "shapes")
    results = json.loads((has / "results.json").read_text())
    manifest = json.loads((has / "manifest.json").read_text())
    assert results["method_label"] == "has (S=16)"
    assert results["provided_by"]["dataset"] == {
        "name": "shapes", "plugin": "shapes", "distribution": "wsolbench-shapes", "version": "0.1.0",
    }
    assert results["provided_by"]["pooling"]["distribution"] == "wsolbench-shapes"
    assert results["provided_by"]["method"]["distribution"] == "wsolbench"  # HaS is built in
    plugins = manifest["versions"]["plugins"]
    assert plugins["wsolbench-shapes"] == "0.1.0" and plugins["my-wsol-method"] == "0.1.0"
    assert "wsolbench-broken-import" not in plugins and "wsolbench-taken-name" not in plugins
    report = ws.done["wsolbench report runs"]
    rows = _table_rows(report.stdout)
    for method, label, dataset in (("has", "has (S=16)", "shapes"), ("smooth-cam", "smooth-cam", "synthetic"),
                                   ("cam-avg", "cam-avg", "synthetic")):
        numbers = json.loads((_run_dir(ws, method, dataset) / "results.json").read_text())
        start = 0 if dataset == "shapes" else 4  # one column group per dataset, in alphabetical order
        shown = [cell.strip("*") for cell in rows[label][start:start + 4]]
        assert shown == [f"{numbers[m]:.2f}" for m in ("cl_error", "f1_pos", "f1_neg", "pxap")], (label, rows)
    assert "different versions" not in report.stderr


def test_autoload_can_be_switched_off_or_limited(ws):
    off = ws.cli("list", "plugins", WSOLBENCH_DISABLE_PLUGIN_AUTOLOAD="1")
    assert off.returncode == 0 and "warning" not in off.stderr
    assert set(_table_rows(off.stdout)) == {"name", "poolings", "methods", "datasets", "loggers"}
    assert "WSOLBENCH_DISABLE_PLUGIN_AUTOLOAD is set" in off.stdout
    only = ws.cli("list", "plugins", WSOLBENCH_PLUGINS="wsolbench-shapes")
    assert only.returncode == 0 and "warning" not in only.stderr  # the broken ones are not even imported
    rows = _table_rows(only.stdout)
    assert rows["shapes"][-1] == "loaded"
    assert rows["smooth-cam"][-1] == rows["wsolbench-broken-import"][-1] == "not loaded: not in WSOLBENCH_PLUGINS"
    gone = ws.cli("run", "--method", "smooth-cam", "--show-config", WSOLBENCH_PLUGINS="wsolbench-shapes")
    assert gone.returncode == 2 and "Unknown method 'smooth-cam'" in gone.stderr


def test_the_subcommand_shows_exactly_the_datasets_images_and_masks(ws):
    """``wsolbench shapes-preview``: the images, then their masks, equal to the dataset's drawings."""
    import importlib.util

    from PIL import Image

    listing = ws.run([sys.executable, "-c", NO_TORCH])  # the plug-ins keep `--help` and `list` light
    assert listing.returncode == 0 and "shapes-preview" in listing.stdout, listing.stderr
    assert "the first 3 valid images of shapes (disc, square, disc)" in ws.done["shapes-preview"].stdout
    spec = importlib.util.spec_from_file_location("_shapes", EXAMPLE / "wsolbench_shapes" / "dataset.py")
    dataset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dataset)

    pixels = np.asarray(Image.open(ws.path / "shapes.png").convert("RGB"))
    size, gap = 32, 2
    assert pixels.shape == (2 * size + gap, 3 * size + 2 * gap, 3)
    for col in range(3):
        image, _, mask = dataset.draw(4, "valid", col, size)
        left = col * (size + gap)
        assert np.array_equal(pixels[:size, left:left + size], image), col
        assert np.array_equal(pixels[size + gap:, left:left + size], np.repeat(mask[..., None] * 255, 3, axis=2))
        assert 0 < mask.mean() < 1
