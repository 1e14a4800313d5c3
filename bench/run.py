"""ipcbind against sysv_ipc and against plain C, measured in one run.

    python bench/run.py [--rounds N] [--only CASE ...]

Needs the ``bench`` extra (``pip install '.[bench]'``, which installs sysv_ipc) and
gcc: the C baselines (bench/loops.c) are compiled into a temporary directory.

ipcbind is measured on both of its paths: as imported here (with the accelerator,
src/accel.c, where it is built and not turned off) and, in a child interpreter
started with IPCBIND_ACCELERATOR=0, on the cffi path alone ("cffi only"). The child
is started for each measurement and times only its loop, as the C baselines do.

Every case runs each of its implementations once per round, in an order that
rotates from round to round, so all of them see the same machine at nearly the
same time. A measurement is the CPU time of the measuring thread
(CLOCK_THREAD_CPUTIME_ID, in Python and in C alike) over a loop, divided by its
unit; time spent waiting for a CPU on a busy machine is not counted. The table
shows the median of each implementation over the rounds, and each ratio as the
median of the ratios taken round by round, with their interquartile range.

The batch and peek cases need queues larger than the default 16384 bytes
(msgmnb). Raising a queue's qbytes past msgmnb needs CAP_SYS_RESOURCE, so the
benchmark moves into a fresh IPC namespace (unshare(CLONE_NEWIPC), which needs
CAP_SYS_ADMIN) and sets msgmnb there. Without that privilege those two cases are
skipped, and the others run in the current namespace. Every object the benchmark
makes is removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import ipcbind
from ipcbind import _seam
from ipcbind._seam import ACCELERATOR_VARIABLE

try:
    import sysv_ipc
except ImportError:
    sys.exit("bench: sysv_ipc is missing; install the bench extra: pip install '.[bench]'")

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 64                 # bytes per message
BATCH = 2000              # messages per send_many / receive_many
PEEK = 1000               # messages in the queue peek_all copies
MSGMNB = 1 << 20          # queue size set in the private namespace
NEEDED = max(BATCH, PEEK) * SIZE
C_RECV_BUFFER = 8192      # RECV_SIZE in loops.c: msgmax, as a C program passes it
EXACT = f"C, {SIZE} B buffer"
CFFI = "cffi only"

# Loop lengths: each measurement lasts some tens of milliseconds.
PAIRS = 20000
BATCH_REPS = 5
PEEK_REPS = 2

Measure = Callable[[], float]
"""Runs one timed loop, returns nanoseconds per unit."""


@dataclass
class Case:
    name: str
    unit: str
    impls: Dict[str, Measure]
    targets: List[Tuple[str, str, float]]  # numerator, denominator, limit
    notes: List[str] = field(default_factory=list)
    samples: Dict[str, List[float]] = field(default_factory=dict)


def timed(loop: Callable[[int], None], n: int, units: int) -> float:
    """CPU ns per unit of loop(n), with the cyclic garbage collector off (as timeit does)."""
    gc.disable()
    try:
        start = time.thread_time_ns()
        loop(n)
        return (time.thread_time_ns() - start) / units
    finally:
        gc.enable()


# ---- the C baselines ---------------------------------------------------------------

def compile_loops(workdir: str) -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("bench: gcc is needed to build the C baselines")
    exe = os.path.join(workdir, "loops")
    subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-o", exe, os.path.join(HERE, "loops.c")],
                   check=True)
    return exe


def child_loop(argv: List[str], env: Optional[Dict[str, str]] = None) -> Measure:
    """Runs a loop in a child process, which prints CPU ns per unit."""
    def run() -> float:
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"loop {' '.join(argv)} failed (exit {done.returncode}): "
                               f"{done.stderr.strip()}")
        return float(done.stdout)
    return run


def c_loop(exe: str, *args: object) -> Measure:
    return child_loop([exe, *map(str, args)])


def cffi_loop(case: str, ident: int, n: int) -> Measure:
    """ipcbind's loop for ``case`` in a child interpreter without the accelerator."""
    return child_loop([sys.executable, os.path.abspath(__file__), "--worker", case, str(ident),
                       str(n)], dict(os.environ, **{ACCELERATOR_VARIABLE: "0"}))


def worker(case: str, ident: int, n: int) -> None:
    """The child of cffi_loop: prints CPU ns per pair of ``case`` on object ``ident``."""
    if _seam.ACCEL is not None:
        sys.exit(f"bench worker: the accelerator is on ({ACCELERATOR_VARIABLE} is not 0)")
    if case == "sndrcv":
        q = ipcbind.MessageQueue.from_id(ident)
        loop = pairs_of(q.send, q.receive, b"x" * SIZE)
    else:
        loop = undo_pairs_of(ipcbind.SemaphoreSet.from_id(ident)[0])
    print(timed(loop, n, n))


