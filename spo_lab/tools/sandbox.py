"""A process sandbox for code the policy writes: one fresh ``python -I`` per call, in its box.

    from spo_lab.tools import PythonSandbox

    box = PythonSandbox(timeout_s=30, memory_mb=1024)
    print(box.describe())                 # what this machine allows, probed once per process
    r = box.run("x = 6 * 7\\nx")           # the last bare expression is printed, as the recipe does
    r.output, r.exit_code, r.timed_out, r.seconds          # '42\\n', 0, False, 0.06

What each layer protects against
--------------------------------
``process_group``
    The child is started with setsid(); on timeout its whole process group is killed (SIGKILL), so
    background children die with it.
``pid_namespace`` (``unshare --pid --fork --mount-proc``)
    The code runs in its own PID namespace under a small init. When the code's process ends, or the
    sandbox is killed, the kernel kills every process of the namespace: a child that calls
    ``setsid`` and double-forks to outlive its parent dies too. The code sees only its own
    processes in ``/proc``. Without it, and when running as root, every process of the sandbox uid is
    killed after each call (``orphan_sweep``): give concurrent sandboxes distinct uids then.
``wall_time_limit``, ``cpu_time_limit``
    A wall-clock deadline in the parent (``timeout_s``) and ``RLIMIT_CPU`` per process (``cpu_s``).
``memory_limit``, ``file_size_limit``, ``open_files_limit``
    ``RLIMIT_AS`` (``memory_mb``, per process: a memory bomb ends in ``MemoryError``),
    ``RLIMIT_FSIZE`` (``file_size_mb``), ``RLIMIT_NOFILE`` (``max_open_files``); no core files.
``unprivileged_uid``, ``process_limit``
    Run as root, the sandbox drops to an unprivileged uid/gid (65534, ``nobody``, by default) with
    no supplementary groups, so root-owned files are out of reach and ``RLIMIT_NPROC``
    (``max_processes``) binds: a fork bomb stops there. The limit counts every process of that uid
    on the machine, so concurrent sandboxes share it. Run as an ordinary user the code keeps that
    user's uid (a user namespace maps it to root inside, with no privilege outside).
``no_new_privs``
    ``PR_SET_NO_NEW_PRIVS``: set-uid programs (``sudo``, ``su``) grant nothing.
``network_namespace`` (``unshare --net``)
    A network namespace with only a loopback device that is down: every connection, to the internet
    or to a port on this machine's 127.0.0.1, fails ("Network is unreachable"), and so does DNS.
``mount_namespace``
    A private mount namespace in which every mount is read-only, except ``/tmp``: a fresh tmpfs of
    ``disk_mb`` MiB, owned by the sandbox uid, which is the working directory and ``$HOME`` (and is
    also mounted on ``/dev/shm``). Writing anywhere else fails, world-writable directories included,
    and nothing the code writes touches the disk. People's folders -- ``/home``, ``/root``, ``/mnt``,
    ``/media``, ``/srv`` and the top-level folders of the trainer's working directory and ``$HOME``
    (the project itself) -- are covered by an empty tmpfs, and so are directories the sandbox uid
    cannot search on the interpreter's path; only the interpreter's own directories are bound back
    into them, read-only. (As root, with the unprivileged uid; in a user namespace they stay visible.)
``clean_environment``, ``stdin_closed``, ``fresh_workdir``
    The code sees none of the parent's environment (no tokens, no keys): only ``PATH``, ``HOME``,
    ``TMPDIR``, ``LANG`` and one-thread settings for numerical libraries; stdin is ``/dev/null``; each
    call gets a new working directory, removed afterwards.

Output: stdout then stderr, read incrementally; beyond ``max_output_bytes`` the middle is cut and
replaced by a marker saying how much was cut; a process that keeps printing past ``flood_bytes`` is
killed. A timeout, a kill by a signal or the flood limit adds one line saying so.

What it does not protect against
--------------------------------
This is a process sandbox, not a virtual machine: the code runs on the host's kernel, and a kernel
exploit escapes it. The code can read the world-readable system files (``/etc``, ``/usr``, ``/opt``,
``/var``) and its interpreter's installation; people's folders are hidden only with a mount namespace
and the unprivileged uid (see ``mount_namespace``). Unix sockets with a path in the file system are not cut by the network namespace
(only a writable socket file could be used). Memory is limited per process (``RLIMIT_AS``), not as a
whole: at most ``max_processes x memory_mb``; there is no cgroup. SysV IPC is not isolated. Other
processes of the same uid (concurrent sandboxes) can be signalled when there is no PID namespace.
There is no seccomp filter: where the kernel allows unprivileged user namespaces the code can make
its own (more kernel surface to attack; the read-only mounts stay locked in them).

Machines without namespaces
---------------------------
Many containers (Colab among them) deny ``unshare``; Ubuntu 24.04 forbids unprivileged user
namespaces by default (AppArmor); Python 3.11 has no ``os.unshare``, so the ``unshare`` binary of
util-linux is used. The sandbox probes once per process what the machine allows (``protections()``).
A protection the machine cannot give is an error at construction, naming it; to run without it,
waive it by name::

    PythonSandbox(allow_missing={"network_namespace", "pid_namespace", "mount_namespace"})

or accept whatever the machine gives with ``allow_missing="all"`` (and read ``describe()``).
Without a network namespace the code can reach the network; without a mount namespace it can write
into world-writable directories such as ``/tmp``; without a PID namespace, escaped children are
killed by the uid sweep when running as root, and can survive otherwise.

Calls that fail in the tool layer itself (the sandbox cannot start) return a result whose output is
:data:`SANDBOX_ERROR_MESSAGE`, never an exception; only the missing-protection check raises.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

__all__ = [
    "PythonSandbox",
    "SandboxResult",
    "SandboxUnavailable",
    "wrap_last_expression",
    "PROTECTIONS",
    "WAIVABLE",
    "SANDBOX_ERROR_MESSAGE",
]

#: What ``output`` holds when the tool layer itself fails (the sandbox could not start or run).
SANDBOX_ERROR_MESSAGE = "Sandbox error: the code could not be run."
#: Marker put in the middle of an output that was too long; ``{n}`` is the number of bytes cut.
CUT_MARKER = "\n[... {n} bytes of output cut ...]\n"
TIMEOUT_NOTE = "Timeout: the code ran for more than {t:g} s and was killed."
FLOOD_NOTE = "Killed: the code printed more than {n} bytes."
SIGNAL_NOTE = "Killed by signal {name}."

#: Protections in force on every machine (resource limits, process group, clean environment ...).
ALWAYS = (
    "process_group",
    "wall_time_limit",
    "cpu_time_limit",
    "memory_limit",
    "file_size_limit",
    "open_files_limit",
    "clean_environment",
    "stdin_closed",
    "fresh_workdir",
)
#: Protections that depend on the machine: each one missing is an error unless waived by name.
WAIVABLE = (
    "unprivileged_uid",
    "process_limit",
    "no_new_privs",
    "network_namespace",
    "pid_namespace",
    "mount_namespace",
)
#: Every name ``protections()`` reports; ``orphan_sweep`` is the fallback for a missing PID namespace.
PROTECTIONS = ALWAYS + WAIVABLE + ("orphan_sweep",)

_SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DIR_PREFIX = "spo_sandbox_"
_CODE_NAME = "main.py"


class SandboxUnavailable(RuntimeError):
    """A protection this machine cannot give, and that was not waived. ``missing``: their names."""

    def __init__(self, message: str, missing: Iterable[str] = ()):
        super().__init__(message)
        self.missing = tuple(missing)


@dataclass(frozen=True)
class SandboxResult:
    """One call's outcome.

    ``output``: what the model sees (stdout then stderr, cut in the middle past the cap, plus a
    line for a timeout or a kill); ``exit_code``: the process's exit status, ``None`` when it was
    killed (timeout, signal, output flood) or never ran; ``timed_out``: the wall-clock limit fired;
    ``seconds``: wall-clock time of the call; ``truncated``: the output was cut; ``signal``: the
    name of the signal that ended the code, if any; ``sandbox_error``: why the tool layer failed
    (``output`` is then :data:`SANDBOX_ERROR_MESSAGE`).
    """

    output: str
    exit_code: int | None
    timed_out: bool
    seconds: float
    truncated: bool = False
    signal: str | None = None
    sandbox_error: str | None = None

    @property
    def ok(self) -> bool:
        """The code ran to the end and exited with status 0."""
        return self.exit_code == 0 and not self.timed_out and self.sandbox_error is None


# ====================================================================== the last-line rule
def _line_starts(code: str) -> list[int]:
    """Character offset of the start of each line, splitting as the Python tokenizer does."""
    starts = [0]
    for m in re.finditer(r"\r\n|\r|\n", code):
        starts.append(m.end())
    return starts


def _offset(code: str, starts: list[int], lineno: int, col_bytes: int) -> int:
    start = starts[lineno - 1]
    end = starts[lineno] if lineno < len(starts) else len(code)
    line = code[start:end]
    return start + len(line.encode("utf-8", "surrogatepass")[:col_bytes].decode("utf-8", "replace"))


def wrap_last_expression(code: str, max_chars: int = 1_000_000) -> str:
    """``code`` with its last statement wrapped in ``print(...)`` when it is a bare expression that is
    not already a ``print`` call (the official recipe prints the last line of a tool call).

    The code is only parsed (``ast``), never run here. Code that does not parse, or is longer than
    ``max_chars``, is returned unchanged: the sandbox then reports the error itself.
    """
    if len(code) > max_chars:
        return code
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return code
    if not tree.body:
        return code
    last = tree.body[-1]
    if not isinstance(last, ast.Expr):
        return code
    value = last.value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "print":
        return code
    if last.end_lineno is None or last.end_col_offset is None:
        return code
    starts = _line_starts(code)
    a = _offset(code, starts, last.lineno, last.col_offset)
    b = _offset(code, starts, last.end_lineno, last.end_col_offset)
    inner = code[a:b]
    if isinstance(value, ast.Tuple):  # `a, b` must print as one tuple, not as two arguments
        inner = "(" + inner + ")"
    return code[:a] + "print(" + inner + ")" + code[b:]


# ====================================================================== output capture
class _Stream:
    """The first ``cap`` bytes of a stream and its last ``cap`` bytes, whatever its length."""

    def __init__(self, cap: int):
        self.cap = cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.cap:
                del self.tail[: len(self.tail) - self.cap]

    def first(self, n: int) -> bytes:
        return bytes(self.head[:n])

    def last(self, n: int) -> bytes:
        if n <= 0:
            return b""
        return bytes((self.head + self.tail)[-n:]) if self.total > len(self.head) else bytes(self.head[-n:])


def _compose(out: _Stream, err: _Stream, cap: int) -> tuple[str, bool]:
    """stdout then stderr as one text; past ``cap`` bytes, the first and last halves around a marker."""
    total = out.total + err.total
    if total <= cap:
        data = out.first(out.total) + err.first(err.total)
        return data.decode("utf-8", "replace"), False
    h = cap // 2
    t = cap - h
    head = out.first(h) if out.total >= h else out.first(out.total) + err.first(h - out.total)
    tail = err.last(t) if err.total >= t else out.last(t - err.total) + err.first(err.total)
    text = head.decode("utf-8", "replace") + CUT_MARKER.format(n=total - cap) + tail.decode("utf-8", "replace")
    return text, True


# ====================================================================== the child side
# Runs as `python -I -S -c _BOOTSTRAP <json>`: inside the namespaces, as root there when the parent is
# root, it mounts the box, sets the limits, drops privileges, then forks the code's interpreter and
# waits for it as the namespace's init. It reports "exit N", "signal N" or "error ..." on a pipe.
_BOOTSTRAP = r'''
import ctypes, json, os, resource, signal, sys
c = json.loads(sys.argv[1])
fd = c["status_fd"]
def report(s):
    try:
        os.write(fd, s.encode("utf-8", "replace")[:4000])
    except OSError:
        pass
try:
    os.set_inheritable(fd, False)
    os.umask(0o022)
    libc = ctypes.CDLL(None, use_errno=True)
    def check(r, what):
        if r != 0:
            e = ctypes.get_errno()
            raise OSError(e, "%s: %s" % (what, os.strerror(e)))
    def mount(src, tgt, fs, flags, data=None):
        b = lambda s: None if s is None else s.encode()
        check(libc.mount(b(src), b(tgt), b(fs), ctypes.c_ulong(flags), b(data)), "mount " + tgt)
    with open(c["code_path"], "rb") as f:
        code = f.read()
    if c["mount"]:
        MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
        def bind_back(fds, extra=0):  # paths opened before a tmpfs covered them, bound back at the same place
            for p, pfd in fds:
                os.makedirs(os.path.dirname(p), 0o755, exist_ok=True)
                src = "/proc/self/fd/%d" % pfd
                if os.path.isdir(src):
                    os.mkdir(p, 0o755)
                else:
                    open(p, "w").close()
                mount(src, p, None, MS_BIND | MS_REC)
                if extra:
                    mount(None, p, None, MS_BIND | MS_REMOUNT | extra)
                os.close(pfd)
        for blocked, keep in c["punch"]:
            fds = [(p, os.open(p, os.O_PATH)) for p in keep]
            mount("tmpfs", blocked, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            bind_back(fds)
        class Attr(ctypes.Structure):
            _fields_ = [(n, ctypes.c_uint64) for n in ("set", "clr", "prop", "userns")]
        attr = Attr(0x1 | 0x2, 0, 0, 0)  # MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID
        libc.syscall.restype = ctypes.c_long
        r = libc.syscall(ctypes.c_long(442), ctypes.c_long(-100), ctypes.c_char_p(b"/"),  # mount_setattr
                         ctypes.c_long(0x8000), ctypes.byref(attr), ctypes.c_long(ctypes.sizeof(attr)))
        if r != 0:
            if ctypes.get_errno() != 38:  # ENOSYS: fall back to one remount per mount point
                check(r, "mount_setattr /")
            keep_flags = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048,
                          "relatime": 1 << 21}
            with open("/proc/self/mountinfo") as f:
                rows = [line.split() for line in f]
            for row in rows:
                target = row[4].encode().decode("unicode_escape")
                flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
                for o in row[5].split(","):
                    flags |= keep_flags.get(o, 0)
                try:
                    mount(None, target, None, flags)
                except OSError:
                    if target == "/":
                        raise
        u, g = c["box_owner"]
        tmp_fds = [(p, os.open(p, os.O_PATH)) for p in c["tmp_keep"]]  # an interpreter under /tmp: keep it
        mount("sandbox", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
              "size=%dk,nr_inodes=%d,mode=0700,uid=%d,gid=%d" % (c["disk_kb"], c["inodes"], u, g))
        if os.path.isdir("/dev/shm"):
            mount("/tmp", "/dev/shm", None, MS_BIND)
        bind_back(tmp_fds, MS_RDONLY | MS_NOSUID)  # after the read-only remount of /: make these read-only too
        work = "/tmp"
        with open(os.path.join(work, c["code_name"]), "wb") as f:
            f.write(code)
        os.chown(os.path.join(work, c["code_name"]), u, g)
    else:
        work = c["workdir"]
    os.chdir(work)
    env = dict(c["env"], HOME=work, TMPDIR=work)
    for name, soft, hard in c["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if c["drop"]:
        u, g = c["drop"]
        os.setgroups([])
        os.setresgid(g, g, g)
        os.setresuid(u, u, u)
    check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    check(libc.prctl(1, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    argv = [c["python"], "-I", "-B", c["code_name"]]
    r, w = os.pipe()  # closed on exec: a byte on it means the exec failed
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.execve(c["python"], argv, env)
        except BaseException as e:
            os.write(w, ("%s: %s" % (type(e).__name__, e)).encode("utf-8", "replace")[:2000])
        os._exit(127)
    os.close(w)
    failed = os.read(r, 4000)
    _, status = os.waitpid(pid, 0)
    if failed:
        report("error exec %s: %s" % (c["python"], failed.decode("utf-8", "replace")))
        os._exit(125)
    if os.WIFSIGNALED(status):
        report("signal %d" % os.WTERMSIG(status))
        os._exit(128 + os.WTERMSIG(status))
    code = os.WEXITSTATUS(status)
    report("exit %d" % code)
    os._exit(code)
except BaseException as e:
    report("error %s: %s" % (type(e).__name__, e))
    os._exit(125)
'''

# What the probe runs in the box: the facts behind protections().
_PROBE_CODE = r'''
import errno, json, os, resource, socket
f = {"uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd(),
     "procs": sum(d.isdigit() for d in os.listdir("/proc"))}
try:
    s = socket.socket(); s.settimeout(1); s.connect(("127.0.0.1", 9)); f["net"] = "connected"
except OSError as e:
    f["net"] = errno.errorcode.get(e.errno, str(e.errno))
f["root_ro"] = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
try:
    open("probe.txt", "w").write("x"); f["cwd_writable"] = True
except OSError:
    f["cwd_writable"] = False
f["nproc"] = resource.getrlimit(resource.RLIMIT_NPROC)[0]
f["no_new_privs"] = any(l.split() == ["NoNewPrivs:", "1"] for l in open("/proc/self/status"))
print(json.dumps(f))
'''


# ====================================================================== probing the machine
@dataclass
class _Plan:
    """How to start the box on this machine (found by the probe)."""

    python: str
    unshare: list[str] = field(default_factory=list)  # the unshare command and its flags, or []
    userns: bool = False
    pid_ns: bool = False
    mount: bool = False
    drop: tuple[int, int] | None = None  # (uid, gid) to drop to
    punch: list[tuple[str, list[str]]] = field(default_factory=list)
    sweep: bool = False
    protections: dict[str, bool] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


_PROBES: dict[tuple, _Plan] = {}
_PROBE_LOCK = threading.Lock()


def _try(argv: list[str], timeout: float = 10.0) -> str | None:
    """None when ``argv`` runs and exits 0, else why not (its stderr)."""
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=timeout, env={"PATH": _SANDBOX_PATH, "LANG": "C.UTF-8"})
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"
    if p.returncode == 0:
        return None
    return p.stderr.decode("utf-8", "replace").strip() or f"exit status {p.returncode}"


def _searchable(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _blocked_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The first directory above ``path`` that ``uid`` cannot search, or None."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    cur = "/"
    for part in parts[:-1]:
        cur = os.path.join(cur, part)
        try:
            if not _searchable(os.stat(cur), uid, gid):
                return cur
        except OSError:
            return None
    return None


def _interpreter_paths(python: str) -> list[str]:
    """The directories the interpreter needs: its installation and its environment."""
    paths = {os.path.realpath(python)}
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        paths |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    else:
        paths.add(os.path.dirname(os.path.dirname(os.path.realpath(python))))
    paths.add(os.path.dirname(os.path.dirname(os.path.abspath(python))))
    return sorted(os.path.realpath(p) for p in paths if p)


def _under_tmp(python: str) -> list[str]:
    """The interpreter's folders that lie in ``/tmp`` (a venv made there): bound into the box's fresh ``/tmp``."""
    paths = [p for p in _interpreter_paths(python) if p.startswith("/tmp/") and os.path.exists(p)]
    return [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]


_SYSTEM_DIRS = frozenset({"/", "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/proc", "/sys",
                          "/dev", "/tmp", "/var", "/opt", "/run", "/boot", "/nix", "/snap"})


def _hidden_dirs() -> list[str]:
    """Top-level folders that hold people's files: ``/home``, ``/root``, ``/mnt``, ``/media``, ``/srv`` and
    the top-level folders of the parent's working directory and ``$HOME`` (a project under ``/work`` or
    ``/data``). In the box each is an empty tmpfs, save the interpreter's own paths bound back into it."""
    found = {"/home", "/root", "/mnt", "/media", "/srv"}
    for path in (os.getcwd(), os.path.expanduser("~")):
        parts = os.path.abspath(path).split(os.sep)
        if len(parts) > 1 and parts[1]:
            found.add("/" + parts[1])
    return sorted(d for d in found - _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d))


