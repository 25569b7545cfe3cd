"""PythonSandbox: normal code, the last-line rule, the limits, and the escapes it must stop.

Each escape test needs a protection the machine may lack; it is skipped, with the reason naming it, exactly
where that protection is not in force -- as the probe reports it, and as it works for the uid the tests run as:
run as an ordinary user (no uid to drop to) the code keeps the tests' own uid, so a file the tests can write the
code can write too unless the mount namespace stops it, and ``RLIMIT_NPROC`` counts the tests' own processes
unless a user namespace separates them. A fork bomb never runs without the process limit. The leak checks watch
the uid the code's processes actually have on this machine (:func:`_code_uid`, checked by a test).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
import shutil
import socket
import statistics
import tempfile
import uuid

import pytest

from spo_lab.tools import PythonSandbox, SandboxResult, SandboxUnavailable
from spo_lab.tools import sandbox as sbmod
from spo_lab.tools.sandbox import SANDBOX_ERROR_MESSAGE, WAIVABLE, wrap_last_expression

def _make(**kw) -> PythonSandbox:
    """A sandbox with every protection, or with what this machine gives (tests then skip by name)."""
    try:
        return PythonSandbox(**kw)
    except SandboxUnavailable:
        return PythonSandbox(allow_missing="all", **kw)


def _need(box: PythonSandbox, *names: str) -> None:
    missing = [n for n in names if not box.protections()[n]]
    if missing:
        pytest.skip(f"this machine cannot give {missing}: {box.describe()}")


def _code_uid(box: PythonSandbox) -> int:
    """The uid the box's code runs as, seen from this machine: the unprivileged uid it drops to when the tests run as
    root; otherwise the tests' own uid (a user namespace maps it to root inside the box, not outside)."""
    return box._plan.drop[0] if box._plan.drop else os.geteuid()


def _own_uid(box: PythonSandbox) -> bool:
    """The code runs as a uid of its own, not the tests' (``unprivileged_uid`` by the drop of a root run)."""
    return _code_uid(box) != os.geteuid()


def _limit_counts_the_tests(box: PythonSandbox) -> bool:
    """``RLIMIT_NPROC`` counts the tests' own processes and threads with the box's: the code keeps the tests' uid and
    has no user namespace of its own (an ordinary user on a machine that forbids them)."""
    return box.protections()["process_limit"] and not _own_uid(box) and not box._plan.userns


def _kill(pids) -> None:
    """End processes these tests made the box start (found by their marker) that outlived it."""
    for pid in pids:
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def _procs_of_uid(uid: int) -> set[int]:
    """The live processes of ``uid``; zombies (killed, waiting for whoever adopted them to reap them) are not."""
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    with open(f"/proc/{d}/stat") as f:
                        state = f.read().rsplit(")", 1)[1].split()[0]
                    if state not in ("Z", "X"):
                        pids.add(int(d))
            except (OSError, IndexError):
                pass
    return pids


def _box_leftovers(box: PythonSandbox, before: set[int]) -> set[int]:
    """Live processes of the uid the code runs as that were not there ``before``. Where that uid is the tests' own
    (no uid to drop to), only those the box starts count -- its bootstrap (``-I -S -c``), the code (``-I -B
    main.py``) and their forks, ``unshare`` --: other work of the same uid on this machine is not the box's."""
    new = _procs_of_uid(_code_uid(box)) - before
    if _own_uid(box):
        return new

    def the_boxs(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            return False
        return (argv[1:3] == [b"-I", b"-S"] and b"-c" in argv[3:4]) or argv[1:4] == [b"-I", b"-B", b"main.py"] or \
            os.path.basename(argv[0]) == b"unshare"

    return {pid for pid in new if the_boxs(pid)}


def _procs_with(marker: str) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(d))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def work_root():
    d = tempfile.mkdtemp(prefix="spo_sandbox_test_")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def box(work_root):
    b = _make(timeout_s=5, memory_mb=512, max_processes=16, work_root=work_root)
    print(b.describe())
    return b