def pairs_of(send: Callable[[bytes], None], receive: Callable[[], object],
             data: bytes) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            send(data)
            receive()
    return loop


def undo_pairs_of(sem: ipcbind.Semaphore) -> Callable[[int], None]:
    def loop(n: int) -> None:
        acquire, release = sem.acquire, sem.release
        for _ in range(n):
            acquire(undo=True)
            release(undo=True)
    return loop


# ---- the cases --------------------------------------------------------------------------

def queues(cleanup: List[Callable[[], None]]) -> Tuple[ipcbind.MessageQueue, sysv_ipc.MessageQueue]:
    """A new queue of each library's, removed at the end of the run."""
    q = ipcbind.MessageQueue.create()
    cleanup.append(q.remove)
    mq = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX)
    cleanup.append(mq.remove)
    return q, mq


def case_send_receive(exe: str, cleanup: List[Callable[[], None]]) -> Case:
    data = b"x" * SIZE
    q, mq = queues(cleanup)
    ipcbind_loop = pairs_of(q.send, q.receive, data)
    sysv_loop = pairs_of(mq.send, mq.receive, data)
    return Case(
        f"send + receive, {SIZE} B", "pair",
        {"ipcbind": lambda: timed(ipcbind_loop, PAIRS, PAIRS),
         CFFI: cffi_loop("sndrcv", q.id, PAIRS),
         "sysv_ipc": lambda: timed(sysv_loop, PAIRS, PAIRS),
         "C": c_loop(exe, "sndrcv", PAIRS, SIZE)},
        [("ipcbind", "sysv_ipc", 1.0), (CFFI, "sysv_ipc", 1.45)],
        [f"C: msgsnd + msgrcv with a {C_RECV_BUFFER}-byte receive buffer"])


def case_batches(exe: str, cleanup: List[Callable[[], None]]) -> Case:
    data = b"x" * SIZE
    q, mq = queues(cleanup)
    messages = [(1, data)] * BATCH

    def ipcbind_loop(n: int) -> None:
        for _ in range(n):
            q.send_many(messages)
            if len(q.receive_many(BATCH)) != BATCH:
                raise RuntimeError("receive_many returned too few messages")

    def sysv_loop(n: int) -> None:
        send, receive = mq.send, mq.receive
        for _ in range(n):
            for _ in range(BATCH):
                send(data)
            for _ in range(BATCH):
                receive()

    units = BATCH_REPS * BATCH
    return Case(
        f"send_many + receive_many, {BATCH} x {SIZE} B", "message",
        {"ipcbind": lambda: timed(ipcbind_loop, BATCH_REPS, units),
         "sysv_ipc": lambda: timed(sysv_loop, BATCH_REPS, units),
         "C": c_loop(exe, "batch", BATCH_REPS, BATCH, SIZE)},
        [("ipcbind", "C", 1.3)],
        [f"sysv_ipc has no batch call: a Python loop of {BATCH} send, then {BATCH} receive",
         f"C: {BATCH} msgsnd, then {BATCH} msgrcv with a {C_RECV_BUFFER}-byte buffer"])


def case_peek_all(exe: str, cleanup: List[Callable[[], None]]) -> Case:
    q = ipcbind.MessageQueue.create()
    cleanup.append(q.remove)
    q.send_many([(1, b"x" * SIZE)] * PEEK)

    def ipcbind_loop(n: int) -> None:
        for _ in range(n):
            if len(q.peek_all()) != PEEK:
                raise RuntimeError("peek_all returned the wrong number of messages")

    return Case(
        f"peek_all, {PEEK} x {SIZE} B queue", "queue",
        {"ipcbind": lambda: timed(ipcbind_loop, PEEK_REPS, PEEK_REPS),
         "C": c_loop(exe, "peek", PEEK_REPS, PEEK, SIZE, C_RECV_BUFFER),
         EXACT: c_loop(exe, "peek", PEEK_REPS, PEEK, SIZE, SIZE)},
        [("ipcbind", "C", 1.15)],
        ["sysv_ipc cannot peek (no MSG_COPY)",
         f"C: msgrcv(MSG_COPY | IPC_NOWAIT) of indexes 0..{PEEK - 1} with a "
         f"{C_RECV_BUFFER}-byte buffer (msgmax); the kernel walks the queue from its "
         "head for every index, so a whole copy is O(n^2) in the kernel, and it "
         "allocates a copy as large as the buffer each time",
         f"{EXACT}: the same loop with a buffer of exactly {SIZE} bytes, as small as "
         "a C program can make it (ipcbind starts from the average message size)"])