def _punch_plan(python: str, uid: int, gid: int, hide=()) -> list[tuple[str, list[str]]]:
    """The folders to cover with an empty tmpfs, each with the interpreter's subpaths to bind back into it.

    Covered: every directory on the interpreter's paths that ``uid`` cannot search (a Python under
    ``/root``), and the folders of ``hide`` (people's files, :func:`_hidden_dirs`).
    """
    paths = [p for p in _interpreter_paths(python) if os.path.exists(p)]
    hide = [h for h in hide if h not in paths]  # a folder that IS the interpreter's stays as it is
    keep: dict[str, list[str]] = {h: [] for h in hide}
    for p in paths:
        covers = [c for c in (_blocked_ancestor(p, uid, gid), *(h for h in hide if p.startswith(h + "/"))) if c]
        if covers:
            keep.setdefault(min(covers, key=len), []).append(p)
    outer = {b: next((o for o in sorted(keep, key=len) if b.startswith(o + "/")), b) for b in keep}
    merged: dict[str, list[str]] = {}
    for b, ps in keep.items():  # a folder inside another covered one: its paths are bound into the outer tmpfs
        merged.setdefault(outer[b], []).extend(ps)
    return [(b, [p for p in sorted(set(ps)) if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in ps)])
            for b, ps in sorted(merged.items())]


