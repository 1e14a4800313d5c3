"""Save a worker's semaphore undo state and restore it in a new process.

A semaphore counts three free slots. A worker takes two with SEM_UNDO, so the kernel
would give them back if it died. The worker is checkpointed: it saves its undo state
with tracked_semundo(), then gives up its own claim with restore_semundo() and the
opposite adjustments (the slots stay taken; its exit now releases nothing). A new
process restores the saved state with restore_semundo() and is then killed: the
kernel releases exactly the two slots the worker held.

Run it with:  python examples/semundo_save_restore.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Dict, List

import psutil

import ipcbind as ipc


def checkpoint_worker(semid: int, path: str) -> None:
    """The worker: take two slots, save the undo state to path, hand it over, exit."""
    ipc.semop(semid, [(0, -2, ipc.SEM_UNDO)])
    saved = ipc.tracked_semundo()
    with open(path, "w") as f:
        json.dump(saved, f)
    ipc.restore_semundo({s: [-a for a in adjs] for s, adjs in saved.items()})
    print(f"worker {os.getpid()}: took 2 slots, saved {saved}, exits holding no undo")


def restored_process(path: str) -> None:
    """The new process: restore the saved undo state, then wait to be killed."""
    with open(path) as f:
        saved: Dict[int, List[int]] = {int(k): v for k, v in json.load(f).items()}
    ipc.restore_semundo(saved)
    print(f"new process {os.getpid()}: restored {ipc.tracked_semundo()}", flush=True)
    print("ready", flush=True)
    signal.pause()


def main() -> None:
    print("kernel provides /proc/<pid>/semundo:", ipc.semundo_supported())
    semid = ipc.semget(ipc.IPC_PRIVATE, 1, ipc.IPC_CREAT | 0o600)
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        ipc.semctl(semid, 0, ipc.SETVAL, 3)
        print("free slots:", ipc.semctl(semid, 0, ipc.GETVAL))

        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                checkpoint_worker(semid, path)
                code = 0
            finally:
                sys.stdout.flush()
                os._exit(code)
        os.waitpid(pid, 0)
        print("free slots after the worker exited:", ipc.semctl(semid, 0, ipc.GETVAL))

        child = subprocess.Popen([sys.executable, __file__, "--restore", path],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        for line in child.stdout:
            if line.strip() == "ready":
                break
            print(line, end="")
        else:
            raise SystemExit(f"the new process failed (exit status {child.wait()})")
        print("free slots while it runs:", ipc.semctl(semid, 0, ipc.GETVAL))
        proc = psutil.Process(child.pid)
        proc.kill()
        proc.wait(timeout=10)
        child.wait()
        print("free slots after it was killed:", ipc.semctl(semid, 0, ipc.GETVAL))
    finally:
        ipc.semctl(semid, 0, ipc.IPC_RMID)
        os.unlink(path)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--restore":
        restored_process(sys.argv[2])
    else:
        main()
