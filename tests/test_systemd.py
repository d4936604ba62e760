"""The systemd unit: it parses, its sandbox scores <= 2.0, and a real systemd runs the agent inside it.

The fast tests use ``systemd-analyze`` offline. The slow ones boot a real systemd as PID 1 in
private mount/PID/cgroup namespaces (root only) and start ``scanner-agent@t.service`` with every
hardening directive of the shipped unit in force: only ExecStart (a probe, this file run as a
script), the paths drop-in and test plumbing are overridden. The probe then does what the agent
does (sd_notify, copy and delete a slide, OpenSlide, SQLite, loopback TCP, inotify, a Prefect flow on
the embedded server) and checks the sandbox refuses what it should (writes elsewhere, W+X memory,
netlink, other users' processes).

Run as a script, this file is that probe: ``python tests/test_systemd.py serve|hang|journal|exit N``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "scanner-agent@.service"
SYSUSERS = REPO / "systemd" / "scanner-agent.sysusers.conf"
README = REPO / "systemd" / "README.md"
INSTALLED_EXEC = "/opt/scanner-agent/.venv/bin/scanner-agent"
# Issue 14: the scheduling settings (Nice, CPUWeight, IOScheduling*) must not cost hardening.
MAX_EXPOSURE = 1.5

# --------------------------------------------------------------------------------------------
# The probe: runs inside the sandbox as the service's main process. Standard library plus the
# agent's own dependencies only; no pytest.
# --------------------------------------------------------------------------------------------

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def _apply_kernel_mdwe() -> str:
    """Also apply the kernel's own W^X (Linux >= 6.3), which systemd >= 254 uses for
    MemoryDenyWriteExecute=; systemd 252 uses a seccomp filter. The probe then runs under both."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0:
        return "applied"
    return f"not supported by this kernel ({os.strerror(ctypes.get_errno())})"


class _Checks:
    """Runs named checks, recording "ok[: detail]" or "FAILED: ..." for each; never stops early."""

    def __init__(self) -> None:
        self.results: dict[str, str] = {}

    def run(self, name: str, fn: Callable[[], object]) -> None:
        try:
            detail = fn()
        except BaseException as exc:
            self.results[name] = f"FAILED: {type(exc).__name__}: {exc}"
        else:
            self.results[name] = "ok" + (f": {detail}" if detail else "")


def _expect_refused(action: Callable[[], object], *errnos: int) -> str:
    try:
        action()
    except OSError as exc:
        if exc.errno in errnos:
            return errno.errorcode[exc.errno]
        raise AssertionError(
            f"refused with {exc!r}, expected {[errno.errorcode[e] for e in errnos]}"
        ) from exc
    raise AssertionError("was allowed")


def _check_identity() -> str:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    assert (user, group) == ("scanner-agent", "scanner-agent"), (user, group)
    umask = os.umask(0o027)
    assert umask == 0o027, oct(umask)
    return f"{user}:{group} umask {umask:04o}"


def _check_service_directories() -> str:
    for var, root in (
        ("STATE_DIRECTORY", "/var/lib"),
        ("LOGS_DIRECTORY", "/var/log"),
        ("CACHE_DIRECTORY", "/var/cache"),
    ):
        path = Path(os.environ[var])
        assert path == Path(root, "scanner-agent"), (var, path)
        (path / f"{os.environ['PROBE_INSTANCE']}.probe").write_text("ok")
    prefect_home = Path(os.environ["PREFECT_HOME"])
    assert prefect_home == Path(os.environ["STATE_DIRECTORY"], f"prefect-{os.environ['PROBE_INSTANCE']}"), (
        prefect_home
    )
    return os.environ["STATE_DIRECTORY"]


