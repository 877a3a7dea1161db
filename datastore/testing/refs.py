"""The real programs that test the datastore, built from their Go modules and cached.

Each reference is a Go module of ours under ``tools/refs/<name>/`` (a ``go.mod`` that pins
the upstream module and names its commands as ``tool`` lines, plus its ``go.sum``); no
upstream source is kept in the checkout. Binaries land in a cache outside the checkout,
one folder per reference and content digest, so an unchanged pin is built once per machine
and a changed one can never be confused with the old build.

A reference may also be another module's tests: ``source_module`` is copied from the Go
module cache into the build folder (inside the cache, never the checkout), our files in
``overlay`` replace some of its files, and its ``test_packages`` are compiled there with
``go test -c`` (the Kubernetes storage tests, with our testserver).

``build_all()`` is what ``scripts/build_refs.py`` (and so ``scripts/test.sh``) runs;
``binary(name)`` is how tests and ``datastore kube up`` find a program.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REFS_DIR = REPO / "tools" / "refs"

KUBE_VERSION = "v1.37.2"
_KV = "k8s.io/component-base/version"
_CV = "k8s.io/client-go/pkg/version"


def _kube_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    pairs = {"gitVersion": version, "gitMajor": major, "gitMinor": minor,
             "gitTreeState": "clean", "gitCommit": "0" * 40, "buildDate": "2026-01-01T00:00:00Z"}
    return " ".join(f"-X {pkg}.{k}={v}" for pkg in (_KV, _CV) for k, v in pairs.items())


@dataclass(frozen=True)
class Ref:
    """One reference module: the programs it builds, by binary name → Go package."""

    name: str
    version: str
    programs: dict[str, str]
    ldflags: str = ""
    cgo: bool = False
    extra_files: tuple[str, ...] = ()  # files of ours beside go.mod that the build reads
    test_packages: dict[str, str] = field(default_factory=dict)  # test binary → package
    # Data files the programs need, concatenated from the upstream module into share/NAME:
    # (NAME, module path, files relative to that module's root).
    assets: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    source_module: str = ""  # copied from the module cache at `version`; tests built in it
    overlay: dict[str, str] = field(default_factory=dict)  # our file → the file it replaces
    suite: bool = True  # the test suite runs it; False: only the benchmarks do

    @property
    def module_dir(self) -> Path:
        return REFS_DIR / self.name

    def digest(self) -> str:
        if not (self.module_dir / "go.mod").exists():
            raise RefError(f"the Go module of {self.name} ({self.module_dir / 'go.mod'}) is not "
                           "here: the reference programs are built from a checkout of the "
                           "datastore, installed with `pip install -e .`")
        h = hashlib.sha256()
        for rel in ("go.mod", "go.sum", *self.extra_files, *self.overlay):
            h.update(rel.encode())
            h.update((self.module_dir / rel).read_bytes())
        h.update(f"{self.ldflags}{self.programs}{self.test_packages}{self.assets}"
                 f"{self.source_module}{self.overlay}".encode())
        h.update(go_version().encode())
        return h.hexdigest()[:12]

    def cache_dir(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}-{self.digest()}"


REFS: tuple[Ref, ...] = (
    Ref("etcd", "v3.6.16", {
        "etcd": "./cmd/etcd",
        "etcdctl": "go.etcd.io/etcd/etcdctl/v3",
        "etcdutl": "go.etcd.io/etcd/etcdutl/v3",
    }, extra_files=("cmd/etcd/main.go",)),
    # The server k8s.io/apiserver v0.37's storage tests are written for (their embedded
    # etcd), the oracle for scripts/storage_tests.py; RangeStream is new in 3.7.
    Ref("etcd37", "v3.7.0", {"etcd37": "./cmd/etcd"}, extra_files=("cmd/etcd/main.go",)),
    # the bbolt version etcd 3.6.16 links: its `bbolt check` judges our snapshot files
    Ref("bbolt", "v1.4.3", {"bbolt": "go.etcd.io/bbolt/cmd/bbolt"}),
    # an anchor of the benchmarks only; its cgo SQLite build is a third of a cold build
    Ref("kine", "v0.17.5", {"kine": "github.com/k3s-io/kine"}, cgo=True, suite=False),
    Ref("storagetests", "v0.37.2", {}, test_packages={
        "etcd3.test": "./pkg/storage/etcd3",
        "cacher.test": "./pkg/storage/cacher",
        "registry.test": "./pkg/registry/generic/registry",
    }, source_module="k8s.io/apiserver",
        overlay={"testserver/test_server.go": "pkg/storage/etcd3/testserver/test_server.go"}),
    # kwok's own default stages (what kwokctl hands it): nodes become Ready and renew their
    # Lease, pods become Running, deleted pods go away.
    Ref("kwok", "v0.8.0", {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}, assets=(
        ("kwok-stages.yaml", "sigs.k8s.io/kwok", tuple(f"kustomize/stage/{f}.yaml" for f in (
            "node/fast/node-initialize", "node/heartbeat-with-lease/node-heartbeat-with-lease",
            "pod/fast/pod-ready", "pod/fast/pod-complete", "pod/fast/pod-delete"))),)),
    Ref("kubernetes", KUBE_VERSION, {
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    }, ldflags=_kube_ldflags(KUBE_VERSION)),
    # Our own client-go load generator for scripts/bench_controlplane.py (main.go is ours).
    Ref("kubeload", "v0.37.2", {"kubeload": "."}, extra_files=("main.go",)),
    # Our own watch fan-out load (scripts/bench_watch.py --client go; main.go is ours), on
    # etcd's generated API: a Python client would be what limits the measurement.
    Ref("watchload", "v3.6.16", {"watchload": "."}, extra_files=("main.go",), suite=False),
)


class RefError(RuntimeError):
    """A reference program is missing or could not be built (the message says what to do)."""


def cache_root() -> Path:
    env = os.environ.get("DATASTORE_REFS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "datastore" / "refs"


_go_version: str | None = None


def go_version() -> str:
    """``go version``'s output; raises RefError when Go is not installed."""
    global _go_version
    if _go_version is None:
        go = shutil.which("go")
        if go is None:
            raise RefError(
                "Go is not installed (no `go` on PATH): the reference programs (kube-apiserver, "
                "etcd 3.6, bbolt, kine, kwok) are built from their Go modules. Install Go 1.26 or newer "
                "and run scripts/build_refs.py again.")
        _go_version = subprocess.run([go, "version"], check=True, capture_output=True,
                                     text=True).stdout.strip()
    return _go_version