def case_semaphore(exe: str, cleanup: List[Callable[[], None]]) -> Case:
    semset = ipcbind.SemaphoreSet.create(1, values=[1])
    cleanup.append(semset.remove)
    sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, initial_value=1)
    cleanup.append(sem.remove)
    sem.undo = True
    ipcbind_loop = undo_pairs_of(semset[0])

    def sysv_loop(n: int) -> None:
        acquire, release = sem.acquire, sem.release
        for _ in range(n):
            acquire()
            release()

    return Case(
        "acquire + release with undo", "pair",
        {"ipcbind": lambda: timed(ipcbind_loop, PAIRS, PAIRS),
         CFFI: cffi_loop("sem", semset.id, PAIRS),
         "sysv_ipc": lambda: timed(sysv_loop, PAIRS, PAIRS),
         "C": c_loop(exe, "sem", PAIRS)},
        [("ipcbind", "sysv_ipc", 1.0), (CFFI, "sysv_ipc", 1.3)],
        ["ipcbind: Semaphore.acquire(undo=True) + release(undo=True); "
         "sysv_ipc: Semaphore with .undo = True, acquire() + release(); "
         "C: semop -1 then +1 with SEM_UNDO"])


# ---- shared memory ------------------------------------------------------------------

SHM_SIZES = {"64": 64, "1m": 1 << 20}
SHM_COPIES = {64: 20000, 1 << 20: 200}  # copies per measurement


def compile_shm_copy(workdir: str) -> str:
    exe = os.path.join(workdir, "shm_copy")
    if not os.path.exists(exe):
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", exe,
                        os.path.join(HERE, "shm_copy.c")], check=True)
    return exe


def case_shm(exe: str, cleanup: List[Callable[[], None]], op: str, size: int) -> Case:
    """SharedMemory.read or .write of ``size`` bytes at offset 0, against sysv_ipc's
    and a C memcpy, each on a segment of exactly that size."""
    shm = ipcbind.SharedMemory.create(size)
    cleanup.append(shm.remove)
    mem = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, size=size)
    cleanup.append(mem.remove)
    cleanup.append(mem.detach)
    data = b"x" * size
    shm.write(data)  # attached, and every page touched, before the clock starts
    mem.write(data)
    n = SHM_COPIES[size]

    if op == "read":
        def ipcbind_loop(n: int) -> None:
            read = shm.read
            for _ in range(n):
                read(size)

        def sysv_loop(n: int) -> None:
            read = mem.read
            for _ in range(n):
                read(size)
    else:
        def ipcbind_loop(n: int) -> None:
            write = shm.write
            for _ in range(n):
                write(data)

        def sysv_loop(n: int) -> None:
            write = mem.write
            for _ in range(n):
                write(data)

    shown = f"{size} B" if size < 1024 else f"{size >> 20} MiB"
    return Case(
        f"SharedMemory.{op}, {shown}", "copy",
        {"ipcbind": lambda: timed(ipcbind_loop, n, n),
         "sysv_ipc": lambda: timed(sysv_loop, n, n),
         "C": c_loop(compile_shm_copy(os.path.dirname(exe)), op, size, n)},
        [("ipcbind", "sysv_ipc", 1.0 if size >= 1 << 20 else 1.25)],
        [f"ipcbind: SharedMemory.{op}({'size' if op == 'read' else 'data'}); sysv_ipc: "
         f"SharedMemory.{op}(...), both attached once; C: memcpy "
         f"{'out of' if op == 'read' else 'into'} an attached segment "
         f"{'into' if op == 'read' else 'from'} a buffer made once"
         + ("; a read makes a new bytes object, as sysv_ipc's does" if op == "read" else "")])


CASES = {
    "sndrcv": ("send + receive", case_send_receive, False),
    "batch": ("send_many + receive_many", case_batches, True),
    "peek": ("peek_all", case_peek_all, True),
    "sem": ("acquire + release with undo", case_semaphore, False),
    **{f"shm{op}{name}": (f"SharedMemory.{op}, {name}",
                          lambda exe, cleanup, op=op, size=size: case_shm(exe, cleanup, op, size),
                          False)
       for op in ("read", "write") for name, size in SHM_SIZES.items()},
}
"""name -> (title, builder, needs queues larger than the default msgmnb)."""


# ---- the namespace ------------------------------------------------------------------

