"""The sandbox contains each way model-written code can escape, and reports it as a failure, never a pass.

Each escape test runs a program that *tries* the escape and asserts that it worked: inside the sandbox the
attempt fails, so the program fails; the test then checks the host side (no file, no connection, no process).
"""

import os
import secrets
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from treasure.evaluate.sandbox import SandboxUnavailableError, run_python, sandbox_info

REPO = Path(__file__).resolve().parents[1]

try:
    ISOLATION = set(sandbox_info()["isolation"])
except SandboxUnavailableError as e:  # e.g. root in a container that allows neither namespaces nor setuid
    pytest.skip(str(e), allow_module_level=True)
# What only namespaces give; without them (another machine) the tests that need them are skipped, not failed.
needs_netns = pytest.mark.skipif("net-namespace" not in ISOLATION, reason="no network namespace here")
needs_private_fs = pytest.mark.skipif("read-only-fs" not in ISOLATION, reason="no private filesystem here")


def run(code: str, **kwargs):
    return run_python(textwrap.dedent(code), **kwargs)


def processes_of(uid: int) -> list[int]:
    """Live processes of `uid` (a zombie is dead already; whether it is reaped is up to the host's init)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                if entry.stat().st_uid == uid and state not in ("Z", "X"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_normal_program_passes_with_output():
    r = run("import math\nprint(math.factorial(5))\n", timeout=5)
    assert r.passed and r.status == "passed" and r.returncode == 0
    assert r.stdout == "120\n" and r.stderr == ""
    assert {"rlimits", "clean-env"} <= set(r.isolation)


def test_failing_assert_fails():
    r = run("assert 1 + 1 == 3, 'arithmetic'\n", timeout=5)
    assert r.status == "failed" and not r.passed and r.returncode == 1
    assert "AssertionError: arithmetic" in r.stderr


@pytest.mark.parametrize(
    "code", ["def f(:\n", "x = 1\0\n", "raise SystemExit(3)\n", "import no_such_module\n"]
)
def test_bad_code_is_a_failure_not_an_exception(code):
    r = run_python(code, timeout=5)
    assert r.status == "failed" and r.returncode != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="only root has privileges to drop")
def test_never_runs_as_root():
    r = run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())\n", timeout=5)
    assert r.passed and "uid-drop" in r.isolation
    uid, gid, groups = r.stdout.split(" ", 2)
    assert int(uid) == r.uid and int(gid) == r.uid and r.uid not in (0, 65534) and groups.strip() == "[]"


def test_infinite_loop_times_out():
    r = run("while True:\n    pass\n", timeout=2)
    assert r.status == "timeout" and not r.passed
    # never before its timeout; the upper bound only says the run was killed, with room for a busy machine
    assert 1.9 < r.duration < 30


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    # SIGXCPU (-24) is the CPU limit's own signal: the wall clock (60 s, far off even when other work holds the
    # cores) would have killed it with SIGKILL.
    r = run("while True:\n    pass\n", timeout=60, cpu_seconds=1)
    assert r.status == "timeout" and r.returncode == -24 and r.cpu_time >= 0.9


def test_fork_loop_is_capped_by_the_process_limit():
    code = """
        import os, time
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                n += 1
        finally:
            print("forked", n)
    """
    r = run(code, timeout=5, max_processes=16)
    assert r.status == "failed" and "BlockingIOError" in r.stderr  # fork refused: EAGAIN
    forked = int(r.stdout.split()[-1])
    assert 0 < forked < 16
    assert r.uid is None or processes_of(r.uid) == []  # the sleeping children are gone
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


def test_fork_bomb_with_setsid_escapees_is_killed_on_timeout():
    # Every process forks forever, ignores failures and leaves the process group: only the process limit
    # and the kill of the whole run (pid namespace, or the run's uid) stop it.
    code = """
        import os
        while True:
            try:
                if os.fork() == 0:
                    os.setsid()
            except OSError:
                pass
    """
    r = run(code, timeout=2, max_processes=24)
    assert r.status == "timeout" and r.duration < 30  # killed, with room for a busy machine
    assert r.uid is None or processes_of(r.uid) == []
    assert subprocess.run(["true"]).returncode == 0


def test_memory_bomb_is_refused():
    r = run("blob = bytearray(10 * 1024**3)\n", timeout=5, memory_mb=512)
    assert r.status == "memory" and "MemoryError" in r.stderr


def test_growing_memory_is_refused():
    # status "memory", not "timeout": the limit stopped it, however slowly a busy machine got there
    r = run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n", timeout=60, memory_mb=256)
    assert r.status == "memory"


def test_file_size_limit():
    r = run("open('big.bin', 'wb').write(bytes(3 * 2**20))\n", timeout=5, max_file_mb=1)
    assert r.status == "failed" and "File too large" in r.stderr


def test_cwd_is_writable_and_thrown_away():
    code = "import os\nopen('note.txt', 'w').write('hi')\nprint(os.getcwd(), open('note.txt').read())\n"
    r = run(code, timeout=5)
    assert r.passed and r.stdout.split()[1] == "hi"
    assert not Path(r.stdout.split()[0]).exists()


@needs_private_fs
@pytest.mark.parametrize("where", ["/tmp", "/var/tmp", "/dev/shm", str(REPO)])
def test_write_outside_the_cwd_fails_and_leaves_nothing(where):
    target = Path(where) / f"treasure_escape_{secrets.token_hex(6)}"
    try:
        r = run(f"open({str(target)!r}, 'w').write('escaped')\n", timeout=5)
        assert r.status == "failed" and (
            "Read-only file system" in r.stderr or "Permission denied" in r.stderr
        )
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


@needs_netns
def test_no_connection_reaches_a_local_listener():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'hi')\n"
        r = run(code, timeout=5)
        assert r.status == "failed" and "Network is unreachable" in r.stderr
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing ever connected
            listener.accept()


@needs_netns
def test_public_network_fails_fast():
    code = """
        import socket
        for host in ("1.1.1.1", "8.8.8.8"):
            try:
                socket.create_connection((host, 53), timeout=30).close()
            except OSError as e:
                print(host, e)
            else:
                raise SystemExit(0)  # reached the internet
        socket.getaddrinfo("example.com", 443)  # and name resolution
    """
    r = run(code, timeout=90)
    assert r.status == "failed" and "unreachable" in r.stdout.lower()
    assert r.duration < 30  # refused at once, not after a 30-second connect timeout


def test_callers_environment_is_invisible(monkeypatch):
    secret = secrets.token_hex(16)
    monkeypatch.setenv("TREASURE_TEST_SECRET", secret)
    code = f"""
        import glob, os
        print(sorted(os.environ))
        hits = [k for k, v in os.environ.items() if {secret!r} in v]
        for path in glob.glob("/proc/*/environ") + ["/proc/{os.getpid()}/environ"]:
            try:
                if {secret!r}.encode() in open(path, "rb").read():
                    hits.append(path)
            except OSError:
                pass
        assert hits, "secret not visible"
    """
    r = run(code, timeout=5)
    assert r.status == "failed" and "secret not visible" in r.stderr
    assert set(eval(r.stdout)) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_CTYPE"}


def test_output_is_bounded_to_a_tail():
    r = run(
        "import sys\nfor i in range(200000):\n    print(i)\nprint('end', file=sys.stderr)\n",
        timeout=5,
        max_output=1000,
    )
    assert r.passed and r.stdout.endswith("199999\n") and "bytes dropped" in r.stdout
    assert len(r.stdout) < 1100 and r.stderr == "end\n"