# ====================================================================== probing and the API
def test_the_code_runs_as_the_uid_the_leak_checks_watch(box):
    """The code's process, found from here while it runs (a descendant of this process running ``main.py``), has
    the uid :func:`_code_uid` names: the one the leak checks below watch."""
    import threading
    import time

    def ancestors(pid: int) -> set[int]:
        seen = set()
        while pid > 1 and pid not in seen:
            seen.add(pid)
            try:
                with open(f"/proc/{pid}/status") as f:
                    pid = int(next(line.split()[1] for line in f if line.startswith("PPid:")))
            except (OSError, StopIteration, ValueError):
                break
        return seen

    def code_processes() -> dict[int, int]:
        found = {}
        for d in os.listdir("/proc"):
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                if argv[-3:] == [b"-B", b"main.py", b""] and os.getpid() in ancestors(int(d)):
                    with open(f"/proc/{d}/status") as f:
                        found[int(d)] = int(next(line.split()[1] for line in f if line.startswith("Uid:")))
            except (OSError, ValueError, StopIteration):
                pass
        return found

    call = threading.Thread(target=box.run, args=("import time; time.sleep(2)",))
    call.start()
    seen: dict[int, int] = {}
    while call.is_alive() and not seen:
        seen = code_processes()
        time.sleep(0.02)
    call.join()
    assert seen and set(seen.values()) == {_code_uid(box)}, (seen, _code_uid(box))


def test_protections_are_probed_once_and_reported(box):
    p = box.protections()
    assert set(p) == set(sbmod.PROTECTIONS) and all(isinstance(v, bool) for v in p.values())
    assert all(p[n] for n in sbmod.ALWAYS)
    again = _make(timeout_s=1, memory_mb=256, work_root=box.work_root)
    assert again._plan is box._plan  # one probe per process
    assert "in force" in box.describe()


def test_a_missing_protection_is_an_error_unless_waived(monkeypatch, box):
    plan = dataclasses.replace(box._plan, protections=dict(box._plan.protections, network_namespace=False),
                               reasons={"network_namespace": "`unshare --net` failed: Operation not permitted"})
    monkeypatch.setattr(sbmod, "_probe", lambda *a: plan)
    others = {n: True for n in WAIVABLE if n != "network_namespace"}
    monkeypatch.setattr(plan, "protections", {**plan.protections, **others})
    with pytest.raises(SandboxUnavailable) as e:
        PythonSandbox()
    msg = str(e.value)
    assert "network_namespace" in msg and "allow_missing" in msg and "Ubuntu 24.04" in msg
    assert e.value.missing == ("network_namespace",)
    waived = PythonSandbox(allow_missing={"network_namespace"})
    assert waived.protections()["network_namespace"] is False
    assert "NOT in force: network_namespace" in waived.describe()
    assert PythonSandbox(allow_missing="all").protections()["network_namespace"] is False
    with pytest.raises(ValueError, match="unknown protection"):
        PythonSandbox(allow_missing={"network"})