def private_namespace() -> Optional[str]:
    """Move into a fresh IPC namespace with a large msgmnb; None, or why not."""
    try:
        _seam.unshare_ipc()
        with open("/proc/sys/kernel/msgmnb", "w") as f:
            f.write(str(MSGMNB))
    except OSError as e:
        if int(read_sysctl("msgmnb")) >= NEEDED:
            return None
        return (f"needs queues of {NEEDED} bytes; this namespace's msgmnb is "
                f"{read_sysctl('msgmnb')}, a queue's qbytes can only be raised with "
                "CAP_SYS_RESOURCE, and a private IPC namespace (to set msgmnb there) "
                f"needs CAP_SYS_ADMIN: run as root ({e.strerror})")
    return None


def read_sysctl(name: str) -> str:
    with open(f"/proc/sys/kernel/{name}") as f:
        return f.read().strip()


# ---- running and reporting ----------------------------------------------------------------

def run(cases: List[Case], rounds: int) -> None:
    for r in range(rounds):
        for case in cases:
            names = list(case.impls)
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                case.samples.setdefault(name, []).append(case.impls[name]())


def human(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} us"
    return f"{ns:.0f} ns"


def ratio(case: Case, num: str, den: str) -> Tuple[float, float, float]:
    """Median and quartiles of num / den, taken round by round."""
    per_round = [a / b for a, b in zip(case.samples[num], case.samples[den])]
    q1, _, q3 = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
    return statistics.median(per_round), q1, q3


def report(cases: List[Case], skipped: List[Tuple[str, str]], rounds: int) -> None:
    cols = ("ipcbind", CFFI, "sysv_ipc", "C")
    print(f"{'case':<40} {'unit':<8}" + "".join(f"{c:>11}" for c in cols)
          + "   ratio (IQR)                         target")
    for case in cases:
        cells = "".join(
            f"{human(statistics.median(case.samples[c])):>11}" if c in case.samples
            else f"{'-':>11}" for c in cols)
        for i, (num, den, limit) in enumerate(case.targets):
            med, q1, q3 = ratio(case, num, den)
            verdict = "met" if med <= limit else "MISSED"
            head = f"{case.name:<40} {case.unit:<8}{cells}" if i == 0 else " " * (49 + 11 * len(cols))
            print(head + f"   {num}: {med:.2f}x {den} ({q1:.2f}-{q3:.2f})".ljust(39)
                  + f" <= {limit:.2f}x {verdict}")
    for name, why in skipped:
        print(f"{name:<40} skipped: {why}")
    print()
    for case in cases:
        for note in case.notes:
            print(f"- {case.name}: {note}")
        for name in case.samples:
            if name not in cols:
                vs, _, _ = ratio(case, "ipcbind", name)
                print(f"- {case.name}: {name} measured "
                      f"{human(statistics.median(case.samples[name]))}; ipcbind {vs:.2f}x that")
    print(f"\n{rounds} rounds; medians of thread CPU time per unit.")


def describe_machine() -> None:
    gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True)
    print(f"Linux {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, ipcbind {ipcbind.__version__}, "
          f"sysv_ipc {sysv_ipc.VERSION}, gcc {gcc.stdout.strip()}")
    if _seam.ACCEL is not None:
        state = "on"
    elif os.environ.get(ACCELERATOR_VARIABLE) == "0":
        state = f"off ({ACCELERATOR_VARIABLE}=0), so the ipcbind column is the cffi path too"
    else:
        state = "not built, so the ipcbind column is the cffi path too"
    print(f"Accelerator: {state}.")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31,
                        help="rounds of every implementation (default 31)")
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), metavar="CASE",
                        help=f"run only these cases ({', '.join(CASES)})")
    parser.add_argument("--worker", nargs=3, metavar=("CASE", "ID", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    wanted = args.only or list(CASES)

    host = os.readlink("/proc/self/ns/ipc")
    why_not = private_namespace()
    private = os.readlink("/proc/self/ns/ipc") != host
    where = "a private IPC namespace" if private else "the current IPC namespace"
    describe_machine()
    print(f"Measuring in {where} (msgmnb {read_sysctl('msgmnb')}).\n")

    cleanup: List[Callable[[], None]] = []
    skipped: List[Tuple[str, str]] = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="ipcbind-bench-") as workdir:
            exe = compile_loops(workdir)
            cases = []
            for name in wanted:
                title, build, needs_space = CASES[name]
                if needs_space and why_not is not None:
                    skipped.append((title, why_not))
                    continue
                cases.append(build(exe, cleanup))
            run(cases, args.rounds)
    finally:
        for remove in reversed(cleanup):
            remove()
    report(cases, skipped, args.rounds)
    print(f"Run took {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
