"""Build the relocatable OSCAR bundle: `fwatchdog` plus its folder `fwatchdog.d/`.

    python bundle/build.py [--out dist/oscar-bin] [--force]

Run with the project's venv Python (`make oscar-bin`). The result runs in any Linux
image of the build machine's architecture, with or without a libc, from a read-only
folder, as any user:

    fwatchdog                      static launcher (bundle/launcher.c)
    fwatchdog.d/bin/python3.11     the venv's interpreter
    fwatchdog.d/lib/*.so*          glibc's loader, glibc and every library the ELF
                                   files below need (their ldd closure)
    fwatchdog.d/lib/python3.11/    the standard library, pruned, with lib-dynload/
                                   and site-packages/ (watchdog and its runtime
                                   dependencies), every .py
                                   compiled ahead
    fwatchdog.d/BUILD-ID           hash of the inputs: an unchanged tree is not rebuilt

The .pyc files are "unchecked-hash": Python uses them without comparing the source's
mtime, so a copy that does not keep mtimes (kubectl cp, COPY, a PVC filled by a Job)
starts as fast as the original and never compiles at start. Python finds its prefix
from its own path (the launcher passes it with --argv0): the standard layout
bin/python3.11 + lib/python3.11/os.py is the landmark, so no variable is needed.
"""

from __future__ import annotations

import argparse
import compileall
import fcntl
import hashlib
import importlib.metadata
import os
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
LOADER = "ld-linux-x86-64.so.2"

# Standard-library parts the gateway never imports: tests, GUIs, installers, docs,
# build files. Each costs only disk, but the volume is shared by every pod's image.
STDLIB_SKIP = {
    "test", "idlelib", "tkinter", "turtledemo", "turtle.py", "ensurepip", "pydoc_data",
    "lib2to3", "distutils", "venv", "site-packages", "curses", "sqlite3", "dbm",
    "__pycache__", "__phello__", "__hello__.py", "antigravity.py", "this.py",
}
# Extension modules for the above, test modules, and those that would pull libraries
# (readline, ncurses, libnsl, sqlite) into the closure for nothing.
DYNLOAD_SKIP = re.compile(
    r"^(_test\w*|_ctypes_test|_xxtestfuzz|_xxsubinterpreters|xxlimited\w*|_tkinter|_curses\w*"
    r"|readline|nis|spwd|ossaudiodev|_sqlite3|_dbm|_gdbm|audioop)\."
)
# glibc opens libgcc_s itself (pthread_cancel, backtraces) without a DT_NEEDED, so ldd
# never names it: ship it, or an image without it (or with a newer one) would decide.
EXTRA_LIBS = ["libgcc_s.so.1"]


def inputs_digest() -> str:
    """What the bundle is made of: our sources, the build recipe, the interpreter and
    the versions of the installed dependencies."""
    h = hashlib.sha256()
    files = sorted([*(ROOT / "watchdog").glob("*.py"), ROOT / "watchdog" / "_spawn.c",
                    *(ROOT / "bundle").glob("*.[cp]*"), ROOT / "pyproject.toml",
                    ROOT / "setup.py"])
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(sys.version.encode())
    for name in sorted(runtime_distributions()):
        h.update(f"{name}=={importlib.metadata.version(name)}\n".encode())
    return h.hexdigest()[:16]