def test_normal_code_and_result_type(box):
    r = box.run("print(1+1)")
    assert isinstance(r, SandboxResult) and r.output == "2\n" and r.exit_code == 0 and not r.timed_out and r.ok
    assert 0 < r.seconds < 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.output = "x"  # type: ignore[misc]
    r = box.run("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert r.output == "out\nerr\n"  # stdout, then stderr
    assert box.run("import sys\nprint(repr(sys.stdin.read()))").output == "''\n"  # stdin is closed


def test_exception_gives_traceback_and_exit_code_1(box):
    r = box.run("def f():\n    raise ValueError('boom')\nf()")
    assert r.exit_code == 1 and "Traceback" in r.output and "ValueError: boom" in r.output
    r = box.run("import sys\nsys.exit(3)")
    assert r.exit_code == 3
    r = box.run("def f(:\n")
    assert r.exit_code == 1 and "SyntaxError" in r.output


# ====================================================================== the last-line rule
@pytest.mark.parametrize("code, expected", [
    ("1+1", "print(1+1)"),
    ("x = 2\nx * 3  # six", "x = 2\nprint(x * 3)  # six"),
    ("\n\n3\n\n", "\n\nprint(3)\n\n"),
    ("print(3)", "print(3)"),
    ("x = 1", "x = 1"),
    ("a, b = 1, 2\na, b", "a, b = 1, 2\nprint((a, b))"),
    ("for i in range(2):\n    i", "for i in range(2):\n    i"),
    ("print(1); 2", "print(1); print(2)"),
    ("é = 'ü'; é", "é = 'ü'; print(é)"),
    ("(1 +\n 2)", "print((1 +\n 2))"),
    ("1 +", "1 +"),  # does not parse: left as is, the sandbox reports the error
    ("", ""),
])
def test_wrap_last_expression(code, expected):
    assert wrap_last_expression(code) == expected


def test_print_last_line_in_the_box(box, work_root):
    assert box.run("x = 6 * 7\nx").output == "42\n"
    assert box.run("f = lambda: None\nf()").output == "None\n"  # as the recipe's print(...) does
    assert box.run("print('once')").output == "once\n"
    plain = _make(timeout_s=5, memory_mb=512, print_last_line=False, work_root=work_root)
    assert plain.run("1+1").output == ""


# ====================================================================== limits
def test_infinite_loop_times_out(work_root):
    box = _make(timeout_s=1, memory_mb=256, work_root=work_root)
    r = box.run("while True:\n    pass")
    assert r.timed_out and r.exit_code is None and "Timeout" in r.output
    assert 1.0 <= r.seconds < 2.0


def test_cpu_file_size_and_open_file_limits(work_root):
    box = _make(timeout_s=5, memory_mb=256, cpu_s=1, file_size_mb=1, max_open_files=32, work_root=work_root)
    r = box.run("while True:\n    pass")
    assert not r.timed_out and r.exit_code is None and r.signal in ("SIGXCPU", "SIGKILL") and r.seconds < 4
    r = box.run("open('big', 'wb').write(b'x' * (2 << 20))")
    assert r.exit_code == 1 and "File too large" in r.output
    r = box.run("fs = [open(f'f{i}', 'w') for i in range(100)]")
    assert r.exit_code == 1 and "Too many open files" in r.output


def test_memory_bomb_is_bounded(box):
    r = box.run("x = bytearray(4 * 1024 ** 3)")
    assert r.exit_code == 1 and "MemoryError" in r.output
    r = box.run("chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))")
    assert r.exit_code == 1 and "MemoryError" in r.output and len(r.output) < 2000 and r.seconds < 5


def test_megabytes_of_output_are_capped_fast(box):
    r = box.run("import sys\nsys.stdout.write('x' * 5_000_000)\nprint('END')")
    assert r.exit_code == 0 and r.truncated and r.seconds < 3
    assert "bytes of output cut" in r.output and r.output.endswith("END\n")
    assert len(r.output) < box.max_output_bytes + 200
    r = box.run("while True:\n    print('y' * 1000)")  # a flood that never stops is killed, long before the timeout
    assert r.exit_code is None and not r.timed_out and "Killed: the code printed more than" in r.output
    assert len(r.output) < box.max_output_bytes + 200 and r.seconds < 4


# ====================================================================== escapes
def test_network_to_a_local_port_fails(box):
    _need(box, "network_namespace")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        code = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
                f"    print('CONNECTED')\nexcept OSError as e:\n    print('failed:', e)")
        r = box.run(code)
        assert "CONNECTED" not in r.output and "failed" in r.output and "unreachable" in r.output
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    r = box.run("import socket\ntry:\n    socket.getaddrinfo('example.com', 80)\n    print('RESOLVED')\n"
                "except OSError as e:\n    print('failed:', e)")
    assert "RESOLVED" not in r.output


def test_writing_outside_the_work_dir_fails(box, work_root, tmp_path):
    """Either protection stops the write: the mount namespace (everything read-only but the box's own /tmp) or the
    unprivileged uid of a root run (the folder belongs to the tests' uid, the code runs as another)."""
    if not (box.protections()["mount_namespace"] or _own_uid(box)):
        pytest.skip(f"neither mount_namespace nor unprivileged_uid as a uid of the box's own is in force: the code "
                    f"runs as this test's own uid {os.geteuid()} on a writable file system and can write where the "
                    f"test can: {box.describe()}")
    private = tmp_path  # made by the test, owned by the tests' uid
    r = box.run(f"open({str(private / 'escape.txt')!r}, 'w').write('x')")
    assert r.exit_code == 1 and not (private / "escape.txt").exists()
    r = box.run("open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())")
    assert r.output == "ok\n"


def test_world_writable_dirs_and_tmp_stay_untouched(box):
    _need(box, "mount_namespace")  # read-only mounts stop any uid, the box's own /tmp is a fresh tmpfs
    if not os.path.isdir("/var/tmp"):
        pytest.skip("no /var/tmp to make a world-writable directory outside /tmp in")
    world = tempfile.mkdtemp(prefix="spo_sandbox_world_", dir="/var/tmp")  # outside /tmp: the box has its own
    os.chmod(world, 0o777)
    in_tmp = f"/tmp/spo_escape_{uuid.uuid4().hex}"
    try:
        r = box.run(f"open({os.path.join(world, 'escape.txt')!r}, 'w').write('x')")
        assert r.exit_code == 1 and "Read-only file system" in r.output and os.listdir(world) == []
        r = box.run(f"open({in_tmp!r}, 'w').write('x')\nprint('wrote')")  # the box's /tmp is its own tmpfs
        assert not os.path.exists(in_tmp)
        r = box.run("import os\nfor d in ('/var/tmp', '/dev/shm', '/run/lock', '/'):\n    try:\n"
                    "        open(os.path.join(d, 'escape.txt'), 'w'); print('WROTE', d)\n    except OSError:\n"
                    "        pass")
        assert "WROTE /var/tmp" not in r.output and "WROTE /run/lock" not in r.output and "WROTE /\n" not in r.output
    finally:
        shutil.rmtree(world, ignore_errors=True)
        if os.path.exists(in_tmp):
            os.remove(in_tmp)