def _check_move_scan(source: Path, storage: Path) -> str:
    """What transfer does: copy while hashing, fsync, verify, rename into place, then delete the source."""
    incoming = storage / ".incoming"
    incoming.mkdir(exist_ok=True)
    partial = incoming / (source.name + ".partial")
    digest = hashlib.sha256()
    with source.open("rb") as src, partial.open("wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    assert hashlib.sha256(partial.read_bytes()).hexdigest() == digest.hexdigest()
    final = storage / source.name
    os.rename(partial, final)
    folder = os.open(storage, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    shutil.copystat(source, final)
    source.unlink()
    return f"{final} sha256 {digest.hexdigest()[:12]}"


def _check_read_only_elsewhere(outside: Path) -> str:
    # `outside` is mode 0777, so only the sandbox can refuse the write (EROFS, not EACCES).
    _expect_refused(lambda: (outside / "probe").write_text("x"), errno.EROFS)
    refused = []
    for path in ("/etc", "/usr", "/opt", "/var/lib", "/srv"):
        refused.append(
            f"{path} "
            + _expect_refused(
                lambda p=path: Path(p, f"probe-{uuid.uuid4().hex}").write_text("x"), errno.EROFS, errno.EACCES
            )
        )
    return ", ".join(refused)


def _check_openslide(path: Path, storage: Path) -> str:
    import openslide

    with openslide.OpenSlide(path) as slide:
        region = slide.read_region((0, 0), slide.level_count - 1, (64, 64))
        thumb = slide.get_thumbnail((128, 128))
        thumb.convert("RGB").save(storage / "thumbnail.jpg", "JPEG")
        assert slide.level_count == 3, slide.level_count
        return f"{slide.dimensions} {slide.level_count} levels, region {region.size}"


def _check_sqlite_wal() -> str:
    import sqlite3

    db = sqlite3.connect(Path(os.environ["STATE_DIRECTORY"]) / f"{os.environ['PROBE_INSTANCE']}.sqlite")
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        db.execute("CREATE TABLE IF NOT EXISTS scan (path TEXT, state TEXT)")
        with db:
            db.execute("INSERT INTO scan VALUES ('x.svs', 'stored')")
        return mode
    finally:
        db.close()


def _check_ctypes_callback() -> str:
    # A libffi closure: the kind of trampoline MemoryDenyWriteExecute= is known to break.
    libc = ctypes.CDLL(None)
    compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    values = (ctypes.c_int * 5)(5, 1, 4, 2, 3)
    libc.qsort(values, len(values), ctypes.sizeof(ctypes.c_int), compare(lambda a, b: a[0] - b[0]))
    assert list(values) == [1, 2, 3, 4, 5], list(values)
    return "qsort via CFUNCTYPE"


def _check_write_execute_refused() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    address = libc.mmap(None, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if address not in (None, ctypes.c_void_p(-1).value):
        raise AssertionError("a writable+executable mapping was allowed")
    return errno.errorcode[ctypes.get_errno()]


def _check_syscall_filter(storage: Path) -> str:
    affinity = _expect_refused(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)), errno.EPERM)
    chown = _expect_refused(lambda: os.chown(storage / "thumbnail.jpg", -1, os.getgid()), errno.EPERM)
    return f"sched_setaffinity {affinity}, chown {chown}"


def _check_network(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"ping")
        assert conn.recv(4) == b"pong"
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    socket.getaddrinfo("localhost", 443)  # glibc may try netlink first; it must fall back quietly
    netlink = _expect_refused(
        lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0), errno.EAFNOSUPPORT
    )
    packet = _expect_refused(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0), errno.EAFNOSUPPORT)
    return f"loopback TCP ok; netlink {netlink}, packet {packet}"


def _check_proc_and_writers(watch: Path) -> str:
    """Other users' processes are hidden; our own children's open files can still be seen."""
    me = os.getuid()
    pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    strangers = [pid for pid in pids if os.stat(f"/proc/{pid}").st_uid != me]
    assert not strangers and 1 not in pids, f"other users' processes visible: {strangers}"
    Path("/proc/locks").read_text()  # ProcSubset=all keeps the kernel's lock table readable
    target = watch / "still-writing.svs"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; f = open(sys.argv[1], 'ab'); f.write(b'x'); f.flush(); "
            "print('open', flush=True); time.sleep(120)",
            str(target),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "open"
        holders = set()
        for pid in (name for name in os.listdir("/proc") if name.isdigit()):
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == str(target):
                        flags = int(
                            re.search(r"flags:\s*(\d+)", Path(f"/proc/{pid}/fdinfo/{fd}").read_text())[1], 8
                        )
                        if flags & (os.O_WRONLY | os.O_RDWR):
                            holders.add(int(pid))
        assert holders == {writer.pid}, (holders, writer.pid)
    finally:
        writer.kill()
        writer.wait()
    return f"{len(pids)} visible pids, all ours; writer {writer.pid} seen via /proc/PID/fd"


def _check_inotify(watch: Path) -> str:
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers.inotify import InotifyObserver

    seen = threading.Event()

    class Handler(FileSystemEventHandler):
        def on_closed(self, event: FileSystemEvent) -> None:
            if event.src_path.endswith("new-scan.tif"):
                seen.set()

    observer = InotifyObserver()
    observer.schedule(Handler(), str(watch))
    observer.start()
    try:
        (watch / "new-scan.tif").write_bytes(b"x")
        assert seen.wait(30), "no inotify event"
    finally:
        observer.stop()
        observer.join()
    return "close-write seen"


