"""The numbers stated once in ipcbind._limits agree with the C types and the running kernel;
"gone" and the whole-queue copy are decided once for the package."""

from __future__ import annotations

import errno
import inspect

import pytest

import ipcbind
from ipcbind import IPC_INFO, MessageQueue, msgctl, semctl
from ipcbind._ffi import ffi
from ipcbind._limits import C_RANGES, INT_MAX, KEY_MASK, SEMVMX, msgmax, unsigned_key
from ipcbind.cli import build_parser
from ipcbind.errors import gone
from ipcbind.msg import COPY_ATTEMPTS
from ipcbind.snapshot import snapshot


@pytest.mark.parametrize("ctype", sorted(C_RANGES))
def test_each_c_range_is_the_shims_own_type(ctype: str) -> None:
    bits = 8 * ffi.sizeof(ctype)
    signed = not (ctype.startswith("unsigned") or ctype == "size_t")
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    assert C_RANGES[ctype] == (lo, hi)


def test_a_key_is_a_32_bit_c_int() -> None:
    assert ffi.sizeof("key_t") == 4 and INT_MAX == C_RANGES["int"][1]
    assert unsigned_key(-1) == KEY_MASK == 2 ** 32 - 1 and unsigned_key(0x1234) == 0x1234


def test_semvmx_is_the_kernels() -> None:
    assert semctl(0, 0, IPC_INFO)[1].semvmx == SEMVMX


def test_msgmax_is_the_namespaces_limit() -> None:
    assert msgmax() == msgctl(0, IPC_INFO)[1].msgmax


@pytest.mark.parametrize("err, is_gone", [(errno.EINVAL, True), (errno.EIDRM, True),
                                          (errno.EACCES, False), (errno.ENOENT, False)])
def test_gone_means_einval_or_eidrm(err: int, is_gone: bool) -> None:
    assert gone(OSError(err, "x")) is is_gone


def test_gone_is_false_for_what_is_no_oserror() -> None:
    assert not gone(ValueError("EINVAL"))


def test_every_whole_queue_copy_makes_the_same_number_of_attempts() -> None:
    peek_all = inspect.signature(MessageQueue.peek_all).parameters["attempts"].default
    retries = inspect.signature(snapshot).parameters["retries"].default
    dump = build_parser().parse_args(["dump"]).retries
    assert peek_all == retries == dump == COPY_ATTEMPTS


def test_peek_of_a_removed_queue_on_the_command_line_is_not_found(
        q: ipcbind.MessageQueue, capsys: pytest.CaptureFixture[str]) -> None:
    from ipcbind.cli import NOT_FOUND, main

    q.remove()
    assert main(["peek", str(q.id)]) == NOT_FOUND
    assert f"no message queue with id {q.id}" in capsys.readouterr().err