def _probe(python: str, uid: int, gid: int) -> _Plan:
    """What this machine allows, measured by running the box once. Cached per process."""
    key = (python, uid, gid, os.geteuid())
    with _PROBE_LOCK:
        if key not in _PROBES:
            _PROBES[key] = _measure(python, uid, gid)
        return _PROBES[key]


def _namespace_flags(root: bool, reasons: dict[str, str]):
    """``(unshare, flags, prefix, userns)``: which ``unshare`` flags work here; why not goes to ``reasons``."""
    unshare = shutil.which("unshare", path=_SANDBOX_PATH)
    flags: dict[str, list[str]] = {}
    prefix: list[str] = []
    userns = False
    if unshare is None:
        for name in ("network_namespace", "pid_namespace", "mount_namespace"):
            reasons[name] = "the `unshare` program (util-linux) is not installed"
        return unshare, flags, prefix, userns
    if not root:
        why = _try([unshare, "--user", "--map-root-user", "true"])
        if why is None:
            prefix, userns = ["--user", "--map-root-user"], True
        else:
            for name in ("network_namespace", "pid_namespace", "mount_namespace"):
                reasons[name] = f"user namespaces are not allowed for a non-root user: {why}"
    if root or userns:
        tries = {"network_namespace": ["--net"], "mount_namespace": ["--mount"],
                 "pid_namespace": ["--pid", "--fork", "--mount-proc", "--kill-child"]}
        for name, f in tries.items():
            why = _try([unshare, *prefix, *f, "true"])
            if why is None:
                flags[name] = f
            else:
                reasons[name] = f"`unshare {' '.join(f)}` failed: {why}"
    return unshare, flags, prefix, userns