def _check_ipc_and_tls() -> str:
    import multiprocessing
    import ssl

    multiprocessing.Lock().acquire()  # POSIX semaphore in /dev/shm (PrivateDevices=, PrivateIPC=)
    context = ssl.create_default_context()
    import google.auth  # noqa: F401
    import gspread  # noqa: F401
    import slack_sdk  # noqa: F401

    return f"{len(context.get_ca_certs()) or 'lazy'} CA certs"


def _check_credential() -> str:
    secret = Path(os.environ["PROBE_CREDENTIAL"]).read_text().strip()
    assert secret == os.environ["PROBE_CREDENTIAL_EXPECTED"], "credential content differs"
    _expect_refused(lambda: Path(os.environ["PROBE_CREDENTIAL_SOURCE"]).read_text(), errno.EACCES)
    return "readable via $CREDENTIALS_DIRECTORY, source file not"


def _check_prefect_flow() -> str:
    from prefect import flow, task

    @task(name="Add")
    def add(a: int, b: int) -> int:
        return a + b

    @flow(name="Sandbox Probe")
    def probe_flow() -> int:
        return add(1, 2)

    started = time.monotonic()
    assert probe_flow() == 3
    return f"flow on the embedded server in {time.monotonic() - started:.1f}s"


def _serve() -> int:
    from scanner_agent.systemd import notify as sdnotify

    mdwe = _apply_kernel_mdwe()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    interval = sdnotify.watchdog_interval() or 60.0

    def ping() -> None:
        while not stop.wait(interval / 2):
            sdnotify.watchdog()

    threading.Thread(target=ping, daemon=True).start()
    sdnotify.ready("probing the sandbox")

    watch, storage = Path(os.environ["PROBE_WATCH"]), Path(os.environ["PROBE_STORAGE"])
    slide = watch / os.environ["PROBE_SLIDE"]
    stored = storage / slide.name
    checks = _Checks()
    checks.results["kernel MDWE"] = mdwe
    checks.run("identity", _check_identity)
    checks.run("watchdog interval", lambda: f"{sdnotify.watchdog_interval()}s")
    checks.run("service directories", _check_service_directories)
    checks.run("move scan", lambda: _check_move_scan(slide, storage))
    checks.run("read-only elsewhere", lambda: _check_read_only_elsewhere(Path(os.environ["PROBE_OUTSIDE"])))
    checks.run("openslide", lambda: _check_openslide(stored, storage))
    checks.run("sqlite wal", _check_sqlite_wal)
    checks.run("ctypes callback", _check_ctypes_callback)
    checks.run("write+execute refused", _check_write_execute_refused)
    checks.run("syscall filter", lambda: _check_syscall_filter(storage))
    checks.run("network", lambda: _check_network(int(os.environ["PROBE_ECHO_PORT"])))
    checks.run("proc", lambda: _check_proc_and_writers(watch))
    checks.run("inotify", lambda: _check_inotify(watch))
    checks.run("ipc and tls", _check_ipc_and_tls)
    checks.run("credential", _check_credential)
    checks.run("prefect flow", _check_prefect_flow)

    report = storage / "report.json"
    report.with_suffix(".tmp").write_text(json.dumps(checks.results, indent=2))
    os.rename(report.with_suffix(".tmp"), report)
    sdnotify.status("probe done")
    stop.wait()
    sdnotify.stopping("stopping")
    (storage / "stopped").write_text("ok")
    return 0


def _hang() -> int:
    """Start, say READY, ping once, then stop pinging: a hung agent the watchdog must catch."""
    from scanner_agent.systemd import notify as sdnotify

    with open(Path(os.environ["PROBE_STORAGE"]) / "starts", "a") as starts:
        starts.write(f"{os.getpid()}\n")
    sdnotify.ready("about to hang")
    sdnotify.watchdog()
    time.sleep(3600)
    return 0


def _journal() -> int:
    """Log through the agent's own set-up under journald, then stay up: tests read ``journalctl``."""
    import logging

    from scanner_agent import cli
    from scanner_agent.systemd import journald
    from scanner_agent.systemd import notify as sdnotify

    cli._setup_logging(False)
    journald.set_process_fields(scanner="Cardinal")
    handler = type(logging.getLogger().handlers[0]).__name__
    (Path(os.environ["PROBE_STORAGE"]) / "handler").write_text(handler)
    log = logging.getLogger("scanner_agent.probe")
    with journald.scan_context(scan_id=7, flow_run_id="probe-run"):
        journald.bind_scan_context(barcode="620995")
        log.info("probe info line")
        log.warning("probe warning: storage is slow")
        log.error("probe error: slide does not open")
    sdnotify.ready("logged")
    time.sleep(3600)
    return 0


