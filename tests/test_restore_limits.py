"""Restoring queues whose qbytes is above, equal to or below the snapshot's msgmnb, as
root without CAP_SYS_RESOURCE: the kernel refuses every IPC_SET on a queue whose
qbytes is above msgmnb then, even one that leaves qbytes as it is."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from nschild import needs_ns_root, ns_child
from sysv_helpers import CAP_SYS_RESOURCE, has_capability

from ipcbind import syscalls as sc
from ipcbind.namespace import enter_namespace, list_queues
from ipcbind.snapshot import RestoreError, restore, snapshot

# (qbytes, bytes sent, owner uid): qbytes above the final msgmnb 16384, equal, below,
# and a queue that holds more than its qbytes (lowered after the messages were sent).
CASES = {
    "above": (100000, 30000, 0),
    "above, other owner": (100000, 30000, 65534),
    "equal": (16384, 9000, 0),
    "equal, other owner": (16384, 9000, 65534),
    "below": (512, 100, 0),
    "below, other owner": (512, 100, 65534),
    "holds more than qbytes": (100, 20000, 65534),
}

needs_no_sys_resource = pytest.mark.skipif(
    has_capability(CAP_SYS_RESOURCE),
    reason="with CAP_SYS_RESOURCE the kernel lets any qbytes be set; this is about root "
           "without it")


def _queue_as(case: str) -> Dict[str, Any]:
    qbytes, sent, uid = CASES[case]
    with open("/proc/sys/kernel/msgmnb", "w") as f:
        f.write("200000")
    q = sc.msgget(0x5EED0001, sc.IPC_CREAT | 0o640)
    for _ in range(sent // 5000):
        sc.msgsnd(q, 3, b"m" * 5000)
    sc.msgsnd(q, 7, b"t" * (sent % 5000))
    sc.msgctl(q, sc.IPC_SET, {"qbytes": qbytes, "uid": uid, "gid": uid})
    with open("/proc/sys/kernel/msgmnb", "w") as f:
        f.write("16384")
    return {"q": q}


def _state(pid: int) -> Any:
    with enter_namespace(pid):
        return ([(i, ds.qbytes, ds.uid, ds.qnum, ds.cbytes) for i, ds in list_queues()],
                open("/proc/sys/kernel/msgmnb").read().strip(),
                open("/proc/sys/kernel/msg_next_id").read().strip())


@needs_ns_root
@needs_no_sys_resource
@pytest.mark.parametrize("case", sorted(CASES))
def test_restore_with_limits_brings_back_a_queue_whatever_its_qbytes(case: str) -> None:
    with ns_child(lambda: _queue_as(case)) as (pid, _):
        snap = snapshot(pid)
        before = _state(pid)
    with ns_child() as (other, _):
        restore(snap, other, set_limits=True)
        after = snapshot(other)
        assert _state(other) == before
    assert after.queues == snap.queues and after.limits == snap.limits


@needs_ns_root
@needs_no_sys_resource
@pytest.mark.parametrize("case", sorted(CASES))
def test_restore_without_limits_brings_back_what_msgmnb_allows_and_names_the_rest(
        case: str) -> None:
    qbytes, sent, _ = CASES[case]
    with ns_child(lambda: _queue_as(case)) as (pid, _):
        snap = snapshot(pid)
    with ns_child() as (other, _):
        if max(qbytes, sent) <= 16384:
            restore(snap, other)
            assert snapshot(other).queues == snap.queues
        else:
            with pytest.raises(RestoreError, match="--limits") as info:
                restore(snap, other)
            assert info.value.leftovers == ()
            assert _state(other) == ([], "16384", "-1")