def _measure(python: str, uid: int, gid: int) -> _Plan:
    root = os.geteuid() == 0
    reasons: dict[str, str] = {}
    unshare, flags, prefix, userns = _namespace_flags(root, reasons)
    drop = (uid, gid) if root else None
    punch = _punch_plan(python, uid, gid, hide=_hidden_dirs()) if drop else []

    def plan_for(mount: bool, drop_to) -> _Plan:
        argv: list[str] = []
        use = [f for name, f in flags.items() if name != "mount_namespace" or mount]
        if use:
            argv = [unshare, *prefix] + [x for f in use for x in f]
            if "--fork" not in argv:
                argv.append("--fork")
        pl = _Plan(python=python, unshare=argv, userns=userns, pid_ns="pid_namespace" in flags,
                   mount=mount, drop=drop_to, punch=punch if (mount and drop_to) else [])
        pl.sweep = root and drop_to is not None and not pl.pid_ns
        return pl

    mount_ok = "mount_namespace" in flags
    candidates = [(mount_ok, drop)]
    if mount_ok:
        candidates.append((False, drop))
    if drop:
        candidates.append((False, None))
    facts = None
    plan = plan_for(False, None)
    for mount, drop_to in candidates:
        plan = plan_for(mount, drop_to)
        probe_box = PythonSandbox.__new__(PythonSandbox)
        probe_box._setup(plan=plan, timeout_s=20.0, memory_mb=1024, cpu_s=None, max_processes=64,
                         max_open_files=256, file_size_mb=16, disk_mb=16, max_output_bytes=65536,
                         flood_bytes=1 << 20, print_last_line=False, work_root=None, env=None)
        r = probe_box.run(_PROBE_CODE)
        try:
            facts = json.loads(r.output.strip().splitlines()[-1]) if r.exit_code == 0 else None
        except (ValueError, IndexError):
            facts = None
        if facts is not None:
            break
        why = (r.sandbox_error or r.output).strip()[-600:]
        if mount:
            reasons["mount_namespace"] = f"the read-only mounts could not be made: {why}"
        elif drop_to:
            reasons["unprivileged_uid"] = (
                f"{python} did not run as uid {uid}: {why} (install Python where uid {uid} can read it, or pass"
                f" python=...)")
        else:
            raise SandboxUnavailable(f"the sandbox cannot run Python on this machine: {why}")
    assert facts is not None
    _protections(plan, facts, flags, reasons, root=root, uid=uid)
    return plan