def test_the_parent_environment_is_not_visible(box, monkeypatch):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("SPO_LAB_TEST_SECRET", secret)
    code = (f"import os\nprint(dict(os.environ))\nfor pid in ({os.getpid()}, {os.getppid()}, 1):\n    try:\n"
            f"        print(open(f'/proc/{{pid}}/environ', 'rb').read())\n    except OSError as e:\n"
            f"        print('no', pid, e)\nprint(open('/proc/self/cmdline', 'rb').read())")
    r = box.run(code)
    assert r.exit_code == 0 and secret not in r.output and "SPO_LAB_TEST_SECRET" not in r.output


def test_peoples_files_are_hidden_but_the_interpreter_runs(box, tmp_path):
    """The project the trainer runs in, $HOME and /home are empty in the box (only the interpreter's own
    folders are bound back), although their files are world-readable on the host. They are covered only in a root
    run that drops to the unprivileged uid; in a user namespace they stay visible (read-only)."""
    _need(box, "mount_namespace")
    if not _own_uid(box):
        pytest.skip(f"unprivileged_uid as a uid of the box's own is not in force: the code runs as this test's uid "
                    f"{os.geteuid()}, and people's folders are covered only when a root run drops to the box's uid")
    secret = Path(os.getcwd()) / f".sandbox-probe-{uuid.uuid4().hex}"
    secret.write_text("the user's file")
    os.chmod(secret, 0o644)
    try:
        r = box.run(f"import os, sys\nfor p in ({str(secret)!r}, os.path.join({os.path.expanduser('~')!r}, '.bashrc')):\n"
                     f"    try:\n        print('READ', p, open(p).read()[:20])\n    except OSError as e:\n"
                     f"        print('refused', type(e).__name__)\nprint(sys.version_info[:2])")
        assert r.exit_code == 0 and "READ" not in r.output and "the user's file" not in r.output, r.output
        assert f"({sys.version_info[0]}, {sys.version_info[1]})" in r.output
    finally:
        secret.unlink()


def test_fork_bomb_stops_at_the_process_limit(box):
    _need(box, "process_limit")  # never run a fork bomb without it
    if _limit_counts_the_tests(box):
        pytest.skip(f"process_limit does not bind the box alone: the code runs as this test's uid {os.geteuid()} "
                    "without a user namespace, so RLIMIT_NPROC counts the test's own processes and threads too")
    marker = f"bomb-{uuid.uuid4().hex}"
    code = ("import os, sys, time\nn = 0\ntry:\n    while n < 200:\n        if os.fork() == 0:\n"
            f"            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
            "        n += 1\nexcept OSError as e:\n    print('stopped after', n, e.strerror)")
    try:
        r = box.run(code)
        assert "stopped after" in r.output, r.output
        n = int(r.output.split()[2])
        assert 0 < n < box.max_processes and "Resource temporarily unavailable" in r.output
        if box.protections()["pid_namespace"] or box.protections()["orphan_sweep"]:
            assert _procs_with(marker) == []  # its children died with the box
    finally:  # without either, the children outlive the call (see the test below): end them here
        _kill(_procs_with(marker))


def test_recursive_fork_bomb_is_killed_with_all_its_processes(work_root):
    box = _make(timeout_s=1, memory_mb=128, max_processes=16, work_root=work_root)
    _need(box, "process_limit")
    before = _procs_of_uid(_code_uid(box))
    r = box.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert r.timed_out and r.seconds < 2.5
    assert _box_leftovers(box, before) == set()


