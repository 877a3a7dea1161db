"""The README's client examples run as written (each starts its own EmbeddedServer)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def client_examples() -> list[str]:
    text = README.read_text()
    section = text.split("## Python client and recipes", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return [b for b in blocks if "EmbeddedServer(" in b]


def test_readme_has_client_examples() -> None:
    assert len(client_examples()) >= 3


@pytest.mark.parametrize("index", range(3))
def test_readme_example_runs(index: int) -> None:
    code = client_examples()[index]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"README example {index} failed:\n{r.stdout}\n{r.stderr}"
    # the printed results the comments promise
    for promised in re.findall(r"print\(.*\)\s+# (.+)", code):
        assert promised.strip() in r.stdout, f"example {index} did not print {promised!r}:\n{r.stdout}"