def _protections(plan: _Plan, facts: dict, flags: dict, reasons: dict[str, str], *, root: bool, uid: int) -> None:
    """Fill ``plan.protections`` (name -> in force) and ``plan.reasons`` from what the probe run saw."""
    p: dict[str, bool] = {name: True for name in ALWAYS}
    p["unprivileged_uid"] = (not root) or (plan.drop is not None and facts["uid"] == uid)
    p["process_limit"] = p["unprivileged_uid"] and facts["nproc"] not in (-1, resource.RLIM_INFINITY)
    p["no_new_privs"] = bool(facts["no_new_privs"])
    p["network_namespace"] = "network_namespace" in flags and facts["net"] == "ENETUNREACH"
    p["pid_namespace"] = plan.pid_ns and facts["pid"] <= 3 and facts["procs"] <= 3  # init and the code
    p["mount_namespace"] = plan.mount and facts["root_ro"] and facts["cwd"] == "/tmp" and facts["cwd_writable"]
    p["orphan_sweep"] = plan.sweep
    if "network_namespace" in flags and not p["network_namespace"]:
        reasons["network_namespace"] = f"a connection inside the namespace gave {facts['net']}"
    if root and not p["unprivileged_uid"]:
        reasons.setdefault("unprivileged_uid", f"the code ran as uid {facts['uid']}")
    if not p["process_limit"]:
        reasons["process_limit"] = "RLIMIT_NPROC does not bind for root: it needs the unprivileged uid"
    if not p["no_new_privs"]:
        reasons["no_new_privs"] = "prctl(PR_SET_NO_NEW_PRIVS) is not in force"
    plan.protections = p
    plan.reasons = {k: v for k, v in reasons.items() if not p.get(k, False)}


