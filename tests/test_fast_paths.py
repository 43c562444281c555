"""``--help`` of every command stays fast: nothing on those paths imports torch (or timm)."""

from __future__ import annotations

import subprocess
import sys

from wsolbench.cli import COMMANDS


def test_help_pages_do_not_import_torch():
    pages = [[], *([name] for name in COMMANDS)]
    code = (
        "import sys; from wsolbench.cli import main\n"
        f"for page in {pages!r}:\n"
        "    try:\n        main([*page, '--help'])\n    except SystemExit:\n        pass\n"
        "    assert 'torch' not in sys.modules, f'{page} --help imported torch'\n"
        "assert 'timm' not in sys.modules\n"
        "print('OK-NO-TORCH')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "OK-NO-TORCH" in proc.stdout
    for name in COMMANDS:  # each page was printed
        assert f"Usage: wsolbench {name}" in proc.stdout, name
