"""The first step of every container the agent starts: run with ``python -I -S enter.py SPEC``.

A pod's container sees its volumes at the container paths its spec names, its own host
name, and the cluster's names in ``/etc/hosts``. The agent gets this without a container
runtime: this helper enters private mount, UTS and PID namespaces, bind-mounts each
volume's directory on its mount path (creating an empty mount point on the host when the
path does not exist there) and the agent's hosts file on ``/etc/hosts``, then forks the
container's command as PID 1 of the new PID namespace, with the pod's host name. As in a
container, when that process ends every process it started ends with it, and only the
signals it handles reach it. This helper stays as its parent: it passes on the signals
the agent sends, exits with its status (128+N when killed by signal N, as runtimes
report), and both ask to be killed when their parent dies, so nothing outlives the agent.
SPEC is a JSON file: ``{"argv": [...], "cwd": ..., "hostname": ..., "hosts": ...,
"mounts": [[src, dst, read_only]]}``.

Standard library only, no package imports: it runs for every container start.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWPID = 0x00020000, 0x04000000, 0x20000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount_point(src: str, dst: str) -> None:
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    elif not os.path.exists(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()


def _bind(src: str, dst: str, read_only: bool) -> None:
    _mount_point(src, dst)
    _check(_libc.mount(src.encode(), dst.encode(), None, MS_BIND | MS_REC, None), f"mount {src} on {dst}")
    if read_only:
        _check(_libc.mount(None, dst.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC, None),
               f"remount {dst} read-only")


def _order(mounts: list[list]) -> list[list]:
    """A mount whose target hides another mount's source (``/tmp`` over a source under
    /tmp) goes after it; otherwise shallow targets first, so nested mounts stay visible."""
    def hides_a_source(m: list) -> bool:
        dst = m[1].rstrip("/") + "/"
        return any(o is not m and (o[0].rstrip("/") + "/").startswith(dst) for o in mounts)
    return sorted(mounts, key=lambda m: (hides_a_source(m), m[1].count("/")))


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)


def _die_with_parent() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if os.getppid() == 1:  # the parent died before the line above: do not outlive it
        os._exit(137)


def _run_container(spec: dict) -> None:
    """In the child: PID 1 of the new namespace."""
    argv = spec["argv"]
    try:
        _die_with_parent()
        name = (spec.get("hostname") or "").encode()
        if name:
            _check(_libc.sethostname(name, len(name)), "sethostname")
        os.chdir(spec.get("cwd") or "/")
    except OSError as e:
        print(f"container setup failed: {e}", file=sys.stderr, flush=True)
        os._exit(128)
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:  # in the runtime's words
        print(f'exec: "{argv[0]}": {e.strerror}', file=sys.stderr, flush=True)
        os._exit(127 if isinstance(e, FileNotFoundError) else 126)


def main(spec_path: str, remove_spec: bool = False) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    if remove_spec:
        os.unlink(spec_path)
    _die_with_parent()
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID), "unshare")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    mounts = list(spec.get("mounts") or [])
    if spec.get("hosts"):
        mounts.append([spec["hosts"], "/etc/hosts", False])
    for src, dst, read_only in _order(mounts):
        _bind(src, dst, read_only)
    # Signals that arrive before the fork are held, then passed on.
    pending: list[int] = []
    child = 0

    def forward(sig: int, _frame: object) -> None:
        if child:
            try:
                os.kill(child, sig)
            except ProcessLookupError:
                pass
        else:
            pending.append(sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    child = os.fork()
    if child == 0:
        _run_container(spec)
    for sig in pending:
        os.kill(child, sig)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1], sys.argv[2:] == ["--remove-spec"]))
    except OSError as e:
        print(f"container setup failed: {e}", file=sys.stderr)
        sys.exit(128)
