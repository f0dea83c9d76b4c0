"""Run untrusted, model-written Python in a throw-away, locked-down process.

Evaluations such as HumanEvalFix execute code a model wrote. That code may loop forever, fork without end,
allocate all memory, write anywhere, call the network or read the caller's secrets, by accident or not.
`run_python` runs it in a separate process and reports what happened; it never raises because of the code.
Linux only: it relies on namespaces, /proc and Linux resource limits.

Isolation is layered. The strongest set this machine supports is found once per process (a short probe) and
every `SandboxResult` lists what was active in `isolation`:

- As root (this project's usual machines), with `unshare` (util-linux) working, plan "namespaces":
    * `net-namespace`: a new network namespace with no interface up, so every connect fails at once
      (loopback included: the caller's local services are out of reach too);
    * `pid-namespace`: a small supervisor is PID 1 of a new PID namespace and the program its child; when
      the program ends or is killed the supervisor exits and the kernel kills everything the program
      started (setsid() escapees included); the program sees none of the host's processes in /proc;
    * `read-only-fs`: a new mount namespace where every mount is read-only, so the program can write nowhere
      outside its working directory (/tmp, /dev/shm and the repository included);
    * `tmpfs-cwd`: the working directory is a fresh tmpfs capped at `disk_mb`, owned by the sandbox user,
      gone with the namespace (the host-side directory only held the source and is deleted afterwards);
    * `uid-drop`: the program runs as a fresh unprivileged uid/gid (one per run, never 0) with
      no_new_privs. This matters: the kernel does not enforce RLIMIT_NPROC for root, so without it a fork
      bomb is not contained; a per-run uid also means concurrent runs do not share a process budget and
      cannot signal each other. The interpreter's own directories are bind-mounted read-only where the
      sandbox user could not otherwise reach them (e.g. a pyenv Python under /root, which is mode 0700).
- As root without namespaces (e.g. a container without CAP_SYS_ADMIN), plan "uid-only": `uid-drop`, the
  limits and `net-audit-hook` (below); leftovers are killed by uid. Writes to world-writable places such as
  /tmp are possible there.
- As a normal user with unprivileged user namespaces, plan "user-namespaces": the same namespaces, the
  program being root inside its user namespace with every capability dropped (`caps-drop`); RLIMIT_NPROC
  then counts all of the user's processes, so the budget is the user's current count plus `max_processes`.
- As a normal user without them, plan "rlimits-only": the limits, a clean environment and the audit hook;
  leftovers are found by the run's unique directory in their command line.
- Always: `rlimits` (wall time, CPU time, address space, file size, process count, open files, no core
  dumps), `clean-env` (only PATH, HOME and TMPDIR in the working directory, LANG; Python started with -I -S -B,
  so no PYTHON* variables, user site or site-packages: the standard library only; no fd of the caller but
  stdin/stdout/stderr).
- `net-audit-hook` (only without a network namespace): a Python audit hook refuses sockets, subprocesses,
  exec and ctypes. It is best effort, not a boundary.
As root, code is never run with root privileges: if no root plan works, `SandboxUnavailableError` is raised.
The program can still read what is world-readable on the machine; keep secrets out of world-readable files.

Statuses: "passed" (exit 0), "failed" (non-zero exit), "timeout" (wall clock, or CPU time used up),
"memory" (MemoryError), "killed" (ended by a signal, e.g. a crash or the kernel's OOM killer), "error" (the
sandbox itself could not be set up; the code did not run).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

from treasure.errors import TreasureError

STATUSES = ("passed", "failed", "timeout", "memory", "killed", "error")

# Isolated mode (no PYTHON* variables, no user site, no script dir on sys.path), no site-packages, no .pyc writes.
_PYTHON_FLAGS = ("-I", "-S", "-B", "-X", "utf8")
_SETUP_EXIT = 125  # what the bootstrap exits with when it could not build the sandbox
_SETUP_MARKER = "treasure-sandbox: setup failed:"
# Per-run uids are drawn from here: far above regular, system, systemd-dynamic and usual subuid ranges.
_UID_BASE, _UID_SPAN = 2_000_000_000, 100_000_000


class SandboxUnavailableError(TreasureError):
    """No isolation this machine supports was good enough to run untrusted code."""


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one program. `stdout`/`stderr` are the bounded tails of the streams."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration: float  # seconds of wall time, setup and teardown included
    cpu_time: float  # seconds of CPU used by the program and its children
    isolation: tuple[str, ...]
    uid: int | None = None  # the uid the program ran as, when a fresh one was used

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class _Plan:
    name: str
    unshare: tuple[str, ...]  # argv prefix that creates the namespaces; () runs the bootstrap directly
    drop: str  # "uid": root switches to a fresh uid; "caps": user-namespace root drops capabilities; "": none
    namespaces: bool  # net, mount and pid namespaces (private read-only filesystem, tmpfs cwd)

    @property
    def isolation(self) -> tuple[str, ...]:
        labels = [{"uid": "uid-drop", "caps": "caps-drop"}.get(self.drop, "")]
        if self.namespaces:
            labels += ["net-namespace", "pid-namespace", "read-only-fs", "tmpfs-cwd"]
        else:
            labels.append("net-audit-hook")
        return tuple(label for label in (*labels, "rlimits", "clean-env") if label)


# --kill-child: unshare's forked child gets SIGKILL if unshare dies before that child changes credentials.
_NS_ARGS = ("--net", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child", "--")
_ROOT_PLANS = (
    _Plan("namespaces", ("unshare", *_NS_ARGS), "uid", True),
    _Plan("uid-only", (), "uid", False),
)
_USER_PLANS = (
    _Plan("user-namespaces", ("unshare", "--user", "--map-root-user", *_NS_ARGS), "caps", True),
    _Plan("rlimits-only", (), "", False),
)

# Runs in the sandboxed interpreter (python -I -S -B -c _BOOTSTRAP CONFIG), as the caller's user: builds the
# private filesystem, sets the limits and forks. The child drops privileges and executes main.py in a fresh
# __main__ module; the parent supervises it and writes how it ended to the status pipe (the program's own exit
# code cannot be trusted to come back through `unshare`, which fails to relay a SIGKILL). Any setup failure exits
# with _SETUP_EXIT before the program runs (fail closed).
_BOOTSTRAP = r"""
import ctypes, errno, json, os, re, resource, sys

cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
# Per-mount flags a remount must keep (a user namespace may not clear them; as root it keeps them as they were).
KEEP = {"nosuid": NOSUID, "nodev": NODEV, "noexec": NOEXEC, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}


def ensure(ok, what):
    if not ok:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)
    ensure(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == 0, "mount " + target)


def private_fs(source):
    mount(None, "/", None, REC | PRIVATE)
    with open("/proc/self/mountinfo") as f:
        table = [line.split() for line in f]
    for fields in table:
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        flags = REMOUNT | BIND | RDONLY
        for opt in fields[5].split(","):
            flags |= KEEP.get(opt, 0)
        mount(None, target, None, flags)
    opts = "size=%dk,mode=0700,uid=%d,gid=%d" % (cfg["tmpfs_kb"], cfg["uid"], cfg["gid"])
    mount("tmpfs", cfg["work"], "tmpfs", NOSUID | NODEV, opts)
    os.chdir(cfg["work"])
    with open("main.py", "wb") as f:
        f.write(source)
    for top, paths in cfg["expose"]:
        fds = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in paths]
        mount("tmpfs", top, "tmpfs", NOSUID | NODEV, "size=64k,mode=0755")
        for p, fd in fds:
            os.makedirs(p, 0o755, exist_ok=True)
            mount("/proc/self/fd/%d" % fd, p, None, BIND | REC)
            mount(None, p, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV)
            os.close(fd)
        mount(None, top, None, REMOUNT | RDONLY | NOSUID | NODEV)


