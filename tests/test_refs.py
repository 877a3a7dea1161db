"""The reference-program registry: a missing Go module is a clear error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from datastore.testing import refs


def test_binary_outside_a_checkout_says_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setattr(refs, "REFS_DIR", tmp_path / "nowhere")
    with pytest.raises(refs.RefError, match="pip install -e"):
        refs.binary("kube-apiserver")


def test_every_program_names_a_module_of_ours() -> None:
    for ref in refs.REFS:
        assert (ref.module_dir / "go.mod").is_file(), ref.name
        assert refs.ref_for(next(iter({**ref.programs, **ref.test_packages}))) is ref