def ref_for(binary_name: str) -> Ref:
    for ref in REFS:
        if binary_name in ref.programs or binary_name in ref.test_packages:
            return ref
    raise RefError(f"no reference program is called {binary_name!r}")


def binary(name: str) -> Path:
    """The path of a built reference program, or RefError saying how to build it."""
    ref = ref_for(name)
    path = ref.cache_dir() / "bin" / name
    if not path.exists():
        raise RefError(f"{name} ({ref.name} {ref.version}) is not built yet: "
                       f"run `python3 scripts/build_refs.py` (it caches under {cache_root()})")
    return path


def asset(ref_name: str, name: str) -> Path:
    """A data file a reference build copied from its module (``Ref.assets``)."""
    ref = next(r for r in REFS if r.name == ref_name)
    path = ref.cache_dir() / "share" / name
    if not path.exists():
        raise RefError(f"{name} ({ref.name} {ref.version}) is not built yet: "
                       f"run `python3 scripts/build_refs.py {ref.name}`")
    return path


def is_built(ref: Ref) -> bool:
    d = ref.cache_dir()
    return (all((d / "bin" / n).exists() for n in (*ref.programs, *ref.test_packages))
            and all((d / "share" / a[0]).exists() for a in ref.assets))


def build(ref: Ref, log: Callable[[str], None] = print) -> Path:
    """Build ``ref`` into its cache folder unless it is there already; returns the folder."""
    out = ref.cache_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    # One builder per reference at a time (two test runs may start together).
    with open(out.parent / f".{ref.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(ref):
            log(f"  {ref.name} {ref.version}: cached ({out})")
            return out
        _build_locked(ref, out, log)
    return out


def _build_locked(ref: Ref, out: Path, log: Callable[[str], None]) -> None:
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    env = dict(os.environ, CGO_ENABLED="1" if ref.cgo else "0", GOFLAGS="-trimpath",
               GOTOOLCHAIN="local")
    ldflags = f"-s -w {ref.ldflags}".strip()
    for i, (name, pkg) in enumerate(ref.programs.items(), 1):
        t0 = time.monotonic()
        log(f"  {ref.name} {ref.version}: building {name} ({i}/{len(ref.programs)}) ...")
        _go(["build", "-ldflags", ldflags, "-o", str(staging / "bin" / name), pkg], ref, env)
        log(f"  {ref.name} {ref.version}: {name} built in {time.monotonic() - t0:.0f} s")
    src = _copy_source(ref, staging / "src", env) if ref.source_module else ref.module_dir
    for name, pkg in ref.test_packages.items():
        t0 = time.monotonic()
        log(f"  {ref.name} {ref.version}: compiling the tests of {pkg} ...")
        _go(["test", "-c", "-o", str(staging / "bin" / name), pkg], ref, env, cwd=src)
        log(f"  {ref.name} {ref.version}: {name} built in {time.monotonic() - t0:.0f} s")
    for name, module, files in ref.assets:
        mod_dir = Path(_go(["list", "-m", "-f", "{{.Dir}}", module], ref, env).strip())
        (staging / "share").mkdir(exist_ok=True)
        docs = [(mod_dir / f).read_text().strip() for f in files]
        (staging / "share" / name).write_text("\n---\n".join(docs) + "\n")
    if ref.source_module:
        shutil.rmtree(src)  # the module cache keeps the pristine copy
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def _go(args: list[str], ref: Ref, env: dict[str, str], cwd: Path | None = None) -> str:
    """Run go; its standard output (progress such as "go: downloading" goes to stderr)."""
    cwd = cwd or ref.module_dir
    proc = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RefError(f"`go {' '.join(args)}` failed in {cwd}:\n{tail}")
    return proc.stdout


def _copy_source(ref: Ref, dest: Path, env: dict[str, str]) -> Path:
    """Copy ``ref.source_module`` (checked against our go.sum) to dest and lay our overlay on it.

    The copy is built as the main module, with its own go.mod and go.sum, as its authors
    test it; the module cache's files are read-only, so the copy is made writable.
    """
    out = _go(["mod", "download", "-json", f"{ref.source_module}@{ref.version}"], ref, env)
    shutil.copytree(json.loads(out)["Dir"], dest)
    for root, dirs, files in os.walk(dest):
        for n in dirs + files:
            os.chmod(os.path.join(root, n), 0o755 if n in dirs else 0o644)
    for ours, theirs in ref.overlay.items():
        target = dest / theirs
        if not target.parent.is_dir():
            raise RefError(f"{ref.source_module}@{ref.version} has no {target.parent.name}/ for "
                           f"{ours}: the overlay no longer fits this version")
        shutil.copyfile(ref.module_dir / ours, target)
    return dest


def build_all(names: list[str] | None = None, log: Callable[[str], None] = print,
              suite_only: bool = False) -> int:
    """Build (or reuse) every reference, or those named, or (``suite_only``) those the
    test suite runs; returns a process exit code."""
    try:
        go = go_version()
    except RefError as e:
        print(f"build_refs: error: {e}", file=sys.stderr)
        return 2
    refs = [r for r in REFS if (not names or r.name in names) and (r.suite or not suite_only)]
    log(f"reference programs ({go}), cache {cache_root()}")
    t0 = time.monotonic()
    for i, ref in enumerate(refs, 1):
        log(f"[{i}/{len(refs)}] {ref.name} {ref.version}")
        try:
            build(ref, log)
        except RefError as e:
            print(f"build_refs: error: {e}", file=sys.stderr)
            return 1
    log(f"reference programs ready in {time.monotonic() - t0:.0f} s")
    return 0