def limit(name, soft, hard=None):
    which = getattr(resource, name)
    hard = soft if hard is None else hard
    ceiling = resource.getrlimit(which)[1]
    if ceiling != resource.RLIM_INFINITY:
        soft, hard = min(soft, ceiling), min(hard, ceiling)
    resource.setrlimit(which, (soft, hard))


def drop_caps():
    for cap in range(64):
        if libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:  # PR_CAPBSET_DROP
            ensure(False, "PR_CAPBSET_DROP")
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    ensure(libc.capset(ctypes.byref(Header(0x20080522, 0)), (ctypes.c_uint32 * 6)()) == 0, "capset")


def capabilities_left():
    with open("/proc/self/status") as f:
        return [l for l in f if l.startswith(("CapEff:", "CapPrm:", "CapAmb:")) and int(l.split()[1], 16)]


DENY = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "ctypes.", "pty.")


def deny(event, args):
    if event.startswith(DENY):
        raise PermissionError("blocked in the sandbox (no network namespace here): " + event)


def fail(e):
    os.write(2, ("treasure-sandbox: setup failed: %r\n" % (e,)).encode())
    os._exit(125)


try:
    os.umask(0o022)
    with open(os.path.join(cfg["work"], "main.py"), "rb") as f:
        source = f.read()
    if cfg["namespaces"]:
        private_fs(source)
    else:
        os.chdir(cfg["work"])
    lim = cfg["limits"]
    limit("RLIMIT_CORE", 0)
    limit("RLIMIT_CPU", lim["cpu"], lim["cpu"] + 1)
    limit("RLIMIT_AS", lim["as"])
    limit("RLIMIT_FSIZE", lim["fsize"])
    limit("RLIMIT_NPROC", lim["nproc"])
    limit("RLIMIT_NOFILE", lim["nofile"])
    program = os.fork()
except Exception as e:
    fail(e)

if program:
    # The supervisor (PID 1 of the namespace, still privileged, so the program can neither signal nor trace
    # it): reap orphans until the program ends, report exactly how it ended, exit. Its exit makes the kernel
    # kill whatever the program left behind.
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(124)
        if pid == program:
            break
    if os.WIFSIGNALED(status):
        report, code = {"signal": os.WTERMSIG(status)}, 128 + os.WTERMSIG(status)
    else:
        report = {"exit": os.waitstatus_to_exitcode(status)}
        code = report["exit"]
    os.write(cfg["status_fd"], json.dumps(report).encode())
    os._exit(code & 255)

