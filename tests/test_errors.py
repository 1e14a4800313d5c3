"""Every exception class of ipcbind is an IpcbindError and still the builtin it always was;
batches that fail part-way raise typed exceptions that keep the failure's own class."""

from __future__ import annotations

import errno
import inspect
import pickle
import threading
from typing import List

import pytest

import ipcbind
import ipcbind.cli
import ipcbind.namespace
import ipcbind.semundo
import ipcbind.snapshot
from ipcbind import errors
from ipcbind.errors import IpcbindError, PartialReceiveError, PartialSendError

from sysv_helpers import wait_until

CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass)
           if issubclass(c, BaseException) and c.__module__ == errors.__name__]

BUILTIN = {
    "NoMessageError": OSError, "IdentifierRemovedError": OSError, "TooBigError": OSError,
    "OutOfRangeError": OSError, "NotSupportedError": OSError, "SemundoNotSupportedError": OSError,
    "QueueChangedError": RuntimeError, "NamespaceReturnError": RuntimeError,
    "SnapshotFormatError": ValueError, "RestoreError": RuntimeError,
    "RestoreConflictError": RuntimeError, "FreezeError": RuntimeError,
}


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_every_exception_class_is_an_ipcbind_error(cls: type) -> None:
    assert issubclass(cls, IpcbindError)
    assert cls.__name__ in errors.__all__


@pytest.mark.parametrize("name, builtin", sorted(BUILTIN.items()))
def test_each_exception_is_still_the_builtin_it_was(name: str, builtin: type) -> None:
    assert issubclass(getattr(errors, name), builtin)


@pytest.mark.parametrize("module, name", [
    (ipcbind.semundo, "SemundoNotSupportedError"), (ipcbind.namespace, "NamespaceReturnError"),
    (ipcbind.snapshot, "FreezeError"), (ipcbind.snapshot, "RestoreError"),
    (ipcbind.snapshot, "RestoreConflictError"), (ipcbind.snapshot, "SnapshotFormatError"),
    (ipcbind.cli, "CliError"), (ipcbind, "QueueChangedError"), (ipcbind, "IpcbindError"),
])
def test_an_exception_keeps_its_old_import_path(module: object, name: str) -> None:
    assert getattr(module, name) is getattr(errors, name)


def test_an_oserror_subclass_keeps_its_errno() -> None:
    e = errors.syscall_error(errno.EIDRM, "msgrcv(msqid=5)")
    assert isinstance(e, errors.IdentifierRemovedError) and isinstance(e, IpcbindError)
    assert e.errno == errno.EIDRM and str(e) == "[Errno 43] msgrcv(msqid=5): Identifier removed"


def test_send_many_stopped_by_a_bad_mtype_is_a_partial_send_and_a_value_error(
        q: ipcbind.MessageQueue) -> None:
    with pytest.raises(PartialSendError, match="message 2: mtype must be >= 1") as e:
        q.send_many([(1, b"a"), (2, b"b"), (0, b"c")])
    assert isinstance(e.value, ValueError) and e.value.sent == 2


def test_send_many_timing_out_is_a_partial_send_and_a_timeout(q: ipcbind.MessageQueue) -> None:
    per = q.stat().qbytes // 2
    with pytest.raises(TimeoutError) as e:
        q.send_many([(1, b"x" * per)] * 3, timeout=0)
    assert isinstance(e.value, PartialSendError) and e.value.sent == 2
    assert e.value.errno == errno.ETIMEDOUT


def test_send_many_to_a_queue_removed_meanwhile_keeps_the_errno_class(
        q: ipcbind.MessageQueue) -> None:
    per = q.stat().qbytes // 2
    caught: List[BaseException] = []

    def send() -> None:
        try:
            q.send_many([(1, b"x" * per)] * 3)
        except BaseException as e:  # handed to the test below
            caught.append(e)

    t = threading.Thread(target=send)
    t.start()
    wait_until(lambda: q.stat().qnum == 2, what="two messages sent")
    q.remove()  # the third waits for room (EIDRM) or finds the id gone (EINVAL)
    t.join(10)
    assert not t.is_alive()
    (e,) = caught
    assert isinstance(e, PartialSendError) and e.sent == 2
    assert isinstance(e, OSError) and e.errno in (errno.EIDRM, errno.EINVAL)
    assert isinstance(e, errors.IdentifierRemovedError) == (e.errno == errno.EIDRM)


def test_a_partial_send_error_pickles_with_its_class_errno_and_count() -> None:
    e = errors.partial_send(errors.syscall_error(errno.EIDRM, "send_many(msqid=3)"), 4)
    back = pickle.loads(pickle.dumps(e))
    assert isinstance(back, errors.IdentifierRemovedError) and isinstance(back, PartialSendError)
    assert (back.errno, str(back), back.sent) == (errno.EIDRM, str(e), 4)


def test_a_partial_receive_error_is_the_memory_error_with_what_was_taken() -> None:
    got = [ipcbind.Message(1, b"a")]
    e = errors.partial_receive(MemoryError("no memory"), got)
    assert isinstance(e, MemoryError) and isinstance(e, PartialReceiveError)
    assert e.received == got and str(e) == "no memory"
