"""requirements.txt, the lock file a Python buildpack installs, generated from pyproject.toml.

pyproject.toml stays the one source of truth: ``make lock`` runs ``write``, which resolves the
runtime dependencies with ``uv pip compile`` (universal markers, for the Python version in
``.python-version``, keeping the pins already in the file unless ``--upgrade`` is passed) and
writes requirements.txt as

    a header recording its inputs, one a line: pyproject's requires-python and runtime
    dependencies, and ``.python-version``;
    every package pinned, but pip (the platform's own; pip-tools leaves it out too);
    ``.``: the project itself, so ``pip install -r requirements.txt`` installs the app.

``make lock-check`` runs ``check``, which needs no network and no resolver: the header must
list exactly the current inputs, ``.python-version`` must satisfy requires-python, and every
direct dependency must be pinned to a version its specifier admits (a pin edited by hand is
caught too). Resolving again at check
time would need the registry and would call the file stale whenever anything new is
released; comparing the recorded inputs answers the only question the check asks: was the
lock generated from this pyproject.toml?
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
HEADER = "# input: "
STALE = "requirements.txt is out of date with pyproject.toml: run make lock"


def python_version(pyproject: Path) -> str:
    """The buildpack's Python: ``.python-version`` beside pyproject.toml."""
    return (pyproject.parent / ".python-version").read_text().strip()


def inputs(pyproject: Path) -> list[str]:
    """The lines the header records: requires-python, the buildpack's Python, then each
    runtime dependency."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = sorted(
        (Requirement(text) for text in project.get("dependencies", [])),
        key=lambda r: canonicalize_name(r.name),
    )
    return [
        f"requires-python {project.get('requires-python', '')}",
        f".python-version {python_version(pyproject)}",
    ] + [str(r) for r in requirements]


def pins(lock: str) -> dict[str, Version]:
    """Package name -> pinned version, for each ``name==version`` line."""
    found: dict[str, Version] = {}
    for line in lock.splitlines():
        spec = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in spec:
            name, version = spec.split("==", 1)
            found[canonicalize_name(name.split("[", 1)[0])] = Version(version.strip())
    return found


def problems(pyproject: Path, lock_file: Path) -> list[str]:
    """Why the lock file does not match pyproject.toml; empty when it does."""
    if not lock_file.is_file():
        return [f"{lock_file.name} is missing"]
    lock = lock_file.read_text()
    recorded = [line[len(HEADER) :] for line in lock.splitlines() if line.startswith(HEADER)]
    wanted = inputs(pyproject)
    found: list[str] = []
    if recorded != wanted:
        changed = sorted(set(recorded) ^ set(wanted)) or ["their order"]
        found.append("recorded inputs differ: " + ", ".join(changed))
    requires = SpecifierSet(wanted[0].split(" ", 1)[1])
    if not requires.contains(python_version(pyproject)):
        found.append(f".python-version {python_version(pyproject)} is outside {wanted[0]}")
    pinned = pins(lock)
    for text in wanted[2:]:
        requirement = Requirement(text)
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            found.append(f"{requirement.name} is not pinned")
        elif not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{requirement.name}=={version} does not satisfy {text}")
    if "." not in (line.strip() for line in lock.splitlines()):
        found.append("the line `.` that installs the project is missing")
    return found


def write(pyproject: Path, lock_file: Path, upgrade: bool) -> None:
    beside = Path(sys.executable).parent / "uv"  # the venv's, from the dev extra
    uv = str(beside) if beside.is_file() else shutil.which("uv") or "uv"
    with tempfile.TemporaryDirectory() as tmp:
        resolved = Path(tmp) / "requirements.txt"
        if lock_file.is_file():  # uv prefers the versions already pinned there
            shutil.copy(lock_file, resolved)
        command = [uv, "pip", "compile", str(pyproject), "--output-file", str(resolved)]
        command += ["--universal", "--python-version", python_version(pyproject)]
        # pip is the platform's: sqlite-utils depends on it, and any version serves.
        command += ["--no-header", "--quiet", "--no-emit-package", "pip"]
        command += ["--annotation-style", "line"] + (["--upgrade"] if upgrade else [])
        subprocess.run(command, check=True, cwd=pyproject.parent)
        body = [line for line in resolved.read_text().splitlines() if line.strip() != "."]
    header = [
        "# The lock file a Python buildpack installs: `pip install -r requirements.txt`.",
        "# Generated from pyproject.toml by `make lock`; do not edit. `make lock-check` (in",
        "# `make lint`) compares the inputs recorded below with pyproject.toml.",
    ] + [HEADER + line for line in inputs(pyproject)]
    lock_file.write_text("\n".join([*header, *body, "# the project itself", "."]) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["write", "check"])
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.txt")
    parser.add_argument("--upgrade", action="store_true", help="write: newest versions allowed")
    args = parser.parse_args()
    if args.command == "write":
        write(args.pyproject, args.lock, args.upgrade)
        return 0
    found = problems(args.pyproject, args.lock)
    if found:
        print(f"{STALE} ({'; '.join(found)})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
