"""The client guide's examples (docs/client.md) run as written (each starts its own
EmbeddedServer)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def client_examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    return [b for b in blocks if "EmbeddedServer(" in b]


def test_readme_has_client_examples() -> None:
    assert len(client_examples()) >= 3


@pytest.mark.parametrize("index", range(3))
def test_readme_example_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = client_examples()[index]
    exec(compile(code, f"docs/client.md example {index}", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    # the printed results the comments promise
    for promised in re.findall(r"print\(.*\)\s+# (.+)", code):
        assert promised.strip() in out, f"example {index} did not print {promised!r}:\n{out}"