def _probe_main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        return _serve()
    if argv[:1] == ["journal"]:
        return _journal()
    if argv[:1] == ["hang"]:
        return _hang()
    if argv[:1] == ["exit"]:
        with open(Path(os.environ["PROBE_STORAGE"]) / "starts", "a") as starts:
            starts.write(f"{os.getpid()}\n")
        return int(argv[1])
    print(f"usage: {sys.argv[0]} serve|hang|journal|exit N", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))

# --------------------------------------------------------------------------------------------
# The tests.
# --------------------------------------------------------------------------------------------

import pytest  # noqa: E402 - the probe above runs without pytest

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


def read_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (systemd keys repeat, so configparser won't do)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def readme_drop_ins() -> dict[str, str]:
    """The drop-in examples in systemd/README.md: fenced blocks whose first line names the file."""
    found = {}
    for indent, block in re.findall(r"(?m)^( *)```ini\n(.*?)^ *```", README.read_text(), flags=re.S):
        block = textwrap.dedent(block) if indent else block
        first, _, body = block.partition("\n")
        match = re.fullmatch(
            r"# /etc/systemd/system/scanner-agent@cardinal\.service\.d/([\w-]+\.conf)", first.strip()
        )
        if match:
            found[match[1]] = body
    return found


def instance_copy(directory: Path, *, with_drop_ins: bool = False, stand_in_exec: bool = True) -> Path:
    """The unit as instance `cardinal` in `directory`; its ExecStart binary swapped for a stand-in
    that exists (verify checks that it is executable), and optionally the README's drop-ins."""
    text = UNIT.read_text()
    if stand_in_exec:
        stand_in = directory / "bin" / "scanner-agent"
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
        assert f"ExecStart={INSTALLED_EXEC} " in text
        text = text.replace(f"ExecStart={INSTALLED_EXEC} ", f"ExecStart={stand_in} ")
    unit = directory / "scanner-agent@cardinal.service"
    unit.write_text(text)
    if with_drop_ins:
        drop_in_dir = directory / "scanner-agent@cardinal.service.d"
        drop_in_dir.mkdir()
        for name, body in readme_drop_ins().items():
            (drop_in_dir / name).write_text(body)
    return unit


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, *map(str, args)], capture_output=True, text=True, timeout=120)


def overall_exposure(unit: Path) -> tuple[float, str]:
    result = analyze("security", "--offline=yes", unit)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure line in:\n{result.stdout}\n{result.stderr}"
    return float(match[1]), result.stdout


# --- static checks ----------------------------------------------------------------------------


@needs_analyze
def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    unit = instance_copy(tmp_path)
    result = analyze("verify", unit)
    # verify exits 0 even for unknown or misspelled keys; they only show up on stderr.
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr


@needs_analyze
def test_unmodified_unit_only_lacks_its_installed_binary(tmp_path: Path) -> None:
    unit = instance_copy(tmp_path, stand_in_exec=False)
    result = analyze("verify", unit)
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    assert complaints == [
        f"scanner-agent@cardinal.service: Command {INSTALLED_EXEC} is not executable: "
        "No such file or directory"
    ] or (complaints == [] and Path(INSTALLED_EXEC).exists())


@needs_analyze
def test_readme_drop_ins_verify_without_any_warning(tmp_path: Path) -> None:
    assert {"paths.conf", "credentials.conf"} <= set(readme_drop_ins()), "README lost its drop-in examples"
    unit = instance_copy(tmp_path, with_drop_ins=True)
    result = analyze("verify", unit)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@needs_analyze
@pytest.mark.parametrize("with_drop_ins", [False, True], ids=["unit", "unit+readme-drop-ins"])
def test_exposure_is_at_most_one_and_a_half(tmp_path: Path, with_drop_ins: bool) -> None:
    exposure, table = overall_exposure(instance_copy(tmp_path, with_drop_ins=with_drop_ins))
    assert exposure <= MAX_EXPOSURE, table


def one_value(section: dict[str, list[str]], key: str) -> str:
    assert len(section.get(key, [])) == 1, f"{key}: {section.get(key)}"
    return section[key][0]


