"""The package a user installs: the sdist and the wheel, built as a release builds them.

``python -m build`` makes the sdist and then the wheel *from that sdist*, so a file the sdist
forgets breaks the wheel too. Each is installed into a fresh virtual environment with its runtime
dependencies only (no test or bench extras); the sdist with no C compiler reachable, since
rpcscope is pure Python. From each environment, outside the checkout, a short ``rpcscope demo``
must serve and count real calls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from rpcscope.example_shop.server import METHODS

REPO = Path(__file__).resolve().parent.parent

#: Short and self-contained: a free /metrics port; the access log goes to the working directory.
DEMO_ARGS = ("--duration", "2", "--no-progress", "--metrics-port", "0")

#: Folder in the checkout -> the package it installs as (pyproject's package-dir).
PACKAGES = {
    "src/rpcscope": "rpcscope",
    "collector": "rpcscope/collector",
    "exporters": "rpcscope/exporters",
    "examples/shop": "rpcscope/example_shop",
}

#: Names a C build would look for; none may be on the PATH of the no-compiler install.
COMPILERS = ("cc", "gcc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc", "x86_64-linux-gnu-g++")

#: Run inside each environment: where rpcscope is imported from, and what is not installed.
PROBE = """
import importlib.metadata as md, importlib.util as u, json, rpcscope
print(json.dumps({
    "file": rpcscope.__file__,
    "wheel": md.distribution("rpcscope").read_text("WHEEL"),
    "absent": [m for m in ("pytest", "grpc_tools", "opentelemetry.sdk", "collector", "exporters")
               if u.find_spec(m) is None],
}))
"""


def _env(**extra: str) -> dict[str, str]:
    """The suite's environment without anything that would reach the checkout or the dev venv."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("RPCSCOPE_", "OTEL_"))}
    env.update(extra)
    return env


def _run(cmd: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 300,
         ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=dict(env), capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], _env(), out)
    (sdist,) = out.glob("rpcscope-*.tar.gz")
    (wheel,) = out.glob("rpcscope-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_wheel_contains_the_packages_and_only_them(dists: dict[str, Path]) -> None:
    wheel = dists["wheel"]
    # Pure Python: one wheel for every platform and Python 3.
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_dir = next(n.split("/")[0] for n in names if n.endswith(".dist-info/WHEEL"))
        entry_points = zf.read(f"{meta_dir}/entry_points.txt").decode()
    # Nothing at the top level but rpcscope: no `collector`, `exporters` or `tests` import names.
    assert {n.split("/")[0] for n in names} == {"rpcscope", meta_dir}
    for folder, package in PACKAGES.items():
        shipped = {n for n in names if n.startswith(f"{package}/")
                   and n.count("/") == package.count("/") + 1 and n.endswith(".py")}
        source = {f"{package}/{p.name}" for p in (REPO / folder).glob("*.py")}
        assert shipped == source, folder
        assert f"{package}/__init__.py" in shipped
    assert "rpcscope/py.typed" in names
    assert "rpcscope/example_shop/shop.proto" in names
    assert "rpcscope = rpcscope._cli:main" in entry_points


def _fresh_venv(path: Path) -> Path:
    _run([sys.executable, "-m", "venv", str(path)], _env(), path.parent, timeout=120)
    return path / "bin"


def _check_installed(bin_dir: Path, work: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Runs the probe and the demo from ``bin_dir``'s environment; the probe's answer."""
    probe = json.loads(_run([str(bin_dir / "python"), "-c", PROBE], env, work).stdout)
    venv = bin_dir.parent.resolve()
    # The installed copy is what runs, not the checkout, and no test dependency came along.
    assert Path(probe["file"]).resolve().is_relative_to(venv), probe["file"]
    assert sorted(probe["absent"]) == sorted(
        ["pytest", "grpc_tools", "opentelemetry.sdk", "collector", "exporters"])

    report_path = work / "report.json"
    _run([str(bin_dir / "rpcscope"), "demo", *DEMO_ARGS, "--report", str(report_path)],
         env, work, timeout=180)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    served = {method: sum(report["calls"][method].values()) for method in METHODS}
    assert all(n > 0 for n in served.values()), served
    assert report["logs"]["delivered"] > 0
    return dict(probe)


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo(dists: dict[str, Path], tmp_path: Path) -> None:
    bin_dir = _fresh_venv(tmp_path / "venv")
    env = _env()
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(dists["wheel"])],
         env, tmp_path)
    _check_installed(bin_dir, tmp_path, env)


@pytest.mark.slow
def test_sdist_installs_without_a_c_compiler(dists: dict[str, Path], tmp_path: Path) -> None:
    bin_dir = _fresh_venv(tmp_path / "venv")
    # Only the new environment's own scripts on PATH, and every compiler variable pointing at a
    # command that fails: building anything native would fail the install.
    path = str(bin_dir)
    assert [c for c in COMPILERS if shutil.which(c, path=path)] == []
    false = shutil.which("false") or "/bin/false"
    env = _env(PATH=path, CC=false, CXX=false, LDSHARED=false, CPP=false)
    # The control: a project with one C extension cannot be installed in this environment.
    control = tmp_path / "control"
    control.mkdir()
    (control / "control.c").write_text("int control;\n")
    (control / "setup.py").write_text(
        "from setuptools import Extension, setup\n"
        "setup(name='control', version='0', ext_modules=[Extension('control', ['control.c'])])\n")
    failed = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", str(control)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert failed.returncode != 0
    assert "control.c" in failed.stdout + failed.stderr  # it failed compiling, not elsewhere

    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(dists["sdist"])],
         env, tmp_path)
    probe = _check_installed(bin_dir, tmp_path, env)
    # pip built the wheel it installed from the sdist here; it is the pure-Python one.
    assert "Root-Is-Purelib: true" in probe["wheel"]
    assert "Tag: py3-none-any" in probe["wheel"]
