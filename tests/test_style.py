import subprocess
import sys

import pytest

from conftest import ROOT


def test_ruff_clean():
    pytest.importorskip("ruff")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "llmframe", "tests", "bench"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout
