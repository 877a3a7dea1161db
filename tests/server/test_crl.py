"""The CRL rules (etcd's checkCRL): serials of any presented certificate, PEM or DER files,
a replaced file read again, an unreadable one refusing everything."""

from __future__ import annotations

import os
from pathlib import Path

from datastore.server.crl import RevocationList
from datastore.testing.certs import CertAuthority


def test_revocation_list_rules(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path / "pki")
    good, bad = ca.issue("good"), ca.issue("bad")
    good_pem, bad_pem = good.cert.read_bytes(), bad.cert.read_bytes()
    for der in (False, True):
        crl = RevocationList(str(ca.write_crl(tmp_path / f"crl-{der}", [bad], der=der)))
        assert crl.refusal(good_pem) is None
        assert "revoked" in (crl.refusal(bad_pem) or "")
        # any certificate the client presents, not only the leaf (etcd checks the chain)
        assert "revoked" in (crl.refusal(good_pem + bad_pem) or "")

    path = tmp_path / "crl-False"
    crl = RevocationList(str(path))
    assert crl.refusal(good_pem) is None
    ca.write_crl(tmp_path / "next", [good])
    os.replace(tmp_path / "next", path)
    assert "revoked" in (crl.refusal(good_pem) or ""), "a replaced file is read again"
    assert crl.refusal(bad_pem) is None

    path.write_bytes(b"garbage")
    assert "malformed crl" in (crl.refusal(bad_pem) or ""), "an unreadable CRL refuses all"
    path.unlink()
    assert "no such file" in (crl.refusal(bad_pem) or "")
