"""The top-level Containerfile, checked without a container engine (none runs here): its
instructions parse, what it copies exists and holds the package, it runs as a non-root
user, exposes etcd's ports, and its entrypoint is an installed script whose subcommand
exists."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KNOWN = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "VOLUME", "EXPOSE", "ENTRYPOINT",
         "CMD", "ARG", "LABEL", "HEALTHCHECK", "STOPSIGNAL", "SHELL", "ADD", "ONBUILD"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Containerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    assert not pending, "a continuation line ends the file"
    return out


def test_containerfile_is_sensible() -> None:
    ins = instructions()
    assert ins[0] == ("FROM", "python:3.11-slim")
    assert {w for w, _ in ins} <= KNOWN
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())

    copied: list[str] = []
    for word, args in ins:
        if word == "COPY":
            *sources, _dest = shlex.split(args)
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
                copied.append(src.rstrip("/"))
    # everything the package build reads is copied in before `pip install .`
    needed = {"pyproject.toml", pyproject["project"]["readme"],
              *pyproject["tool"]["setuptools"]["packages"]["find"]["where"]} - {"."}
    needed.add("datastore")
    assert needed <= set(copied), needed - set(copied)
    runs = [a for w, a in ins if w == "RUN"]
    assert any("pip install ." in r for r in runs)

    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "must run as non-root"
    ports = {p for w, a in ins if w == "EXPOSE" for p in a.split()}
    assert {"2379", "2380"} <= ports

    entry = json.loads(next(a for w, a in ins if w == "ENTRYPOINT"))  # exec (JSON) form
    assert entry == ["datastore", "serve"]
    assert entry[0] in pyproject["project"]["scripts"]
    module, _, func = pyproject["project"]["scripts"][entry[0]].partition(":")
    # the script's subcommand exists and takes the etcd flags the manifests pass
    out = subprocess.run([sys.executable, "-c", f"import sys; from {module} import {func}; "
                          f"sys.exit({func}(sys.argv[1:]))", *entry[1:], "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for flag in ("--initial-cluster", "--listen-metrics-urls", "--cert-file", "--peer-auto-tls"):
        assert flag in out
