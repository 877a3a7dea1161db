"""``--user`` as etcdctl takes it, for the operator, the scheduler and kvctl."""

from __future__ import annotations

import pytest

from datastore.client.credentials import credentials


def test_name_and_password_in_one() -> None:
    assert credentials("root:pw:with:colons", "X_PW") == ("root", "pw:with:colons")


def test_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_PW", "secret")
    assert credentials("root", "X_PW") == ("root", "secret")


def test_no_user_no_login() -> None:
    assert credentials(None, "X_PW") == (None, None)
    assert credentials("", "X_PW") == (None, None)


def test_missing_password_says_what_to_give(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("X_PW", raising=False)
    with pytest.raises(ValueError, match="no password; give --user root:PASSWORD or set X_PW"):
        credentials("root", "X_PW")
    with pytest.raises(ValueError, match="the user name is empty"):
        credentials(":pw", "X_PW")
