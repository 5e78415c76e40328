"""The sandbox contains what model-written code might do, and reports it as a failure."""

from __future__ import annotations

import concurrent.futures as cf
import os
import secrets
import textwrap
import time
from pathlib import Path

import pytest

from syllabus.sandbox import run_python


def _processes_with(needle: str) -> list[int]:
    """Live processes whose command line contains ``needle``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != b"Z":
            found.append(int(entry.name))
    return found


def test_ok_and_error_are_told_apart():
    ok = run_python("print(sum(range(10)))", timeout_s=10)
    assert ok.status == "ok" and ok.returncode == 0 and ok.stdout == "45\n" and ok.leftover == 0
    bad = run_python("assert 1 == 2, 'nope'", timeout_s=10)
    assert bad.status == "error" and bad.returncode == 1 and "AssertionError: nope" in bad.stderr


def test_infinite_loop_times_out():
    r = run_python("while True:\n    pass", timeout_s=1.5)
    assert r.status == "timeout" and not r.ok
    assert 1.5 <= r.seconds < 8 and r.leftover == 0


def test_memory_hog_is_stopped():
    r = run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))", timeout_s=20, memory_mb=256)
    assert r.status == "memory", r.stderr[-500:]


def test_writing_outside_the_working_directory_is_refused(tmp_path):
    target = tmp_path / "host.txt"
    target.write_text("host data")
    code = f"""
    open({str(target)!r}, 'w').write('overwritten')
    """
    r = run_python(textwrap.dedent(code), timeout_s=10)
    assert r.status == "blocked" and any("write to" in b for b in r.blocked)
    deleting = run_python(f"import os\nos.remove({str(target)!r})", timeout_s=10)
    assert deleting.status == "blocked"
    assert target.read_text() == "host data"
    inside = run_python("open('scratch.txt', 'w').write('x')\nprint(open('scratch.txt').read())", timeout_s=10)
    assert inside.status == "ok" and inside.stdout == "x\n"


def test_low_level_writes_outside_are_stopped_by_the_kernel_where_available(tmp_path):
    """os.open relative to a directory fd slips past path checks; read-only mounts still stop it."""
    code = f"""
    import os
    fd = os.open({str(tmp_path)!r}, os.O_RDONLY)
    os.close(os.open('escaped.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    """
    r = run_python(textwrap.dedent(code), timeout_s=10)
    if "read-only-mounts" not in r.isolation:
        pytest.skip(f"no mount namespace here (isolation: {r.isolation})")
    assert r.status == "error" and "Read-only file system" in r.stderr
    assert not (tmp_path / "escaped.txt").exists()


def test_sockets_are_refused():
    r = run_python("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)", timeout_s=10)
    assert r.status == "blocked" and any("network" in b for b in r.blocked)


def test_child_processes_have_no_network_either():
    """A child interpreter has no audit hook; the network namespace still holds."""
    code = """
    import subprocess, sys
    probe = "import socket; socket.create_connection(('1.1.1.1', 80), timeout=3)"
    sys.exit(subprocess.run([sys.executable, '-c', probe]).returncode)
    """
    r = run_python(textwrap.dedent(code), timeout_s=20, allow_processes=True)
    if "net-namespace" not in r.isolation:
        pytest.skip(f"no network namespace here (isolation: {r.isolation})")
    assert r.status == "error" and "Network is unreachable" in r.stderr, r.stderr[-500:]


def test_process_creation_is_refused_by_default():
    r = run_python("import os\nwhile True:\n    os.fork()", timeout_s=10)
    assert r.status == "blocked" and any("process creation" in b for b in r.blocked)


def test_spawned_processes_are_all_killed_afterwards():
    """Bounded fork storm: 300 sleeping children, some in their own session, one double-forked orphan."""
    mark = f"8{secrets.randbelow(10**6):06d}.5"  # a unique sleep argument to find them by
    code = f"""
    import os, sys, time
    for i in range(300):
        if os.fork() == 0:
            if i % 3 == 0:
                os.setsid()
            if i == 0 and os.fork() != 0:
                os._exit(0)
            os.execv('/bin/sleep', ['sleep', {mark!r}])
    print('spawned', flush=True)
    time.sleep(600)
    """
    r = run_python(textwrap.dedent(code), timeout_s=15, allow_processes=True, max_processes=400)
    assert r.status == "timeout" and "spawned" in r.stdout, (r.status, r.stderr[-800:])
    assert r.leftover == 0
    time.sleep(0.2)
    assert _processes_with(f"sleep {mark}") == []


def test_cgroup_caps_the_number_of_processes():
    code = """
    import os, time
    n = 0
    try:
        while n < 500:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
    except OSError:
        pass
    print(n)
    """
    r = run_python(textwrap.dedent(code), timeout_s=20, allow_processes=True, max_processes=40)
    if "cgroup-pids" not in r.isolation:
        pytest.skip(f"no pids cgroup here (isolation: {r.isolation})")
    assert r.status == "ok" and int(r.stdout) < 40 and r.leftover == 0


def test_environment_is_not_leaked_and_workdir_is_removed(monkeypatch):
    monkeypatch.setenv("SYLLABUS_TEST_SECRET", "hunter2")
    r = run_python("import os\nprint(os.getcwd())\nprint(os.environ.get('SYLLABUS_TEST_SECRET'))", timeout_s=10)
    workdir, secret = r.stdout.split()
    assert secret == "None"
    assert not Path(workdir).exists()


def test_concurrent_runs_from_threads():
    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: run_python(f"print({i} * 2)", timeout_s=20), range(8)))
    assert [r.stdout.strip() for r in results] == [str(i * 2) for i in range(8)]
    assert all(r.ok and r.leftover == 0 for r in results)
