"""Which Python interpreter runs the engine, and setting up the engine's own environment.

`resolve_python()` picks, in order:
  1. the interpreter set in the add-on preferences;
  2. the engine environment made by "Set up engine": a venv in the extension's user directory
     (`<extensions>/.user/<repo>/<id>/engine-env`), used only once its setup finished (READY_FILE);
  3. Blender's own Python (`sys.executable`), when it has every package in requirements.txt.

Setting up runs this file as a script in a subprocess (`PYTHON engine_env.py ENV_DIR REQUIREMENTS`), which speaks
the engine's JSON-lines protocol, so the Blender side follows it like any engine job. That is why the module
imports only the standard library at the top: bpy and the add-on's own modules are imported where needed.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

ADDON_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ADDON_ROOT / "requirements.txt"
ENV_FOLDER = "engine-env"
READY_FILE = "unposed-ready.json"  # written last by the setup: {"requirements_sha256": ..., "python": ...}

# Printed by the checked interpreter: the installed version of each distribution named on its command line.
_VERSIONS_SCRIPT = """\
import importlib.metadata as m, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = m.version(name)
    except m.PackageNotFoundError:
        found[name] = None
print(json.dumps(found))
"""

_checked: dict[str, dict[str, str | None] | Exception] = {}


class EngineEnvError(Exception):
    """No usable engine interpreter, or the engine environment cannot be set up. The message says what to do."""


def requirement_names(requirements: Path = REQUIREMENTS) -> list[str]:
    """Distribution names in a requirements file (pip options and comments skipped)."""
    names = []
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\s<>=!~;\[@]", line, maxsplit=1)[0])
    return names


def _requirements_digest(requirements: Path = REQUIREMENTS) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def env_python(directory: Path) -> Path:
    """The interpreter of the venv in `directory`."""
    return directory / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def env_dir(create: bool = False) -> Path:
    """The engine environment's folder in the extension's user directory."""
    import bpy

    from ..ui.preferences import ADDON_PACKAGE

    path = bpy.utils.extension_path_user(ADDON_PACKAGE, path=ENV_FOLDER, create=create)
    if not path:
        raise EngineEnvError(f"cannot create the engine environment folder {ENV_FOLDER!r} in Blender's "
                             "extension user directory (see the console for the reason)")
    return Path(path)


def ready_env_python() -> Path | None:
    """The engine environment's interpreter, or None unless its setup has finished."""
    directory = env_dir()
    python = env_python(directory)
    return python if (directory / READY_FILE).is_file() and python.is_file() else None