try:
    os.close(cfg["status_fd"])
    if cfg["drop"]:
        ensure(libc.prctl(38, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS")
        if cfg["drop"] == "uid":
            os.setgroups([])
            os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
            if 0 in os.getresuid() or 0 in os.getresgid():
                raise OSError("still root after dropping privileges")
        else:
            drop_caps()
        if capabilities_left():
            raise OSError("capabilities left after dropping privileges: %r" % capabilities_left())
    if not cfg["namespaces"]:
        sys.addaudithook(deny)
except Exception as e:
    fail(e)

import builtins, types

main = types.ModuleType("__main__")
main.__file__ = os.path.join(os.getcwd(), "main.py")
main.__builtins__ = builtins
sys.modules["__main__"] = main
sys.argv = ["main.py"]
sys.path.insert(0, os.getcwd())
exec(compile(source, main.__file__, "exec"), main.__dict__)
"""

_KILL_OWN_UID = "import os\nfor _ in range(2):\n    try:\n        os.kill(-1, 9)\n    except ProcessLookupError:\n        pass\n"
_PROBE_CODE = "import json, math\nopen('probe.txt', 'w').write('ok')\nprint('sandbox-ok')\n"

_plan_lock = threading.Lock()
_plan: _Plan | None = None
_plan_notes: list[str] = []  # why stronger plans were skipped
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def run_python(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    cpu_seconds: float | None = None,
    max_processes: int = 32,
    max_file_mb: int = 16,
    disk_mb: int = 64,
    max_output: int = 16_384,
) -> SandboxResult:
    """Run `code` as a Python program in the sandbox and report how it ended.

    timeout: wall-clock seconds, after which every process of the run is killed.
    memory_mb: address-space limit (RLIMIT_AS) of each process.
    cpu_seconds: CPU-time limit (RLIMIT_CPU, whole seconds, at least 1); defaults to `timeout`.
    max_processes: processes and threads the run may have at once (RLIMIT_NPROC).
    max_file_mb: the largest file it may write (RLIMIT_FSIZE); `disk_mb`: its tmpfs working directory's size.
    max_output: bytes kept from the end of stdout and of stderr.
    Raises SandboxUnavailableError only if this machine cannot isolate the code at all.
    """
    cpu = max(1, int(-(-(cpu_seconds if cpu_seconds is not None else timeout) // 1)))  # ceil, >= 1
    limits = {
        "cpu": cpu,
        "as": int(memory_mb) << 20,
        "fsize": int(max_file_mb) << 20,
        "nproc": int(max_processes),
        "nofile": 256,
    }
    return _run(code, _active_plan(), limits, timeout=timeout, disk_mb=disk_mb, max_output=max_output)


def sandbox_info() -> dict:
    """The plan in use on this machine, what it isolates, and why stronger plans were skipped."""
    plan = _active_plan()
    return {"plan": plan.name, "isolation": list(plan.isolation), "skipped": list(_plan_notes)}


def _active_plan() -> _Plan:
    """The strongest plan that runs a probe program correctly here; found once, then cached."""
    global _plan
    with _plan_lock:
        if _plan is not None:
            return _plan
        plans = _ROOT_PLANS if os.geteuid() == 0 else _USER_PLANS
        notes = []
        for plan in plans:
            if plan.unshare and not shutil.which(plan.unshare[0]):
                notes.append(f"{plan.name}: `{plan.unshare[0]}` not found")
                continue
            probe_limits = {"cpu": 5, "as": 512 << 20, "fsize": 1 << 20, "nproc": 8, "nofile": 64}
            result = _run(_PROBE_CODE, plan, probe_limits, timeout=10.0, disk_mb=1, max_output=2048)
            if result.passed and "sandbox-ok" in result.stdout:
                _plan, _plan_notes[:] = plan, notes
                return plan
            reason = (result.stderr.strip().splitlines() or [result.status])[-1]
            notes.append(f"{plan.name}: {result.status}: {reason}")
        raise SandboxUnavailableError("no sandbox works on this machine (" + "; ".join(notes) + ")")


def _run(
    code: str, plan: _Plan, limits: dict, *, timeout: float, disk_mb: int, max_output: int
) -> SandboxResult:
    started = time.monotonic()
    uid = _allocate_uid() if plan.drop == "uid" else None
    work = None
    status_r = status_w = -1
    try:
        work = tempfile.mkdtemp(prefix="treasure-sandbox-")
        with open(os.path.join(work, "main.py"), "wb") as f:
            f.write(code.encode("utf-8", "replace"))
        if uid is not None and not plan.namespaces:
            os.chown(work, uid, uid)  # without a tmpfs cwd the program works in this directory itself
        status_r, status_w = os.pipe()
        nproc = limits["nproc"] + (_tasks_of_user(os.getuid()) if plan.drop != "uid" else 0)
        config = {
            "work": work,
            "uid": 0 if uid is None else uid,  # 0: root of its own user namespace (plan "user-namespaces")
            "gid": 0 if uid is None else uid,
            "drop": plan.drop,
            "namespaces": plan.namespaces,
            "tmpfs_kb": int(disk_mb) << 10,
            "expose": _unreachable_interpreter_dirs() if plan.drop == "uid" else [],
            "limits": {**limits, "nproc": nproc},
            "status_fd": status_w,
        }
        argv = [*plan.unshare, sys.executable, *_PYTHON_FLAGS, "-c", _BOOTSTRAP, json.dumps(config)]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            argv,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),  # every other fd of the caller is closed
            start_new_session=True,  # its own process group (killed as one) and no controlling terminal
        )
        os.close(status_w)
        status_w = -1
        run = _Run(proc, plan, uid, work)
        out, err, timed_out, cpu_time = _supervise(run, started + timeout, max_output)
        os.set_blocking(status_r, False)  # the supervisor is gone: its report is in the pipe or never came
        try:
            report = json.loads(os.read(status_r, 4096) or b"{}")
        except (BlockingIOError, ValueError):
            report = {}
    except OSError as e:  # the sandbox could not start (no program output to report)
        return SandboxResult("error", None, "", f"{_SETUP_MARKER} {e!r}", time.monotonic() - started, 0.0,
                             plan.isolation, uid)  # fmt: skip
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        if uid is not None:
            with _uid_lock:
                _uids_in_use.discard(uid)
    returncode = -int(report["signal"]) if "signal" in report else int(report.get("exit", proc.returncode))
    status = _classify(returncode, timed_out, cpu_time, limits["cpu"], err)
    return SandboxResult(
        status, returncode, out, err, time.monotonic() - started, cpu_time, plan.isolation, uid
    )


@dataclass(frozen=True)
class _Run:
    proc: subprocess.Popen  # `unshare` with the namespaces, else the supervisor itself
    plan: _Plan
    uid: int | None
    work: str  # its unique directory: in the command line of every process the run forks


def _supervise(run: _Run, deadline: float, max_output: int) -> tuple[str, str, bool, float]:
    """Collect bounded output tails until the run ends or the deadline passes; leave no process behind.

    Reading both pipes with a selector keeps the caller's memory bounded however much the program prints;
    reaping with wait4 gives the CPU time of the whole run (every process was reaped inside it).
    """
    proc = run.proc
    streams = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    dropped = dict.fromkeys(streams, 0)
    selector = selectors.DefaultSelector()
    for fd in streams:
        selector.register(fd, selectors.EVENT_READ)
    rusage = None
    timed_out = False
    ended = 0.0
    try:
        while selector.get_map():
            now = time.monotonic()
            if rusage is None and now >= deadline:
                timed_out = True
                break
            if rusage is not None and now >= ended + 0.5:
                break  # the run is over but something it started still holds a pipe (only without a pid ns)
            wait = deadline - now if rusage is None else ended + 0.5 - now
            for key, _ in selector.select(min(wait, 0.05)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buf = streams[key.fd]
                buf += chunk
                if len(buf) > 2 * max_output:  # trim now and then, keeping only the tail
                    dropped[key.fd] += len(buf) - max_output
                    del buf[:-max_output]
            if rusage is None and (rusage := _reap(proc, block=False)) is not None:
                ended = time.monotonic()
                _kill_leftovers(run)
        while rusage is None and not timed_out:  # pipes closed, but the run may go on without them
            if time.monotonic() >= deadline:
                timed_out = True
            else:
                time.sleep(0.005)
                rusage = _reap(proc, block=False)
    finally:
        selector.close()
        if rusage is None:  # timed out, or interrupted
            rusage = _terminate(run)
        proc.stdout.close()
        proc.stderr.close()
    out, err = (_tail(streams[fd], dropped[fd], max_output) for fd in streams)
    return out, err, timed_out, rusage.ru_utime + rusage.ru_stime


def _reap(proc: subprocess.Popen, *, block: bool):
    """wait4 the child (not Popen.wait) to get its resource usage; sets `proc.returncode`."""
    pid, status, rusage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return rusage


def _terminate(run: _Run):
    """SIGKILL the whole run and reap it; returns its resource usage."""
    proc = run.proc
    if run.plan.namespaces:
        # unshare's child is the supervisor, PID 1 of the run's pid namespace; its children are the program
        # and any orphans. Killing those lets the supervisor report and exit, and its exit makes the kernel
        # kill the rest of the namespace (setsid() escapees included) before unshare can reap it: once
        # unshare is reaped, nothing of the run is left.
        inits = _children(proc.pid)
        for init in inits:
            for pid in _children(init):
                _signal(os.kill, pid)
        give_up = time.monotonic() + 3.0
        while time.monotonic() < give_up:
            if (rusage := _reap(proc, block=False)) is not None:
                return rusage
            time.sleep(0.005)
        for init in inits:  # the supervisor did not exit: kill it, which kills the namespace
            _signal(os.kill, init)
    _kill_leftovers(run)
    _signal(os.kill, proc.pid)
    return _reap(proc, block=True)


def _kill_leftovers(run: _Run) -> None:
    """SIGKILL what a run may leave behind when it has no pid namespace to take everything with it."""
    _signal(os.killpg, run.proc.pid)  # start_new_session made the pid the process group id
    if run.plan.namespaces:
        return
    # A setsid() escapee has left the process group, but (exec being refused by the audit hook) it still
    # carries the run's unique directory in its command line. Repeat to catch processes forked meanwhile.
    marker, me = os.fsencode(run.work), os.getpid()
    for _ in range(10):
        found = False
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) != me:
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        if marker in f.read():
                            found = True
                            _signal(os.kill, int(entry.name))
                except OSError:
                    continue
        if not found:
            break
        time.sleep(0.005)
    if run.uid is not None:
        # And as root, every process of the run's own uid: kill(-1) as that uid signals exactly those.
        subprocess.run([sys.executable, *_PYTHON_FLAGS, "-c", _KILL_OWN_UID], user=run.uid, group=run.uid,
                       extra_groups=[], env={}, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)  # fmt: skip


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


def _signal(send, pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone, or not ours
        send(pid, signal.SIGKILL)


def _classify(returncode: int | None, timed_out: bool, cpu_time: float, cpu_limit: int, stderr: str) -> str:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return "passed"
    if returncode == _SETUP_EXIT and _SETUP_MARKER in stderr:
        return "error"
    last_line = (stderr.strip().splitlines() or [""])[-1]
    if last_line.startswith("MemoryError"):
        return "memory"
    if returncode is not None and returncode < 0:
        # RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL one second later (if SIGXCPU was handled).
        if -returncode == signal.SIGXCPU or (-returncode == signal.SIGKILL and cpu_time >= cpu_limit - 0.05):
            return "timeout"
        return "killed"
    return "failed"


def _tail(buf: bytearray, dropped: int, max_output: int) -> str:
    dropped += max(0, len(buf) - max_output)
    text = bytes(buf[-max_output:] if max_output else b"").decode("utf-8", "replace")
    return f"[... {dropped} bytes dropped ...]\n{text}" if dropped else text


def _allocate_uid() -> int:
    with _uid_lock:
        while True:
            uid = _UID_BASE + random.randrange(_UID_SPAN)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _unreachable_interpreter_dirs() -> list[list]:
    """[[blocking_dir, [paths]], ...]: interpreter directories an unprivileged user cannot reach.

    A directory on the way to the stdlib that others may not search (e.g. /root, mode 0700, above a pyenv
    Python) would make every import fail once the program runs as the sandbox uid.
    """
    blocked: dict[str, list[str]] = {}
    for path in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:
                if path not in blocked.setdefault(ancestor, []):
                    blocked[ancestor].append(path)
                break
    return [[top, paths] for top, paths in blocked.items()]


def _tasks_of_user(uid: int) -> int:
    """Processes and threads of `uid`: what RLIMIT_NPROC counts when the program keeps the caller's uid."""
    count = 0
    if not os.path.isdir("/proc"):
        return 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count