def runtime_distributions() -> set[str]:
    """The project's runtime dependencies (pyproject.toml, not the venv's possibly
    older metadata of the editable install), then theirs as installed in this venv;
    markers evaluated here, extras never: those are for tests and linters."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        direct = tomllib.load(f)["project"]["dependencies"]
    seen: set[str] = set()
    todo: list[str] = list(direct)
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = canonical(req.name)
        if key in seen:
            continue
        try:
            installed = importlib.metadata.version(key)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"{req}: not installed in this venv (make setup)") from None
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            raise SystemExit(f"{req}: the venv has {installed} (make setup)")
        seen.add(key)
        todo.extend(importlib.metadata.requires(key) or [])
    return seen


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def copy_stdlib(dest: Path) -> None:
    src = Path(sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix,
                                                  "base": sys.base_prefix}))
    config = f"config-{sys.version_info.major}.{sys.version_info.minor}"

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        skip = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".exe"))}
        if here == src:
            skip |= {n for n in names if n in STDLIB_SKIP or n.startswith(config)}
        if here.name == "lib-dynload":
            skip |= {n for n in names if DYNLOAD_SKIP.match(n)}
        if here.name in {"tests", "test", "idle_test"} or here == src / "unittest" / "test":
            skip |= set(names)
        skip |= {n for n in names if n in {"tests", "idle_test"} and (here / n).is_dir()}
        return skip

    shutil.copytree(src, dest, ignore=ignore, symlinks=False)


def copy_distribution(name: str, site: Path) -> None:
    """Every file its RECORD lists under site-packages (no scripts in bin/, no stale
    bytecode: the bundle compiles its own)."""
    dist = importlib.metadata.distribution(name)
    for entry in dist.files or []:
        if entry.parts[0] == ".." or "__pycache__" in entry.parts or entry.suffix == ".pyc":
            continue
        src = Path(str(dist.locate_file(entry)))
        if not src.is_file():
            continue
        target = site / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def copy_project(site: Path) -> None:
    """Our own package from the source tree, and `_spawn` compiled from its C source
    here with the flags setup.py gives setuptools, so the bundle never ships a
    stale extension left over in the tree."""
    pkg = site / "watchdog"
    pkg.mkdir(parents=True)
    for f in (ROOT / "watchdog").glob("*.py"):
        shutil.copy2(f, pkg / f.name)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    subprocess.run([*cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra",
                    "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                    f"-I{sysconfig.get_path('include')}",
                    str(ROOT / "watchdog" / "_spawn.c"), "-o", str(pkg / f"_spawn{suffix}")],
                   check=True)


def elf_files(top: Path) -> Iterator[Path]:
    for path in sorted(top.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    yield path


def needed_libraries(elves: Iterable[Path]) -> set[Path]:
    """The ldd closure (ldd already follows dependencies of dependencies). ldd is the
    build machine's, that is the loader and glibc the bundle ships."""
    found: set[Path] = set()
    for elf in elves:
        out = subprocess.run(["ldd", str(elf)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            match = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
            if match:
                found.add(Path(match.group(1)))
            elif "not found" in line:
                raise SystemExit(f"{elf}: {line.strip()}")
    return found


def find_library(soname: str) -> Path:
    out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.strip().startswith(soname + " ") and "x86-64" in line:
            return Path(line.rsplit("=>", 1)[1].strip())
    raise SystemExit(f"{soname} not found on the build machine")


def build(out: Path) -> None:
    stage = out.with_name(out.name + ".tmp")
    shutil.rmtree(stage, ignore_errors=True)
    top = stage / "fwatchdog.d"
    lib = top / "lib"
    stdlib = lib / PY
    site = stdlib / "site-packages"
    (top / "bin").mkdir(parents=True)

    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror",
                    "-o", str(stage / "fwatchdog"), str(ROOT / "bundle" / "launcher.c")],
                   check=True)
    shutil.copy2(Path(sys.base_prefix) / "bin" / PY, top / "bin" / PY)
    copy_stdlib(stdlib)
    site.mkdir()
    for name in sorted(runtime_distributions()):
        copy_distribution(name, site)
    copy_project(site)

    libs = needed_libraries(elf_files(top)) | {find_library(n) for n in EXTRA_LIBS}
    libs |= needed_libraries(find_library(n) for n in EXTRA_LIBS)
    for path in sorted(libs):
        # by the name the loader asks for (the soname), with the real file's content
        shutil.copy2(path.resolve(), lib / path.name)
    if not (lib / LOADER).is_file():
        raise SystemExit(f"the loader {LOADER} is not in the closure")
    # The interpreter (pyenv builds it with -g) and the extension modules carry debug
    # symbols the loader never reads: about a third of the bundle. The system's
    # libraries come stripped already.
    python_elves = [top / "bin" / PY, *lib.glob("libpython*"), *elf_files(stdlib)]
    subprocess.run(["strip", "--strip-unneeded", *map(str, python_elves)], check=True)

    # unchecked-hash: valid whatever the files' mtimes become (see the docstring)
    ok = compileall.compile_dir(
        str(stdlib), quiet=1, workers=1,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    if not ok:
        raise SystemExit("compileall failed")
    (top / "BUILD-ID").write_text(inputs_digest() + "\n")

    # The tree before is kept until the next build: a gateway started from it (a test
    # that bind-mounted it) goes on finding its files.
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    stage.rename(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "oscar-bin")
    parser.add_argument("--force", action="store_true", help="rebuild even if fresh")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    # one build at a time (several test runs may ask at once); the one that waited
    # finds the bundle fresh
    with open(out.with_name(f".{out.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = out / "fwatchdog.d" / "BUILD-ID"
        if not args.force and stamp.is_file() and stamp.read_text().strip() == inputs_digest():
            print(f"{out}: fresh")
            return 0
        build(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: built, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
