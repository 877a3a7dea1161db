"""Serve flags the Kubernetes storage tests' server needs: etcd's --unsafe-no-fsync and
etcd 3.6's --watch-progress-notify-interval (3.5's experimental- name still works), from
the command line or from ETCD_/DATASTORE_ variables."""

from __future__ import annotations

import argparse

import pytest

from datastore.server.config import Config, add_serve_arguments, apply_env, config_from_args


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    assert apply_env(p, argv, environ or {}) == []  # no variable left unrecognized
    return config_from_args(p.parse_args(argv))


def test_fsync_is_on_unless_asked_off() -> None:
    assert parse([]).unsafe_no_fsync is False
    assert parse(["--unsafe-no-fsync"]).unsafe_no_fsync is True
    assert parse(["--unsafe-no-fsync=false"]).unsafe_no_fsync is False
    assert parse([], {"DATASTORE_UNSAFE_NO_FSYNC": "1"}).unsafe_no_fsync is True
    assert parse([], {"ETCD_UNSAFE_NO_FSYNC": "true"}).unsafe_no_fsync is True


@pytest.mark.parametrize("flag", ["--watch-progress-notify-interval",
                                  "--experimental-watch-progress-notify-interval"])
def test_progress_notify_interval_under_both_names(flag: str) -> None:
    assert parse([]).watch_progress_notify_interval_s == 600.0
    assert parse([flag, "1s"]).watch_progress_notify_interval_s == 1.0
    assert parse([flag, "1m30s"]).watch_progress_notify_interval_s == 90.0
    env = "ETCD_" + flag.lstrip("-").upper().replace("-", "_")
    assert parse([], {env: "250ms"}).watch_progress_notify_interval_s == 0.25


def test_progress_notify_interval_zero_and_tiny_like_etcd() -> None:
    """etcd keeps its 10-minute default for 0 (kube's test config leaves the field 0) and
    raises anything under 100 ms to 100 ms: never a notification loop without a pause."""
    assert parse(["--watch-progress-notify-interval", "0s"]).watch_progress_notify_interval_s == 600.0
    assert parse(["--watch-progress-notify-interval", "0"]).watch_progress_notify_interval_s == 600.0
    assert parse(["--watch-progress-notify-interval", "10ms"]).watch_progress_notify_interval_s == 0.1
    assert parse(["--watch-progress-notify-interval", "100ms"]).watch_progress_notify_interval_s == 0.1
