"""Run untrusted Python (model-written code) in a contained child process.

Layers, strongest first; each is used when this machine allows it and the result names the active
ones (``SandboxResult.isolation``):

- ``pid-namespace``, ``net-namespace``, ``mount-namespace`` (``unshare``; as root, or through a user
  namespace): the code sees only its own processes, has no network interface but a down loopback,
  and every process dies with the namespace's init when the run ends.
- ``read-only-mounts``: inside the mount namespace every mount but the working directory is
  remounted read-only, then all capabilities are dropped, so even a root child cannot write
  elsewhere or undo it.
- ``cgroup-pids``: a pids cgroup caps the number of processes (this holds for root, unlike
  RLIMIT_NPROC) and lists every process to kill at the end, including ones that called setsid.
- ``rlimits``: address space / data (memory), CPU seconds, file size; no core files;
  ``no_new_privs``.
- ``audit-hook``: inside the interpreter, refuse sockets, writes/deletes/renames outside the
  working directory, ctypes, signals and (unless ``allow_processes``) process creation.

Always: a new session, a minimal environment (nothing of the caller's), a temporary working
directory removed afterwards, a wall-time limit, and at the end a kill of the process group, the
cgroup and every process carrying the run's environment marker; ``leftover`` counts survivors
(0 expected).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MARKER_ENV = "SYLLABUS_SANDBOX_RUN"
STATUSES = ("ok", "error", "timeout", "memory", "blocked")
_UNSHARE_FLAGS = ["--pid", "--fork", "--kill-child", "--net", "--mount", "--mount-proc"]


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one run. ``status`` is one of ``STATUSES``; ``blocked`` lists refusals."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    leftover: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------- the child's bootstrap
# Runs as the child's main program (python -I -c BOOTSTRAP CONFIG) and applies every in-process layer
# before it executes the user's code from main.py in the working directory.
_BOOTSTRAP = r'''
import ctypes, json, os, resource, sys, traceback
cfg = json.loads(sys.argv[1])
events = os.fdopen(cfg["events_fd"], "w", buffering=1)  # opened by the parent: outside the namespace
def emit(**kw):
    try:
        events.write(json.dumps(kw) + "\n")
    except Exception:
        pass
layers = []
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
WORK = os.path.realpath(cfg["work"])

if cfg["cgroup_procs"]:
    try:
        with open(cfg["cgroup_procs"], "w") as fh:
            fh.write("0")
        layers.append("cgroup-pids")
    except OSError as exc:
        emit(event="warning", what=f"cannot join cgroup: {exc}")

if cfg["mount_ns"]:
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
    KEEP = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024,
            "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24}
    ok = libc.mount(WORK.encode(), WORK.encode(), None, MS_BIND | MS_REC, None) == 0
    failed = []
    with open("/proc/self/mountinfo") as fh:
        mounts = [line.split() for line in fh]
    for f in mounts:
        point = f[4].encode().decode("unicode_escape")
        if point == WORK or point.startswith(WORK + "/"):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in f[5].split(","):
            flags |= KEEP.get(opt, 0)
        if libc.mount(None, point.encode(), None, flags, None) != 0:
            failed.append(point)
    if ok and not failed:
        layers.append("read-only-mounts")
    else:
        emit(event="warning", what=f"read-only remount failed for {failed[:5]} (work bind ok: {ok})")

mb = cfg["memory_bytes"]
for lim, val in ((resource.RLIMIT_AS, mb), (resource.RLIMIT_DATA, mb), (resource.RLIMIT_CORE, 0),
                 (resource.RLIMIT_FSIZE, cfg["file_bytes"]), (resource.RLIMIT_CPU, cfg["cpu_seconds"])):
    try:
        resource.setrlimit(lim, (val, val))
    except (ValueError, OSError) as exc:
        emit(event="warning", what=f"setrlimit {lim}: {exc}")
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
layers.append("rlimits")

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
for cap in range(64):
    libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (fails harmlessly for unknown caps)
if libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), (_CapData * 2)()) == 0:
    layers.append("no-capabilities")

os.chdir(WORK)
ALLOW_PROC = cfg["allow_processes"]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_ARGS = {"os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.chmod": (0,),
             "os.chown": (0,), "os.symlink": (1,), "os.link": (0, 1), "os.truncate": (0,), "os.utime": (0,),
             "shutil.rmtree": (0,), "os.mkfifo": (0,), "os.mknod": (0,), "os.chflags": (0,), "os.setxattr": (0,),
             "os.removexattr": (0,), "shutil.move": (0, 1)}
PROCESS_EVENTS = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
                  "subprocess.Popen", "pty.spawn"}
ALWAYS_DENIED = {"os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.chroot"}

class SandboxViolation(PermissionError):
    pass

def _inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.fsdecode(path))
    return p == WORK or p.startswith(WORK + os.sep)

def _deny(what):
    emit(event="blocked", what=what)
    raise SandboxViolation(f"sandbox: {what} is not allowed")

def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        writing = bool(flags & WRITE_FLAGS) if flags else bool(mode) and any(c in str(mode) for c in "wax+")
        if writing and not _inside(path):
            _deny(f"write to {os.fsdecode(path)!s}")
    elif event in PATH_ARGS:
        for i in PATH_ARGS[event]:
            if i < len(args) and args[i] is not None and not _inside(args[i]):
                _deny(f"{event} on {os.fsdecode(args[i])!s}")
    elif event.startswith("socket."):
        _deny(f"network ({event})")
    elif event in PROCESS_EVENTS and not ALLOW_PROC:
        _deny(f"process creation ({event})")
    elif event in ALWAYS_DENIED:
        _deny(event)

emit(event="layers", layers=layers + ["audit-hook"])
with open("main.py", encoding="utf-8") as fh:
    source = fh.read()
code = compile(source, "main.py", "exec")
sys.argv = ["main.py"]
sys.path = [p for p in sys.path if p]
del cfg
sys.addaudithook(_hook)
try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except MemoryError:
    emit(event="memory")
    traceback.print_exc()
    sys.exit(1)
except SystemExit:
    raise
except BaseException:
    traceback.print_exc()
    sys.exit(1)
'''


# --------------------------------------------------------------------------- the parent side
@functools.cache
def _unshare_prefix() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``unshare`` command that works here (as root, else via a user namespace), or none."""
    exe = shutil.which("unshare")
    if not exe:
        return (), ()
    layers = ("pid-namespace", "net-namespace", "mount-namespace")
    for extra in ([], ["--user", "--map-root-user"]):
        cmd = [exe, *extra, *_UNSHARE_FLAGS]
        try:
            probe = subprocess.run([*cmd, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return tuple(cmd), layers
    return (), ()


def _cgroup_root() -> Path | None:
    """A writable pids-cgroup folder (v1 ``pids`` hierarchy or the v2 root with pids enabled)."""
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").is_file() and os.access(v1, os.W_OK):
        return v1
    v2 = Path("/sys/fs/cgroup")
    try:
        if "pids" in (v2 / "cgroup.subtree_control").read_text().split() and os.access(v2, os.W_OK):
            return v2
    except OSError:
        pass
    return None


def _make_cgroup(token: str, max_processes: int) -> Path | None:
    root = _cgroup_root()
    if root is None:
        return None
    path = root / f"syllabus-sandbox-{token}"
    try:
        path.mkdir()
        (path / "pids.max").write_text(str(max_processes))
        return path
    except OSError:
        _remove_cgroup(path)
        return None


def _cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _remove_cgroup(path: Path, wait_s: float = 2.0) -> None:
    deadline = time.monotonic() + wait_s
    while path.exists():
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _marked_pids(token: str) -> list[int]:
    """Live processes whose environment carries this run's marker (survivors that left the group)."""
    needle = f"{MARKER_ENV}={token}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                if needle not in fh.read():
                    continue
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _kill_everything(proc: subprocess.Popen, cgroup: Path | None, token: str, wait_s: float = 5.0) -> int:
    """Kill the group, the cgroup and marked stragglers until none is left; return the survivors."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()
    deadline = time.monotonic() + wait_s
    while True:
        alive = sorted(set((_cgroup_pids(cgroup) if cgroup else []) + _marked_pids(token)))
        if not alive or time.monotonic() > deadline:
            return len(alive)
        _kill(alive)
        time.sleep(0.01)


def _read_tail(path: Path, limit: int) -> str:
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - limit))
        return fh.read().decode("utf-8", errors="replace")


def _minimal_env(work: Path, token: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", MARKER_ENV: token,
    }


def run_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    max_processes: int = 64,
    allow_processes: bool = False,
    file_size_mb: int = 64,
    max_output_chars: int = 100_000,
    python: str = sys.executable,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a contained child; never raises for anything the code does.

    ``timeout_s`` is wall time, ``memory_mb`` the address-space limit, ``max_processes`` the cgroup
    cap (where cgroups are available); ``allow_processes`` lets the code fork/exec (still contained).
    """
    start = time.monotonic()
    token = secrets.token_hex(8)
    root = Path(tempfile.mkdtemp(prefix="syllabus-sandbox-")).resolve()
    work = root / "work"
    work.mkdir()
    (work / "main.py").write_text(code, encoding="utf-8")
    events_path = root / "events.jsonl"
    cgroup = _make_cgroup(token, max_processes)
    prefix, ns_layers = _unshare_prefix()
    config = {
        "work": str(work), "allow_processes": allow_processes,
        "cgroup_procs": str(cgroup / "cgroup.procs") if cgroup else None, "mount_ns": bool(prefix),
        "memory_bytes": int(memory_mb) << 20, "file_bytes": int(file_size_mb) << 20,
        "cpu_seconds": int(timeout_s) + 2,
    }
    timed_out = False
    try:
        with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err, \
                open(events_path, "wb") as events_file:
            config["events_fd"] = events_file.fileno()
            cmd = [*prefix, python, "-I", "-c", _BOOTSTRAP, json.dumps(config)]
            proc = subprocess.Popen(cmd, cwd=work, env=_minimal_env(work, token), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True, pass_fds=(events_file.fileno(),))
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                leftover = _kill_everything(proc, cgroup, token)
        returncode = None if timed_out else proc.returncode
        stdout = _read_tail(root / "stdout", max_output_chars)
        stderr = _read_tail(root / "stderr", max_output_chars)
        events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()] \
            if events_path.exists() else []
    finally:
        if cgroup:
            _remove_cgroup(cgroup)
        shutil.rmtree(root, ignore_errors=True)
    warnings = [e["what"] for e in events if e["event"] == "warning"]
    layers = next((e["layers"] for e in events if e["event"] == "layers"), [])
    blocked = tuple(e["what"] for e in events if e["event"] == "blocked")
    if timed_out:
        status = "timeout"
    elif any(e["event"] == "memory" for e in events) or (returncode and stderr.rstrip().endswith("MemoryError")):
        status = "memory"
    elif returncode == 0:
        status = "ok"
    elif blocked:
        status = "blocked"
    else:
        status = "error"
    return SandboxResult(status=status, returncode=returncode, stdout=stdout, stderr=stderr,
                         seconds=time.monotonic() - start, isolation=tuple(ns_layers) + tuple(layers),
                         blocked=blocked, leftover=leftover, warnings=tuple(warnings))