def test_unit_keeps_what_the_agent_relies_on() -> None:
    service = read_unit(UNIT.read_text())["Service"]

    def one(key: str) -> str:
        return one_value(service, key)

    assert one("Type") == "notify" and one("NotifyAccess") == "main"
    assert one("Restart") == "on-failure" and one("KillMode") == "mixed"
    assert re.fullmatch(r"\d+s", one("WatchdogSec")) and int(one("WatchdogSec")[:-1]) >= 20
    # The agent's graceful stop waits up to 300 s for in-flight copies; systemd must wait longer.
    assert int(one("TimeoutStopSec").removesuffix("s")) > 300
    assert one("User") == one("Group") == "scanner-agent"
    assert one("ExecStart") == f"{INSTALLED_EXEC} run --config /etc/scanner-agent/%i.toml"
    # config/cardinal.toml keeps the journal at /var/lib/scanner-agent/cardinal.sqlite.
    assert one("StateDirectory") == one("LogsDirectory") == one("CacheDirectory") == "scanner-agent"
    assert "PYTHONUNBUFFERED=1" in " ".join(service["Environment"])
    assert one("EnvironmentFile") == "-/etc/scanner-agent/%i.env"
    # sd_notify and journald need AF_UNIX; Google, Slack, SMTP and Prefect need IP.
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one("ProtectSystem") == "strict"
    # The agent must see its own children's /proc entries; ProcSubset=pid would also hide /proc/locks.
    assert service.get("ProcSubset", ["all"]) == ["all"]
    assert "IPAddressDeny" not in service and "PrivateNetwork" not in service


# The demo runs from a terminal on relative paths, never under systemd.
SCANNER_CONFIGS = sorted(p for p in (REPO / "config").glob("*.toml") if p.name != "demo.toml")