def _read_ready(sel, timeout: float, streams: dict | None = None) -> None:
    """Read what the pipes registered in ``sel`` hold within ``timeout``; feed it to ``streams[fd]`` (or drop it).
    A pipe at its end is unregistered."""
    for key, _ in sel.select(timeout):
        try:
            data = os.read(key.fd, 65536)
        except BlockingIOError:
            continue
        if not data:
            sel.unregister(key.fd)
        elif streams is not None:
            streams[key.fd].feed(data)


def _user_process_count(uid: int) -> int:
    """The tasks (processes and their threads: what ``RLIMIT_NPROC`` counts) that run as ``uid``."""
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{d}/task"))
            except OSError:
                pass
    return n


# ====================================================================== the sandbox
_UID_SLOTS: dict[tuple[int, int], threading.BoundedSemaphore] = {}
_UID_SLOTS_LOCK = threading.Lock()


def _uid_slot(drop, max_processes: int):
    """A slot among the concurrent calls of this process that run as ``drop``'s uid under the same process limit
    (no limit without a drop)."""
    if drop is None:
        return contextlib.nullcontext()
    slots = max(1, max_processes // 2)
    with _UID_SLOTS_LOCK:
        sem = _UID_SLOTS.setdefault((drop[0], slots), threading.BoundedSemaphore(slots))
    return sem


class PythonSandbox:
    """Run policy-written Python in a fresh, limited, isolated process; see the module docstring.

    Args:
        timeout_s: wall-clock limit of one call (the recipe's SandboxFusion uses 30 s).
        memory_mb: address-space limit of each process (``RLIMIT_AS``; the recipe uses 1 GB).
        cpu_s: CPU-time limit of each process (``RLIMIT_CPU``); default ``ceil(timeout_s)``.
        max_processes: ``RLIMIT_NPROC`` (processes and threads of the sandbox uid, counting the
            box's own small init).
        max_open_files: ``RLIMIT_NOFILE``. file_size_mb: ``RLIMIT_FSIZE``.
        disk_mb: size of the working directory's tmpfs (with a mount namespace).
        max_output_bytes: output kept (first and last halves around a marker past this).
        flood_bytes: output after which the code is killed.
        print_last_line: print the value of a last bare expression, as the recipe does.
        allow_missing: names of protections (see :data:`WAIVABLE`) this machine may lack, or ``"all"``.
        uid, gid: the unprivileged ids the code runs as when the parent is root.
        python: the interpreter (default ``sys.executable``).
        work_root: where the per-call working directories are made (default: the system temp dir).
        env: extra environment variables for the code (fixed values; nothing is inherited).
    """

    def __init__(self, timeout_s: float = 30.0, memory_mb: int = 1024, *, cpu_s: float | None = None,
                 max_processes: int = 32, max_open_files: int = 64, file_size_mb: int = 16, disk_mb: int = 64,
                 max_output_bytes: int = 16384, flood_bytes: int = 8 << 20, print_last_line: bool = True,
                 allow_missing: Iterable[str] | str = (), uid: int = 65534, gid: int = 65534,
                 python: str | None = None, work_root: str | os.PathLike | None = None,
                 env: Mapping[str, str] | None = None):
        if timeout_s <= 0 or memory_mb < 32 or max_processes < 2 or max_open_files < 16:
            raise ValueError("timeout_s > 0, memory_mb >= 32, max_processes >= 2, max_open_files >= 16")
        if max_output_bytes < 64 or flood_bytes < max_output_bytes:
            raise ValueError("max_output_bytes >= 64 and flood_bytes >= max_output_bytes")
        if isinstance(allow_missing, str):
            waived = set(WAIVABLE) if allow_missing == "all" else {allow_missing}
        else:
            waived = set(allow_missing)
        unknown = waived - set(WAIVABLE)
        if unknown:
            raise ValueError(f"unknown protection(s) {sorted(unknown)}; the ones that can be waived: {list(WAIVABLE)}")
        python = os.path.abspath(python or sys.executable)
        plan = _probe(python, uid, gid)
        missing = [n for n in WAIVABLE if not plan.protections.get(n, False)]
        refused = [n for n in missing if n not in waived]
        if refused:
            lines = [f"  - {n}: {plan.reasons.get(n, 'not available')}" for n in refused]
            if any(n.endswith("_namespace") for n in refused):
                lines.append("Many containers (Colab among them) deny namespaces, and Ubuntu 24.04 forbids "
                             "unprivileged user namespaces by default.")
            names = ", ".join(repr(n) for n in refused)
            raise SandboxUnavailable(
                "This machine cannot give these sandbox protections:\n" + "\n".join(lines) + "\n"
                f"To run without them, waive each by name: PythonSandbox(..., allow_missing={{{names}}}); the code is"
                " then less contained (the spo_lab.tools.sandbox docstring says what each one stops).",
                missing=refused,
            )
        self.waived = frozenset(waived)
        self._setup(plan=plan, timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, max_processes=max_processes,
                    max_open_files=max_open_files, file_size_mb=file_size_mb, disk_mb=disk_mb,
                    max_output_bytes=max_output_bytes, flood_bytes=flood_bytes, print_last_line=print_last_line,
                    work_root=work_root, env=env)

    def _setup(self, *, plan: _Plan, timeout_s, memory_mb, cpu_s, max_processes, max_open_files, file_size_mb,
               disk_mb, max_output_bytes, flood_bytes, print_last_line, work_root, env) -> None:
        self._plan = plan
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.cpu_s = int(math.ceil(cpu_s if cpu_s is not None else timeout_s))
        self.max_processes = int(max_processes)
        self.max_open_files = int(max_open_files)
        self.file_size_mb = int(file_size_mb)
        self.disk_mb = int(disk_mb)
        self.max_output_bytes = int(max_output_bytes)
        self.flood_bytes = int(flood_bytes)
        self.print_last_line = bool(print_last_line)
        self.work_root = os.fspath(work_root) if work_root is not None else None
        self._extra_env = dict(env or {})
        if not hasattr(self, "waived"):
            self.waived = frozenset()

    # ------------------------------------------------------------------ reporting
    def protections(self) -> dict[str, bool]:
        """Protection name -> in force on this machine (probed once per process)."""
        return dict(self._plan.protections)

    def describe(self) -> str:
        """A few lines for the start of a run: what is in force, what is not and why."""
        p = self._plan.protections
        on = [n for n in PROTECTIONS if p.get(n)]
        off = [n for n in PROTECTIONS if not p.get(n) and n != "orphan_sweep"]
        lines = [f"sandbox: python -I, timeout {self.timeout_s:g} s, memory {self.memory_mb} MB, "
                 f"{self.max_processes} processes; in force: {', '.join(on)}"]
        for n in off:
            lines.append(f"sandbox: NOT in force: {n} ({self._plan.reasons.get(n, 'not available')})"
                         + (" [waived]" if n in self.waived else ""))
        return "\n".join(lines)

    # ------------------------------------------------------------------ running
    def _rlimits(self) -> list[tuple[str, int, int]]:
        mem = self.memory_mb << 20
        nproc = self.max_processes
        if not self._plan.drop and not self._plan.userns and os.geteuid() != 0:
            # without a user namespace the limit counts every process and thread of this user (the trainer's too)
            nproc += _user_process_count(os.geteuid())
        return [
            ("RLIMIT_CPU", self.cpu_s, self.cpu_s + 1),
            ("RLIMIT_AS", mem, mem),
            ("RLIMIT_FSIZE", self.file_size_mb << 20, self.file_size_mb << 20),
            ("RLIMIT_NOFILE", self.max_open_files, self.max_open_files),
            ("RLIMIT_NPROC", nproc, nproc),
            ("RLIMIT_CORE", 0, 0),
        ]

    def _env(self) -> dict[str, str]:
        bindir = os.path.dirname(self._plan.python)
        env = {"PATH": f"{bindir}:{_SANDBOX_PATH}", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env.update(self._extra_env)
        return env

    def run(self, code: str) -> SandboxResult:
        """Run ``code`` in a fresh box; never raises (a tool-layer failure is a result, see the class).

        Calls of this process that drop to the same uid share that uid's ``RLIMIT_NPROC``: at most
        ``max_processes // 2`` of them run at once (measured: 16 concurrent calls at the default 32 all ran,
        32 made half of them fail to start), the others wait their turn. Sandboxes of *other* processes on
        the machine that use the same uid still share the limit: give each trainer its own ``uid``."""
        start = time.monotonic()
        with _uid_slot(self._plan.drop, self.max_processes):
            try:
                return self._run(code, start)
            except Exception as e:  # the tool layer failed: the caller gets data, not an exception
                return SandboxResult(SANDBOX_ERROR_MESSAGE, None, False, time.monotonic() - start,
                                     sandbox_error=f"{type(e).__name__}: {e}")

    def _run(self, code: str, start: float) -> SandboxResult:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        if self.print_last_line:
            code = wrap_last_expression(code)
        plan = self._plan
        workdir = tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=self.work_root)
        status_r = status_w = -1
        try:
            code_path = os.path.join(workdir, _CODE_NAME)
            with open(code_path, "wb") as f:
                f.write(code.encode("utf-8", "surrogatepass"))
            if plan.drop and not plan.mount:  # the code works in this directory: hand it over
                uid, gid = plan.drop
                os.chown(workdir, uid, gid)
                os.chown(code_path, uid, gid)
            os.chmod(workdir, 0o700)
            status_r, status_w = os.pipe()
            box_owner = (0, 0) if plan.userns else (plan.drop or (os.geteuid(), os.getegid()))
            cfg = {
                "status_fd": status_w, "code_path": code_path, "code_name": _CODE_NAME, "workdir": workdir,
                "mount": plan.mount, "punch": plan.punch, "box_owner": list(box_owner),
                "tmp_keep": _under_tmp(plan.python) if plan.mount else [],
                "disk_kb": self.disk_mb * 1024, "inodes": 16384, "rlimits": self._rlimits(),
                "drop": list(plan.drop) if plan.drop else None, "python": plan.python, "env": self._env(),
            }
            argv = [*plan.unshare, "--", plan.python, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(cfg)]
            if not plan.unshare:
                argv = argv[1:]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(status_w,), start_new_session=True, cwd=workdir,
                                    env={"PATH": _SANDBOX_PATH, "LANG": "C.UTF-8"})
            os.close(status_w)
            status_w = -1
            out, err, timed_out, flooded = self._collect(proc, start)
            status = self._read_status(status_r)
            rc = proc.returncode
        finally:
            for fd in (status_r, status_w):
                if fd >= 0:
                    os.close(fd)
            _rmtree(workdir)
        seconds = time.monotonic() - start
        text, truncated = _compose(out, err, self.max_output_bytes)
        if status.startswith("error") and not (timed_out or flooded):
            return SandboxResult(SANDBOX_ERROR_MESSAGE, None, False, seconds, sandbox_error=status[6:])
        exit_code: int | None = None
        signame = None
        note = None
        if timed_out:
            note = TIMEOUT_NOTE.format(t=self.timeout_s)
        elif flooded:
            note = FLOOD_NOTE.format(n=self.flood_bytes)
        elif status.startswith("exit "):
            exit_code = int(status.split()[1])
        elif status.startswith("signal "):
            signame = _signame(int(status.split()[1]))
            note = SIGNAL_NOTE.format(name=signame)
        elif rc is not None and rc < 0:
            signame = _signame(-rc)
            note = SIGNAL_NOTE.format(name=signame)
        else:
            return SandboxResult(SANDBOX_ERROR_MESSAGE, None, False, seconds,
                                 sandbox_error=f"the box ended without a status (return code {rc}): "
                                               + text[-500:])
        if note:
            text = text + ("" if not text or text.endswith("\n") else "\n") + note
        return SandboxResult(text, exit_code, timed_out, seconds, truncated=truncated, signal=signame)

    def _collect(self, proc: subprocess.Popen, start: float) -> tuple[_Stream, _Stream, bool, bool]:
        """Read stdout and stderr until both close (or the deadline, or the flood limit), then clean up."""
        cap = self.max_output_bytes
        streams = {proc.stdout.fileno(): _Stream(cap), proc.stderr.fileno(): _Stream(cap)}
        out, err = streams[proc.stdout.fileno()], streams[proc.stderr.fileno()]
        deadline = start + self.timeout_s
        timed_out = flooded = False
        exited_at = None
        sel = selectors.DefaultSelector()
        for fd in streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        try:
            while sel.get_map():
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if exited_at is None and _exited(proc.pid):
                    exited_at = now
                if exited_at is not None and now - exited_at > 0.2:
                    break  # the code is gone but something it left behind holds the pipes
                _read_ready(sel, min(deadline - now, 0.05 if exited_at else 0.5), streams)
                if out.total + err.total > self.flood_bytes:
                    flooded = True
                    break
            if timed_out or flooded:
                self._kill(proc)
                drain_until = time.monotonic() + 0.5
                while sel.get_map() and time.monotonic() < drain_until:
                    _read_ready(sel, 0.05)  # drained and dropped: the output is already cut
            else:
                # the process group and, without a PID namespace, the uid's processes go with the code
                if not self._plan.pid_ns:
                    self._kill(proc)
                try:
                    proc.wait(timeout=max(0.5, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out = True
                    self._kill(proc)
        finally:
            sel.close()
            proc.stdout.close()
            proc.stderr.close()
            if proc.returncode is None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._kill(proc)
                    proc.wait()
        return out, err, timed_out, flooded

    def _kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL the box: its init (or, without unshare, the code's process) first, so that its parent
        reaps it and nothing is left to the machine's init; then the process group; then, without a PID
        namespace, every process of the sandbox uid."""
        if proc.returncode is None and not _exited(proc.pid):
            killed = False
            try:  # killing the namespace's init makes the kernel kill and reap everything in it
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                    for child in f.read().split():
                        os.kill(int(child), signal.SIGKILL)
                        killed = True
            except (OSError, ValueError):
                pass
            until = time.monotonic() + (1.0 if killed else 0.0)
            while time.monotonic() < until and not _exited(proc.pid):
                time.sleep(0.002)
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the leader is not reaped yet: its pid is still ours
            except (ProcessLookupError, PermissionError):
                pass
        if self._plan.sweep:
            _sweep_uid(self._plan)

    @staticmethod
    def _read_status(fd: int) -> str:
        os.set_blocking(fd, False)
        chunks = []
        try:
            while True:
                data = os.read(fd, 4096)
                if not data:
                    break
                chunks.append(data)
        except BlockingIOError:
            pass
        return b"".join(chunks).decode("utf-8", "replace").strip()

    def __repr__(self) -> str:
        off = [n for n in WAIVABLE if not self._plan.protections.get(n)]
        return (f"PythonSandbox(timeout_s={self.timeout_s:g}, memory_mb={self.memory_mb}, "
                f"max_processes={self.max_processes}, missing={off})")


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its pid stays reserved for killpg)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _sweep_uid(plan: _Plan) -> None:
    """Kill every process of the sandbox uid: a process of that uid calls kill(-1, SIGKILL)."""
    if not plan.drop:
        return
    uid, gid = plan.drop
    code = (f"import os\nos.setgroups([])\nos.setresgid({gid}, {gid}, {gid})\nos.setresuid({uid}, {uid}, {uid})\n"
            "os.kill(-1, 9)")
    for _ in range(3):
        subprocess.run([plan.python, "-I", "-S", "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10, env={"PATH": _SANDBOX_PATH})
        if _user_process_count(uid) == 0:
            return


def _rmtree(path: str) -> None:
    def onerror(func, p, exc_info):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)
