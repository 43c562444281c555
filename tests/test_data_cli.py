"""``wsolbench data verify|download`` and runs on file datasets, end to end."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest
from fixture_trees import GLAS_TEST, make_glas

from wsolbench.cli import main
from wsolbench.data.download import Resource, extract, fetch
from wsolbench.errors import DataError

TINY_GLAS = [
    "--set", "dataset.crop_size=16", "--set", "train.batch_size=4", "--set", "eval.batch_size=4",
    "--set", "dataset.resize_short=0", "--epochs", "1", "--no-pretrained",
]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in this process: (exit status, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich wraps at 80 columns when not on a terminal; long temporary paths would wrap."""
    from wsolbench.cli import console

    for name in ("out", "err"):
        monkeypatch.setattr(getattr(console, name), "width", 250)


def test_verify_and_run_on_glas_tree(tmp_path, capsys):
    root = make_glas(tmp_path / "glas")
    code, out, err = cli(capsys, "data", "verify", "glas", "--data-root", str(root))
    assert code == 0, err
    assert f"GlaS at {root}: 14 images, 2 classes" in out
    rows = {line.split()[1]: line.split()[2:] for line in out.splitlines() if line.startswith("│")}
    assert rows["train"] == ["│", "10", "│", "5", "│", "5", "│"] and rows["test"][1] == "4"
    assert "train 8 / valid 2 / test 4" in out and "14 images and their masks" in out

    code, _, err = cli(capsys, "run", "--method", "cam-avg", "--dataset", "glas", "--data-root", str(root), "-q",
                       "--output-dir", str(tmp_path / "runs"), "--run-name", "g", *TINY_GLAS)
    assert code == 0, err
    results = json.loads((tmp_path / "runs" / "g" / "results.json").read_text())
    assert results["n_images"] == len(GLAS_TEST)
    with open(tmp_path / "runs" / "g" / "per_image.csv") as f:
        assert sorted(row["id"] for row in csv.DictReader(f)) == sorted(GLAS_TEST)

    (root / "train_4.bmp").write_bytes(b"\x00" * 50)
    code, out, err = cli(capsys, "data", "verify", "glas", "--data-root", str(root))
    assert code == 2 and str(root / "train_4.bmp") in err and "1 problem with GlaS" in err
    code, _, err = cli(capsys, "run", "--method", "cam-avg", "--dataset", "glas", "--data-root", str(root), "-q",
                       "--output-dir", str(tmp_path / "runs"), *TINY_GLAS)
    assert code == 2 and "cannot read image" in err and str(root / "train_4.bmp") in err
    assert "Traceback" not in err


def test_missing_or_wrong_data_root(tmp_path, capsys):
    code, _, err = cli(capsys, "run", "--method", "cam-avg", "--dataset", "cub")
    assert code == 2 and "needs --data-root" in err and "CUB_200_2011/" in err
    code, _, err = cli(capsys, "run", "--method", "cam-avg", "--dataset", "oxf", "--data-root", str(tmp_path / "no"))
    assert code == 2 and str(tmp_path / "no") in err and "setid.mat" in err
    code, _, err = cli(capsys, "run", "--method", "cam-avg", "--dataset", "glas", "--data-root", str(tmp_path))
    assert code == 2 and f"{tmp_path} is not laid out as GlaS expects: missing Grade.csv" in err
    assert "Expected layout" in err and "warwick" in err
    code, _, err = cli(capsys, "data", "verify", "oxf", "--data-root", str(tmp_path))
    assert code == 2 and "imagelabels.mat" in err and "wsolbench data download oxf" in err