@pytest.mark.parametrize("config", SCANNER_CONFIGS, ids=lambda p: p.name)
def test_example_configs_fit_the_default_sandbox(config: Path) -> None:
    """The shipped configs' folders are writable under the unit as installed, without a drop-in."""
    import tomllib

    data = tomllib.loads(config.read_text())
    service = read_unit(UNIT.read_text())["Service"]
    writable = [Path(p.lstrip("-")) for value in service["ReadWritePaths"] for p in value.split()]
    state = Path("/var/lib", one_value(service, "StateDirectory"))

    def allowed(path: Path, roots: list[Path]) -> bool:
        return any(path == root or root in path.parents for root in roots)

    assert allowed(Path(data["scanner"]["watch"]), writable), f"{config}: watch folder outside ReadWritePaths"
    assert allowed(Path(data["storage"]["root"]), writable), f"{config}: storage root outside ReadWritePaths"
    assert allowed(Path(data["journal"]["path"]).parent, [state]), f"{config}: journal outside {state}"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_creates_a_locked_system_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    passwd = {
        line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    name, _pw, uid, gid, _gecos, home, shell = passwd["scanner-agent"]
    assert int(uid) < 1000 and uid == gid, "a system user with its own group"
    assert home == "/var/lib/scanner-agent" and shell.endswith("nologin")
    group = {line.split(":")[0] for line in (tmp_path / "etc/group").read_text().splitlines()}
    assert "scanner-agent" in group


# --- a real systemd -----------------------------------------------------------------------------


def _cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def _systemd_unavailable() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux to boot systemd in private namespaces"
    for tool in ("/lib/systemd/systemd", shutil.which("unshare"), shutil.which("nsenter")):
        if not tool or not os.access(tool, os.X_OK):
            return f"{tool or 'unshare/nsenter'} is missing"
    if _cgroup2_mount() is None:
        return "no cgroup2 hierarchy mounted"
    if not Path("/srv").is_dir():
        return "/srv is needed as a mount point"
    return None


def _free_id() -> int:
    for candidate in range(989, 900, -1):
        with contextlib.suppress(KeyError):
            pwd.getpwuid(candidate)
            continue
        with contextlib.suppress(KeyError):
            grp.getgrgid(candidate)
            continue
        return candidate
    raise RuntimeError("no free system uid/gid")


class SystemdInNamespaces:
    """A real systemd as PID 1 in private mount, PID and cgroup namespaces, running one unit.

    Host paths stay untouched: /run, /var/lib, /var/log, /var/cache, /tmp and /var/tmp are fresh
    tmpfs inside, /srv is a bind of the test's directory, and the scanner-agent user exists only
    in a bind-mounted copy of /etc/passwd. Killing PID 1 ends everything in it.
    """

    def __init__(self, root: Path, start: str, units: dict[str, str], uid: int) -> None:
        self.root = root
        self.srv = root / "srv"
        self.console = root / "console.log"
        units_dir = root / "units"
        for rel, text in units.items():
            (units_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (units_dir / rel).write_text(text)
        shutil.copy("/etc/passwd", root / "passwd")
        shutil.copy("/etc/group", root / "group")
        with open(root / "passwd", "a") as f:
            f.write(
                f"scanner-agent:x:{uid}:{uid}:Slide scanner agent:/var/lib/scanner-agent:/usr/sbin/nologin\n"
            )
        with open(root / "group", "a") as f:
            f.write(f"scanner-agent:x:{uid}:\n")
        self.console.touch()
        own = re.search(r"(?m)^0::/(.*)$", Path("/proc/self/cgroup").read_text())
        mount = _cgroup2_mount()
        if own is None or mount is None:
            raise RuntimeError("this process is not in a cgroup2 hierarchy")
        # Its own cgroup, so systemd's slices stay below ours and are removed with it.
        self.cgroup = mount / own[1] / f"scanner-agent-test-{uuid.uuid4().hex[:8]}"
        self.cgroup.mkdir()
        script = f"""
            set -e
            mount -t tmpfs -o mode=0755 tmpfs /run
            mkdir -p /run/systemd/system
            cp -R {units_dir}/. /run/systemd/system/
            mount --bind {root}/passwd /etc/passwd
            mount --bind {root}/group /etc/group
            mount --bind {self.console} /dev/console
            mount --bind {self.srv} /srv
            for d in /var/lib /var/log /var/cache; do mount -t tmpfs -o mode=0755 tmpfs $d; done
            for d in /tmp /var/tmp; do mount -t tmpfs -o mode=1777 tmpfs $d; done
            mount -t cgroup2 cgroup2 /sys/fs/cgroup
            mount -t proc proc /proc
            # A booting systemd makes / shared itself, but not in a container; credentials and the
            # sandbox rely on it. These are new peer groups: nothing propagates back to the host.
            mount --make-rshared /
            exec env -i container=scanner-agent-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \\
                /lib/systemd/systemd --system --unit={start} --log-target=console --show-status=no
        """
        self.boot_log = root / "boot.log"
        with self.boot_log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    "sh",
                    "-c",
                    f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"',
                    "sh",
                    "unshare",
                    "--mount",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--cgroup",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.pid1 = self._wait_for_pid1()
        except BaseException:
            self.close()
            raise

    def _wait_for_pid1(self) -> int:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"namespace setup failed: {self.boot_log.read_text()}")
            try:
                children = (
                    Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
                )
            except OSError as exc:
                raise RuntimeError(f"cannot list unshare's children: {exc}") from exc
            for child in children:
                with contextlib.suppress(OSError):
                    if (
                        Path(f"/proc/{child}/comm").read_text().strip() == "systemd"
                        and self.systemctl("show", "--property=Version", pid1=int(child)).returncode == 0
                    ):
                        return int(child)
            time.sleep(0.2)
        raise RuntimeError(f"systemd did not come up:\n{self.boot_log.read_text()}{self.console.read_text()}")

    def systemctl(self, *args: str, pid1: int | None = None) -> subprocess.CompletedProcess[str]:
        # --pid too: the manager's private bus only talks to peers in its own PID namespace.
        return subprocess.run(
            ["nsenter", f"--target={pid1 or self.pid1}", "--mount", "--pid", "systemctl", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def show(self, unit: str) -> dict[str, str]:
        out = self.systemctl(
            "show",
            unit,
            "--property=ActiveState,SubState,Result,NRestarts,StatusText,"
            "ExecMainStatus,ExecMainCode,WatchdogUSec,MainPID",
        ).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 600) -> None:
        """Wait for a condition (a generous deadline, not a speed requirement)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.diagnostics()}")
            time.sleep(0.3)

    def diagnostics(self) -> str:
        agent_log = self.srv / "agent.log"
        status = self.systemctl("status", "--no-pager", "scanner-agent@t.service")
        return (
            f"--- systemctl status ---\n{status.stdout}{status.stderr}\n"
            f"--- agent log ---\n{agent_log.read_text()[-6000:] if agent_log.exists() else ''}"
        )

    def close(self) -> None:
        self.process.kill()  # --kill-child takes PID 1, and with it the whole namespace
        self.process.wait()
        for _ in range(100):
            try:
                for cg in sorted(self.cgroup.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if cg.is_dir():
                        cg.rmdir()
                self.cgroup.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def _tiled_slide(path: Path) -> None:
    """A small pyramidal tiled TIFF that OpenSlide reads as a generic-tiff slide."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        for index, level in enumerate((base, base[::2, ::2], base[::4, ::4])):
            # subfiletype=1 marks a reduced-resolution image, which OpenSlide takes as a level.
            tif.write(
                level, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=1 if index else 0
            )


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A loopback TCP server answering "ping" with "pong", standing in for Prefect/Slack/Google."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                if conn.recv(4) == b"ping":
                    conn.sendall(b"pong")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def _hidden_by_protect_home(path: Path) -> bool:
    return any(path == Path(p) or Path(p) in path.parents for p in ("/home", "/root", "/run/user"))


def _test_drop_in(mode: str, srv: Path, extra: str = "", env: dict[str, str] | None = None) -> str:
    """Test plumbing only: the probe as ExecStart, its log to a file (no journald in here)."""
    lines = [
        "[Unit]",
        # sysinit.target & co. would start half a distribution inside the namespace.
        "DefaultDependencies=no",
        "[Service]",
        "ExecStart=",
        f"ExecStart={sys.executable} {Path(__file__).resolve()} {mode}",
        "StandardOutput=append:/srv/agent.log",
        "StandardError=inherit",
        "LimitCORE=0",
    ]
    # This build box's Python lives under /root (pyenv); a production venv must not (README).
    hidden = sorted({str(p) for p in (Path(sys.base_prefix), REPO) if _hidden_by_protect_home(p)})
    if hidden:
        lines += ["ProtectHome=tmpfs", "BindReadOnlyPaths=" + " ".join(hidden)]
    for key, value in (env or {}).items():
        lines.append(f'Environment="{key}={value}"')
    return "\n".join(lines) + "\n" + extra


@pytest.fixture()
def booted(tmp_path: Path) -> Iterator[Callable[..., SystemdInNamespaces]]:
    reason = _systemd_unavailable()
    if reason:
        pytest.skip(reason)
    managers: list[SystemdInNamespaces] = []
    uid = _free_id()
    srv = tmp_path / "srv"
    for sub in ("watch", "storage", "outside", "secrets"):
        (srv / sub).mkdir(parents=True)
    os.chown(srv / "watch", uid, uid)
    os.chown(srv / "storage", uid, uid)
    (srv / "outside").chmod(0o777)
    (srv / "secrets").chmod(0o700)

    def boot(mode: str, extra: str = "", env: dict[str, str] | None = None) -> SystemdInNamespaces:
        paths = readme_drop_ins()["paths.conf"]
        paths = re.sub(r"(?m)^ReadWritePaths=\S.*$", "ReadWritePaths=/srv/watch /srv/storage", paths)
        paths = re.sub(r"(?m)^(RequiresMountsFor|SupplementaryGroups)=.*\n", "", paths)
        units = {
            "scanner-agent@.service": UNIT.read_text(),
            "scanner-agent@t.service.d/paths.conf": paths,
            "scanner-agent@t.service.d/zz-test.conf": _test_drop_in(mode, srv, extra, env),
        }
        try:
            manager = SystemdInNamespaces(tmp_path, "scanner-agent@t.service", units, uid)
        except (RuntimeError, OSError) as exc:
            pytest.skip(f"cannot boot systemd in namespaces here: {exc}")
        managers.append(manager)
        return manager

    yield boot
    for manager in managers:
        manager.close()


@pytest.mark.slow
def test_real_systemd_runs_the_agent_in_the_full_sandbox(
    booted: Callable[..., SystemdInNamespaces], tmp_path: Path
) -> None:
    srv = tmp_path / "srv"
    _tiled_slide(srv / "watch" / "S24-0001.tif")
    token = f"xoxb-test-{uuid.uuid4().hex}"
    (srv / "secrets" / "slack-bot-token").write_text(token + "\n")
    (srv / "secrets" / "slack-bot-token").chmod(0o600)
    with echo_server() as port:
        manager = booted(
            "serve",
            extra="LoadCredential=slack-bot-token:/srv/secrets/slack-bot-token\n",
            env={
                "PROBE_INSTANCE": "t",
                "PROBE_WATCH": "/srv/watch",
                "PROBE_STORAGE": "/srv/storage",
                "PROBE_OUTSIDE": "/srv/outside",
                "PROBE_SLIDE": "S24-0001.tif",
                "PROBE_ECHO_PORT": str(port),
                "PROBE_CREDENTIAL": "%d/slack-bot-token",
                "PROBE_CREDENTIAL_SOURCE": "/srv/secrets/slack-bot-token",
                "PROBE_CREDENTIAL_EXPECTED": token,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
            },
        )
        unit = "scanner-agent@t.service"
        report = srv / "storage" / "report.json"
        manager.wait_for(
            "the probe's report", lambda: report.exists() or manager.show(unit)["ActiveState"] == "failed"
        )
        results = json.loads(report.read_text()) if report.exists() else {}
        failed = {
            name: result for name, result in results.items() if not result.startswith(("ok", "applied"))
        }
        assert results and not failed, f"{json.dumps(results, indent=2)}\n{manager.diagnostics()}"

    # READY=1 made it through the sandbox, and so did STATUS=.
    manager.wait_for("the probe's STATUS", lambda: manager.show(unit)["StatusText"] == "probe done")
    state = manager.show(unit)
    assert (state["ActiveState"], state["SubState"], state["NRestarts"]) == ("active", "running", "0"), state
    assert state["WatchdogUSec"] == "1min"
    assert not (srv / "watch" / "S24-0001.tif").exists() and (srv / "storage" / "S24-0001.tif").exists()
    assert token not in (srv / "agent.log").read_text()

    manager.systemctl("stop", unit)
    manager.wait_for("a clean stop", lambda: manager.show(unit)["ActiveState"] == "inactive")
    assert manager.show(unit)["Result"] == "success"
    assert (srv / "storage" / "stopped").read_text() == "ok"


@pytest.mark.slow
def test_watchdog_restarts_a_hung_agent(booted: Callable[..., SystemdInNamespaces], tmp_path: Path) -> None:
    manager = booted("hang", extra="WatchdogSec=2s\nRestartSec=1s\n", env={"PROBE_STORAGE": "/srv/storage"})
    starts = tmp_path / "srv" / "storage" / "starts"
    unit = "scanner-agent@t.service"
    manager.wait_for(
        "a restart after the watchdog fired", lambda: starts.exists() and len(starts.read_text().split()) >= 2
    )
    assert int(manager.show(unit)["NRestarts"]) >= 1


@pytest.mark.slow
@pytest.mark.parametrize(("code", "restarts"), [(78, False), (1, True)], ids=["EX_CONFIG", "other-failure"])
def test_config_errors_are_not_restarted_but_other_failures_are(
    booted: Callable[..., SystemdInNamespaces], tmp_path: Path, code: int, restarts: bool
) -> None:
    manager = booted(f"exit {code}", extra="RestartSec=1s\n", env={"PROBE_STORAGE": "/srv/storage"})
    unit = "scanner-agent@t.service"
    starts = tmp_path / "srv" / "storage" / "starts"
    if restarts:
        manager.wait_for("a restart", lambda: starts.exists() and len(starts.read_text().split()) >= 2)
    else:
        # "failed" (not "auto-restart") means systemd decided not to schedule a restart at all.
        manager.wait_for("the unit to fail", lambda: manager.show(unit)["ActiveState"] == "failed")
        state = manager.show(unit)
        assert (state["SubState"], state["Result"], state["NRestarts"]) == ("failed", "exit-code", "0"), state
        assert len(starts.read_text().split()) == 1


@pytest.mark.slow
def test_journalctl_priority_filter_shows_the_agents_warnings_with_their_scan_fields(
    booted: Callable[..., SystemdInNamespaces], tmp_path: Path
) -> None:
    """Under a real journald: `journalctl -p warning` shows warnings and errors (not info), and the
    native fields find a slide's lines (`journalctl SCANNER=Cardinal BARCODE=620995`)."""
    if not Path("/lib/systemd/systemd-journald").exists() or not shutil.which("journalctl"):
        pytest.skip("systemd-journald or journalctl is not installed")
    journal = (
        "StandardOutput=journal\nStandardError=journal\n"
        "[Unit]\nWants=systemd-journald.socket\nAfter=systemd-journald.socket\n"
    )
    manager = booted("journal", extra=journal, env={"PROBE_STORAGE": "/srv/storage"})
    unit = "scanner-agent@t.service"
    manager.wait_for("the probe's READY", lambda: manager.show(unit)["StatusText"] == "logged")

    def journalctl(*args: str) -> list[dict[str, str]]:
        out = subprocess.run(
            [
                "nsenter",
                f"--target={manager.pid1}",
                "--mount",
                "--pid",
                "journalctl",
                "--no-pager",
                "-o",
                "json",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def messages(*args: str) -> list[str]:
        return [e["MESSAGE"] for e in journalctl(*args) if str(e.get("MESSAGE", "")).startswith("probe")]

    manager.wait_for("the lines in the journal", lambda: len(messages("-u", unit)) >= 3)
    assert (tmp_path / "srv" / "storage" / "handler").read_text() == "NativeJournalHandler"
    assert messages("-u", unit, "-p", "warning") == [
        "probe warning: storage is slow",
        "probe error: slide does not open",
    ]
    [entry] = [e for e in journalctl("-u", unit, "-p", "err") if e["MESSAGE"].startswith("probe")]
    assert entry["PRIORITY"] == "3" and entry["SYSLOG_IDENTIFIER"] == "scanner-agent"
    assert (entry["SCAN_ID"], entry["FLOW_RUN_ID"]) == ("7", "probe-run")
    assert len(messages("SCANNER=Cardinal", "BARCODE=620995")) == 3