def env_is_stale() -> bool:
    """True when the engine environment was set up from a different requirements.txt (the add-on changed)."""
    try:
        ready = json.loads((env_dir() / READY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return ready.get("requirements_sha256") != _requirements_digest()


def installed_requirements(python: str | os.PathLike, refresh: bool = False) -> dict[str, str | None]:
    """Installed version of each engine requirement in `python`'s environment (None: missing). Cached per path."""
    key = str(python)
    if refresh or key not in _checked:
        try:
            proc = subprocess.run([key, "-c", _VERSIONS_SCRIPT, *requirement_names()], capture_output=True,
                                  text=True, timeout=60, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                raise EngineEnvError(f"the Python interpreter {key} does not run: {last}")
            _checked[key] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            _checked[key] = EngineEnvError(f"the Python interpreter {key} does not run: {exc}")
        except EngineEnvError as exc:
            _checked[key] = exc
    found = _checked[key]
    if isinstance(found, Exception):
        raise found
    return found


def forget_checks() -> None:
    """Drop cached interpreter checks (after a setup, or when the preferences change)."""
    _checked.clear()


def resolve_python(configured: str = "") -> tuple[str, str]:
    """(engine interpreter, where it comes from: "preferences", "engine environment" or "Blender's Python")."""
    import bpy

    if configured:
        python = Path(bpy.path.abspath(configured)).expanduser()
        if not python.is_file():
            raise EngineEnvError(f"the engine Python set in the Unposed preferences does not exist: {python}")
        missing = [name for name, version in installed_requirements(python).items() if version is None]
        if missing:
            raise EngineEnvError(f"the engine Python set in the Unposed preferences ({python}) lacks "
                                 f"{', '.join(missing)}: install requirements.txt from the add-on folder into it")
        return str(python), "preferences"
    python = ready_env_python()
    if python is not None:
        return str(python), "engine environment"
    missing = [name for name, version in installed_requirements(sys.executable).items() if version is None]
    if not missing:
        return sys.executable, "Blender's Python"
    raise EngineEnvError(f"the engine is not set up (Blender's Python lacks {', '.join(missing)}): use "
                         "Set up engine in the Unposed preferences, or set an engine Python there")


def status(configured: str = "") -> tuple[bool, str]:
    """(usable, one line for the preferences) about the engine interpreter."""
    try:
        python, source = resolve_python(configured)
    except EngineEnvError as exc:
        return False, str(exc)
    text = f"Engine: {source} ({python})"
    if source == "engine environment" and env_is_stale():
        text += "; requirements changed since setup, set up again"
    return True, text


def job_environment(hub_cache: str = "") -> dict[str, str]:
    """Environment variables for engine jobs: the model hub cache, no downloads while online access is off, and
    OpenMP threads that sleep when idle (spinning threads made CPU training 3-6x slower beside Blender's own work)."""
    import bpy

    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if hub_cache:
        env["HF_HUB_CACHE"] = str(Path(bpy.path.abspath(hub_cache)).expanduser())
    if not bpy.app.online_access:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def check_online_access() -> None:
    """Setting up downloads packages: refuse unless Blender allows online access."""
    import bpy

    if not bpy.app.online_access:
        raise EngineEnvError("setting up the engine downloads Python packages (PyTorch, pycolmap, OpenCV) from "
                             "PyPI, but online access is off: allow it in Preferences > System > Network, or set "
                             "an engine Python in the Unposed preferences")


def setup_command(requirements: Path = REQUIREMENTS) -> list[str]:
    """The command line that (re)creates the engine environment and installs `requirements` into it."""
    check_online_access()
    return [sys.executable, str(Path(__file__).resolve()), str(env_dir(create=True)), str(requirements)]


def setup(requirements: Path = REQUIREMENTS, *, on_event: Callable[[dict[str, Any]], None] | None = None,
          cancel: Callable[[], bool] | None = None) -> str:
    """Set up the engine environment synchronously; its interpreter. Raises EngineEnvError, JobError, JobCancelled."""
    from .runner import EngineJob

    job = EngineJob()
    job.start(setup_command(requirements))
    try:
        result = job.wait(on_event=on_event, cancel=cancel)
    finally:
        forget_checks()
    return result["python"]


# -- the setup job itself (runs in the subprocess) ------------------------------------------------------------
def _build_env(directory: Path, requirements: Path, progress: Any, atomic_file: Callable) -> None:
    import venv

    ready = directory / READY_FILE
    if ready.exists():
        ready.unlink()  # from here until the end, the environment is not usable
    progress.stage("Creating the engine environment", 1)
    try:
        venv.EnvBuilder(clear=True, with_pip=True, symlinks=os.name != "nt").create(directory)
    except (OSError, subprocess.CalledProcessError) as exc:
        output = getattr(exc, "output", None) or ""
        raise EngineEnvError(f"cannot create a Python environment in {directory}: {exc}\n{output}".strip()) from exc
    progress.advance()

    python = env_python(directory)
    progress.stage("Installing packages", len(requirement_names(requirements)))
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "--progress-bar", "off", "-r", str(requirements)]
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          text=True, errors="replace") as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            tail.append(line)
            # pip names each requirement of the file once, "(from -r FILE (line N))", as it gets to it.
            if "(from -r " in line and line.startswith(("Collecting ", "Requirement already satisfied: ")):
                progress.advance(message=line.split()[1 if line.startswith("Collecting") else 3])
            else:
                progress.log(line)
    if proc.returncode != 0:
        errors = [line for line in tail if line.startswith("ERROR")] or list(tail)
        raise EngineEnvError(f"pip could not install {requirements.name} (exit status {proc.returncode}):\n"
                             + "\n".join(errors))
    with atomic_file(ready, "w") as f:
        json.dump({"requirements_sha256": _requirements_digest(requirements), "python": sys.version.split()[0]}, f)


def _setup_main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python engine_env.py ENV_DIR REQUIREMENTS", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ADDON_ROOT))
    from engine.atomic import atomic_file
    from engine.progress import Progress

    directory, requirements = Path(argv[0]), Path(argv[1])
    progress = Progress("jsonl")
    try:
        _build_env(directory, requirements, progress, atomic_file)
    except KeyboardInterrupt:
        progress.error("cancelled", "engine setup cancelled")
        return 130
    except EngineEnvError as exc:
        progress.error("EngineEnvError", str(exc))
        return 2
    progress.result({"python": str(env_python(directory)), "env": str(directory)})
    return 0


if __name__ == "__main__":
    sys.exit(_setup_main(sys.argv[1:]))