@pytest.mark.parametrize("wait_for_timeout", [False, True])
def test_a_child_that_outlives_its_parent_dies_with_the_box(work_root, wait_for_timeout):
    box = _make(timeout_s=1.5, memory_mb=256, work_root=work_root)
    if not (box.protections()["pid_namespace"] or box.protections()["orphan_sweep"]):
        pytest.skip(f"neither pid_namespace nor orphan_sweep (a root run's kill of every process of the box's uid) "
                    f"is in force: an escaped child outlives the box: {box.describe()}")
    marker = f"daemon-{uuid.uuid4().hex}"
    code = ("import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        os.execv(sys.executable, [sys.executable, '-c', "
            f"\"import time; print('daemon up', flush=True); time.sleep(60)\", {marker!r}])\n"
            "    os._exit(0)\ntime.sleep(0.5)\nprint('parent done', flush=True)\n"
            + ("while True:\n    pass\n" if wait_for_timeout else ""))
    try:
        r = box.run(code)
        assert "daemon up" in r.output and "parent done" in r.output
        assert r.timed_out is wait_for_timeout
        assert _procs_with(marker) == []
    finally:
        _kill(_procs_with(marker))


# ====================================================================== failures of the tool layer
def test_tool_layer_failures_are_results_not_exceptions(box, monkeypatch, work_root):
    broken = _make(timeout_s=5, memory_mb=256, work_root=work_root)
    broken._plan = dataclasses.replace(box._plan, python="/nonexistent/python3")  # the code's interpreter
    r = broken.run("print(1)")
    assert r.output == SANDBOX_ERROR_MESSAGE and r.exit_code is None and "nonexistent" in r.sandbox_error

    def no_popen(*a, **k):
        raise OSError("cannot start")

    monkeypatch.setattr(sbmod.subprocess, "Popen", no_popen)
    r = box.run("print(1)")
    assert r.output == SANDBOX_ERROR_MESSAGE and r.exit_code is None and "cannot start" in r.sandbox_error
    assert not r.timed_out and r.seconds >= 0
    assert [d for d in os.listdir(work_root) if d.startswith("spo_sandbox_")] == []


# ====================================================================== nothing left behind
def test_200_calls_leave_no_process_and_no_directory(box, work_root):
    def boxes():
        return [d for d in os.listdir(work_root) if d.startswith("spo_sandbox_")]

    procs_before, dirs_before = _procs_of_uid(_code_uid(box)), boxes()  # the uid the code runs as
    times = []
    for i in range(200):
        r = box.run(f"print({i})")
        assert r.output == f"{i}\n", r
        times.append(r.seconds)
    assert boxes() == dirs_before == []
    assert _box_leftovers(box, procs_before) == set()
    print(f"per-call time over 200 calls: median {statistics.median(times) * 1e3:.1f} ms, "
          f"max {max(times) * 1e3:.1f} ms")


def test_more_concurrent_calls_than_the_uid_process_limit_wait_their_turn(work_root):
    """Calls that drop to one uid share its RLIMIT_NPROC; this process runs at most max_processes // 2 of them
    at once, so a burst of concurrent calls (an asynchronous collector's) all run instead of failing to start."""
    from concurrent.futures import ThreadPoolExecutor

    b = _make(timeout_s=10, memory_mb=256, max_processes=8, work_root=work_root)
    if b.protections()["orphan_sweep"]:
        pytest.skip("pid_namespace is not in force, so after each call a root run kills every process of the box's "
                    "uid (orphan_sweep): concurrent calls of one uid kill one another (the ToolEngine runs one at a "
                    "time)")
    if _limit_counts_the_tests(b):
        pytest.skip(f"process_limit does not bind the box alone: the code runs as this test's uid {os.geteuid()} "
                    "without a user namespace, so RLIMIT_NPROC also counts the test's own threads (24 here)")
    with ThreadPoolExecutor(24) as pool:
        res = list(pool.map(b.run, ["import time; time.sleep(0.2); print(6 * 7)"] * 24))
    assert [r.output.strip() for r in res] == ["42"] * 24, [r.output for r in res if r.output.strip() != "42"][:2]


def test_the_user_task_count_counts_threads_as_the_process_limit_does(monkeypatch):
    """Without a user namespace the box keeps the trainer's uid, and RLIMIT_NPROC counts that uid's threads too:
    the limit the box gets on top of what already runs must count them, or a threaded trainer starves its tools."""
    import threading

    from spo_lab.tools import sandbox as sb

    listdir = os.listdir
    monkeypatch.setattr(sb.os, "listdir", lambda p: [str(os.getpid())] if p == "/proc" else listdir(p))  # this process
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        assert sb._user_process_count(os.geteuid()) == len(listdir(f"/proc/{os.getpid()}/task")) >= 9
    finally:
        stop.set()
        for t in threads:
            t.join()