# -- downloads --------------------------------------------------------------------------------
class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (``/norange/...`` ignores it), logging each request."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append((self.path, self.headers.get("Range")))
        ignore = self.path.startswith("/norange/")
        path = Path(self.translate_path(self.path.removeprefix("/norange")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        wanted = self.headers.get("Range")
        if wanted and not ignore:
            start = int(wanted.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(served)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd, served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def tiny_archive(path: Path, members: dict[str, bytes]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return hashlib.md5(buffer.getvalue()).hexdigest()


def test_fetch_resumes_checks_and_extracts(server, tmp_path):
    httpd, served, url = server
    members = {"jpg/image_00001.jpg": b"x" * 5000, "jpg/image_00002.jpg": bytes(range(256)) * 40}
    md5 = tiny_archive(served / "tiny.tgz", members)
    whole = (served / "tiny.tgz").read_bytes()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "tiny.tgz.part").write_bytes(whole[: len(whole) // 2])
    resource = Resource(f"{url}/tiny.tgz", "tiny.tgz", md5, extract=True)

    assert fetch(resource, dest) is True
    assert httpd.requests == [("/tiny.tgz", f"bytes={len(whole) // 2}-")]  # resumed, not restarted
    assert (dest / "tiny.tgz").read_bytes() == whole and not (dest / "tiny.tgz.part").exists()
    assert extract(dest / "tiny.tgz", dest) is True
    assert {p: (dest / p).read_bytes() for p in members} == members
    assert fetch(resource, dest) is False and extract(dest / "tiny.tgz", dest) is False
    assert len(httpd.requests) == 1  # already there: no request

    # a complete partial file: the server answers 416 and the file is kept
    other = tmp_path / "other"
    other.mkdir()
    (other / "tiny.tgz.part").write_bytes(whole)
    assert fetch(resource, other) is True and (other / "tiny.tgz").read_bytes() == whole

    # a server that ignores Range: the partial file is replaced, not appended to
    (other / "again.tgz.part").write_bytes(b"garbage")
    (served / "again.tgz").write_bytes(whole)
    assert fetch(Resource(f"{url}/norange/again.tgz", "again.tgz", md5), other) is True
    assert (other / "again.tgz").read_bytes() == whole


def test_fetch_rejects_a_wrong_checksum_and_unsafe_archives(server, tmp_path):
    _, served, url = server
    md5 = tiny_archive(served / "bad.tgz", {"../escape.txt": b"no"})
    with pytest.raises(DataError) as info:
        fetch(Resource(f"{url}/bad.tgz", "bad.tgz", "0" * 32), tmp_path / "d")
    assert md5 in str(info.value) and "0" * 32 in str(info.value)
    assert not list((tmp_path / "d").iterdir())  # neither the file nor a partial one is kept
    fetch(Resource(f"{url}/bad.tgz", "bad.tgz", md5), tmp_path / "d")
    with pytest.raises(DataError, match="cannot extract"):
        extract(tmp_path / "d" / "bad.tgz", tmp_path / "d")
    assert not (tmp_path / "escape.txt").exists()
    with pytest.raises(DataError, match="404"):
        fetch(Resource(f"{url}/missing.tgz", "missing.tgz", md5), tmp_path / "d")


def test_download_command_through_a_mirror(server, tmp_path, capsys, monkeypatch):
    from wsolbench_plugins.datasets.oxf import Oxf

    httpd, served, url = server
    archive_md5 = tiny_archive(served / "102flowers.tgz", {"jpg/image_00001.jpg": b"jpeg"})
    (served / "setid.mat").write_bytes(b"mat file")
    setid_md5 = hashlib.md5(b"mat file").hexdigest()
    monkeypatch.setattr(Oxf, "downloads", (
        Resource("https://example.invalid/102flowers.tgz", "102flowers.tgz", archive_md5, extract=True),
        Resource("https://example.invalid/setid.mat", "setid.mat", setid_md5),
    ))
    dest = tmp_path / "oxf"
    code, out, err = cli(capsys, "data", "download", "oxf", "--dest", str(dest), "--mirror", url + "/")
    assert code == 0, err
    assert (dest / "jpg" / "image_00001.jpg").read_bytes() == b"jpeg" and (dest / "setid.mat").is_file()
    assert f"--data-root {dest}" in out
    assert [path for path, _ in httpd.requests] == ["/102flowers.tgz", "/setid.mat"]
    code, out, err = cli(capsys, "data", "download", "oxf", "--dest", str(dest), "--mirror", url)
    assert code == 0 and err.count("already downloaded") == 2 and len(httpd.requests) == 2

    code, _, err = cli(capsys, "data", "download", "glas", "--dest", str(tmp_path / "g"))
    assert code == 2 and "warwick" in err and "Grade.csv" in err and not (tmp_path / "g").exists()
