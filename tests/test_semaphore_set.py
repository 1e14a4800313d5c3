"""SemaphoreSet and Semaphore against the real kernel."""

from __future__ import annotations

import errno
import os
import pickle
import random
import signal
import threading
import time
from typing import Callable, Iterator, List

import pytest

import ipcbind
from ipcbind import (
    IPC_NOWAIT,
    SEM_UNDO,
    IdentifierRemovedError,
    OutOfRangeError,
    Semaphore,
    SemaphoreSet,
)
from conftest import NOBODY, needs_root, run_in_child

# Generous: this machine is shared and busy; these bound hangs, they measure nothing.
SLOW = 5.0


@pytest.fixture
def make_set() -> Iterator[Callable[..., SemaphoreSet]]:
    """Factory: make_set(nsems=1, **create_kwargs) -> SemaphoreSet, removed at teardown."""
    made: List[SemaphoreSet] = []

    def make(nsems: int = 1, **kwargs: object) -> SemaphoreSet:
        s = SemaphoreSet.create(nsems, **kwargs)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        try:
            ipcbind.semctl(s.id, 0, ipcbind.IPC_RMID)
        except OSError:
            pass  # the test removed it itself


@pytest.fixture
def free_key() -> Iterator[int]:
    """A key no set uses now; any set made with it is removed at teardown."""
    while True:
        key = random.randrange(0x10000000, 0x7FFFFFFF)
        try:
            ipcbind.semget(key, 0)
        except FileNotFoundError:
            break
    yield key
    try:
        ipcbind.semctl(ipcbind.semget(key, 0), 0, ipcbind.IPC_RMID)
    except OSError:
        pass


def later(delay: float, fn: Callable[[], object]) -> threading.Thread:
    """Run fn in a thread after delay seconds."""
    t = threading.Thread(target=lambda: (time.sleep(delay), fn()), daemon=True)
    t.start()
    return t


def wait_until(cond: Callable[[], bool]) -> None:
    end = time.monotonic() + SLOW
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.005)


def child_dies_holding(s: SemaphoreSet, hold: Callable[[Semaphore], None]) -> int:
    """Fork a child that runs hold(s[0]), reports, and waits to be SIGKILLed.

    Returns the value seen while the child held the semaphore."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            hold(SemaphoreSet.from_id(s.id)[0])
            os.write(w, b"x")
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
        held = s[0].value
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    return held


# ---- creating and opening ---------------------------------------------------------

def test_create_private_set_has_nsems_semaphores_all_zero(make_set):
    s = make_set(3)
    assert len(s) == 3 and s.values == [0, 0, 0] and s.key == 0 and s.created


def test_create_with_values_sets_them(make_set):
    assert make_set(3, values=[1, 0, 32767]).values == [1, 0, 32767]


def test_create_applies_mode(make_set):
    assert make_set(1, mode=0o640).stat().mode == 0o640


@pytest.mark.parametrize("values", [[1], [1, 2, 3], [-1, 0], [0, 32768]])
def test_create_with_bad_values_raises_value_error(values):
    with pytest.raises(ValueError, match="values"):
        SemaphoreSet.create(2, values=values)


def test_create_with_non_integer_value_raises_type_error():
    with pytest.raises(TypeError, match=r"values\[1\]"):
        SemaphoreSet.create(2, values=[0, "1"])


@pytest.mark.parametrize("nsems", [0, -1])
def test_create_with_nsems_below_one_raises_value_error(nsems):
    with pytest.raises(ValueError, match="nsems"):
        SemaphoreSet.create(nsems)


def test_create_with_mode_beyond_permission_bits_raises_value_error():
    with pytest.raises(ValueError, match="mode"):
        SemaphoreSet.create(1, mode=0o1600)


def test_create_with_too_many_semaphores_is_the_kernels_einval():
    with pytest.raises(OSError) as e:
        SemaphoreSet.create(10 ** 6)
    assert e.value.errno == errno.EINVAL


def test_create_with_taken_key_opens_the_existing_set(free_key):
    first = SemaphoreSet.create(2, key=free_key, values=[4, 5])
    again = SemaphoreSet.create(2, key=free_key, values=[0, 0])
    assert first.created and not again.created
    assert again.id == first.id and again.values == [4, 5]


def test_create_exclusive_with_taken_key_raises_file_exists(free_key):
    SemaphoreSet.create(1, key=free_key)
    with pytest.raises(FileExistsError):
        SemaphoreSet.create(1, key=free_key, exclusive=True)


def test_create_asking_more_semaphores_than_the_existing_set_raises_einval(free_key):
    SemaphoreSet.create(2, key=free_key)
    with pytest.raises(OSError, match="has 2 semaphores") as e:
        SemaphoreSet.create(3, key=free_key)
    assert e.value.errno == errno.EINVAL


def test_key_is_unsigned_as_ipcs_shows_it(free_key):
    key = free_key | 0x80000000
    try:
        s = SemaphoreSet.create(1, key=key, exclusive=True)
        assert s.key == key and SemaphoreSet.from_id(s.id).key == key
    finally:
        try:
            ipcbind.semctl(ipcbind.semget(key, 0), 0, ipcbind.IPC_RMID)
        except OSError:
            pass


def test_open_finds_the_set_by_key(free_key):
    made = SemaphoreSet.create(2, key=free_key)
    opened = SemaphoreSet.open(free_key)
    assert opened.id == made.id and opened.key == free_key and len(opened) == 2
    assert not opened.created


def test_open_missing_key_raises_file_not_found(free_key):
    with pytest.raises(FileNotFoundError):
        SemaphoreSet.open(free_key)


def test_open_ipc_private_raises_value_error():
    with pytest.raises(ValueError, match="IPC_PRIVATE"):
        SemaphoreSet.open(ipcbind.IPC_PRIVATE)


def test_from_id_wraps_an_existing_set(make_set):
    s = make_set(2, values=[3, 4])
    other = SemaphoreSet.from_id(s.id)
    assert other.id == s.id and len(other) == 2 and other.values == [3, 4]
    assert not other.created


def test_from_id_of_removed_set_is_the_kernels_einval(make_set):
    s = make_set()
    s.remove()
    with pytest.raises(OSError) as e:
        SemaphoreSet.from_id(s.id)
    assert e.value.errno == errno.EINVAL


def test_from_id_with_non_integer_raises_type_error():
    with pytest.raises(TypeError, match="semid"):
        SemaphoreSet.from_id("3")


# ---- indexing ------------------------------------------------------------------------

def test_index_gives_that_semaphore(make_set):
    s = make_set(3, values=[7, 8, 9])
    assert s[1].index == 1 and s[1].value == 8 and s[1].set is s


def test_negative_index_counts_from_the_end(make_set):
    s = make_set(3, values=[7, 8, 9])
    assert s[-1].index == 2 and s[-1].value == 9 and s[-3].index == 0


@pytest.mark.parametrize("index", [3, 100, -4])
def test_index_out_of_range_raises_index_error(make_set, index):
    with pytest.raises(IndexError, match="out of range"):
        make_set(3)[index]


@pytest.mark.parametrize("index", ["0", 1.0, None])
def test_non_integer_index_raises_type_error(make_set, index):
    with pytest.raises(TypeError, match="index"):
        make_set(3)[index]


def test_iteration_yields_every_semaphore_in_order(make_set):
    assert [m.value for m in make_set(3, values=[1, 2, 3])] == [1, 2, 3]


# ---- acquire, release, wait_zero --------------------------------------------------------

def test_acquire_subtracts_delta(make_set):
    s = make_set(values=[5])
    s[0].acquire()
    s[0].acquire(3)
    assert s[0].value == 1


def test_release_adds_delta(make_set):
    s = make_set()
    s[0].release()
    s[0].release(4)
    assert s[0].value == 5


def test_acquire_waits_until_another_thread_releases(make_set):
    s = make_set()
    later(0.1, s[0].release)
    s[0].acquire(timeout=SLOW)
    assert s[0].value == 0


def test_acquire_waits_until_value_reaches_delta(make_set):
    s = make_set(values=[1])
    later(0.1, lambda: s[0].release(2))
    s[0].acquire(3, timeout=SLOW)
    assert s[0].value == 0


@pytest.mark.parametrize("delta", [0, -1, 32768])
def test_acquire_with_delta_out_of_range_raises_value_error(make_set, delta):
    with pytest.raises(ValueError, match="delta"):
        make_set(values=[1])[0].acquire(delta)


@pytest.mark.parametrize("delta", [0, -1, 32768])
def test_release_with_delta_out_of_range_raises_value_error(make_set, delta):
    with pytest.raises(ValueError, match="delta"):
        make_set()[0].release(delta)


@pytest.mark.parametrize("delta", ["1", 1.0, True, None])
def test_non_integer_delta_raises_type_error(make_set, delta):
    m = make_set(values=[1])[0]
    with pytest.raises(TypeError, match="delta"):
        m.acquire(delta)
    with pytest.raises(TypeError, match="delta"):
        m.release(delta)
    assert m.value == 1


def test_release_above_32767_is_the_kernels_erange(make_set):
    m = make_set(values=[32767])[0]
    with pytest.raises(OutOfRangeError) as e:
        m.release()
    assert e.value.errno == errno.ERANGE and m.value == 32767


def test_acquire_timeout_raises_timeout_error(make_set):
    m = make_set()[0]
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        m.acquire(timeout=0.2)
    assert 0.15 <= time.monotonic() - start < SLOW


def test_acquire_timeout_zero_does_not_wait(make_set):
    with pytest.raises(TimeoutError):
        make_set()[0].acquire(timeout=0)


def test_acquire_with_timeout_succeeds_when_available(make_set):
    m = make_set(values=[2])[0]
    m.acquire(2, timeout=0)
    assert m.value == 0


def test_acquire_with_negative_timeout_raises_value_error(make_set):
    with pytest.raises(ValueError, match="timeout"):
        make_set()[0].acquire(timeout=-1)


def test_acquire_nonblocking_raises_blocking_io_error(make_set):
    m = make_set(values=[1])[0]
    with pytest.raises(BlockingIOError):
        m.acquire(2, block=False)
    assert m.value == 1


def test_acquire_nonblocking_succeeds_when_available(make_set):
    m = make_set(values=[1])[0]
    m.acquire(block=False)
    assert m.value == 0


def test_acquire_nonblocking_with_timeout_raises_value_error(make_set):
    with pytest.raises(ValueError, match="block=False"):
        make_set(values=[1])[0].acquire(block=False, timeout=1)


def test_wait_zero_returns_at_once_when_zero(make_set):
    make_set()[0].wait_zero(timeout=0)


def test_wait_zero_waits_until_another_thread_takes_the_value_to_zero(make_set):
    s = make_set(values=[1])
    later(0.1, s[0].acquire)
    s[0].wait_zero(timeout=SLOW)
    assert s[0].value == 0


def test_wait_zero_timeout_raises_timeout_error(make_set):
    with pytest.raises(TimeoutError):
        make_set(values=[1])[0].wait_zero(timeout=0.05)


def test_wait_zero_nonblocking_raises_blocking_io_error(make_set):
    with pytest.raises(BlockingIOError):
        make_set(values=[1])[0].wait_zero(block=False)


@pytest.mark.parametrize("timeout", [None, SLOW])
def test_signal_handler_runs_and_the_wait_resumes(make_set, timeout):
    s = make_set()
    seen = []
    old = signal.signal(signal.SIGALRM, lambda *a: seen.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        later(0.3, s[0].release)
        s[0].acquire(undo=True, timeout=timeout)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert seen == [1] and s[0].value == 0


def test_exception_from_signal_handler_ends_the_wait(make_set):
    s = make_set()

    def handler(*args: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            s[0].acquire(undo=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert s[0].value == 0


# ---- undo ---------------------------------------------------------------------------

def test_undo_is_released_when_the_holder_is_sigkilled(make_set):
    s = make_set(values=[1])
    held = child_dies_holding(s, lambda m: m.acquire(undo=True))
    assert held == 0
    s[0].acquire(timeout=SLOW)  # the kernel gave the unit back


def test_acquire_without_undo_stays_taken_after_the_holder_dies(make_set):
    s = make_set(values=[1])
    child_dies_holding(s, lambda m: m.acquire())
    assert s[0].value == 0


def test_release_with_undo_cancels_the_acquires_undo(make_set):
    s = make_set(values=[1])

    def acquire_release_then_take_again(m: Semaphore) -> None:
        m.acquire(undo=True)
        m.release(undo=True)
        m.acquire()

    child_dies_holding(s, acquire_release_then_take_again)
    assert s[0].value == 0


def test_undo_is_released_at_normal_exit(make_set):
    s = make_set(values=[3])

    def take() -> int:
        SemaphoreSet.from_id(s.id)[0].acquire(2, undo=True)
        return 0

    assert run_in_child(take) == 0
    assert s[0].value == 3


def test_semaphore_context_manager_acquires_and_releases(make_set):
    m = make_set(values=[1])[0]
    with m as entered:
        assert entered is m and m.value == 0
    assert m.value == 1


def test_semaphore_context_manager_uses_undo(make_set):
    s = make_set(values=[1])
    held = child_dies_holding(s, lambda m: m.__enter__())
    assert held == 0 and s[0].value == 1


def test_undo_adjustment_beyond_32768_is_the_kernels_erange(make_set):
    m = make_set()[0]
    m.release(32767, undo=True)  # semadj -32767
    m.acquire(32767)
    with pytest.raises(OutOfRangeError):
        m.release(2, undo=True)  # semadj would be -32769
    assert m.value == 0


# ---- values, stat, counters --------------------------------------------------------------

def test_value_can_be_set(make_set):
    m = make_set()[0]
    m.value = 42
    assert m.value == 42


@pytest.mark.parametrize("value", [-1, 32768])
def test_value_out_of_range_raises_value_error(make_set, value):
    m = make_set()[0]
    with pytest.raises(ValueError, match="value"):
        m.value = value


def test_values_can_be_set_all_at_once(make_set):
    s = make_set(3)
    s.values = [3, 2, 1]
    assert s.values == [3, 2, 1]


def test_values_of_wrong_length_raise_value_error(make_set):
    s = make_set(3)
    with pytest.raises(ValueError, match="one value per semaphore"):
        s.values = [1, 2]
    assert s.values == [0, 0, 0]


def test_stat_describes_the_set(make_set):
    st = make_set(4, mode=0o640).stat()
    assert (st.nsems, st.mode, st.key, st.cuid) == (4, 0o640, 0, os.geteuid())


def test_stat_otime_is_set_by_an_operation(make_set):
    s = make_set(values=[1])
    assert s.stat().otime == 0
    s[0].acquire()
    assert s.stat().otime > 0


def test_pid_is_the_last_process_to_operate(make_set):
    m = make_set()[0]
    assert m.pid == 0
    m.release()
    assert m.pid == os.getpid()


def test_waiting_counts_processes_waiting_to_decrease(make_set):
    s = make_set()
    t = later(0, lambda: s[0].acquire(timeout=SLOW))
    wait_until(lambda: s[0].waiting == 1)
    s[0].release()
    t.join(SLOW)
    assert s[0].waiting == 0


def test_waiting_for_zero_counts_processes_waiting_for_zero(make_set):
    s = make_set(values=[1])
    t = later(0, lambda: s[0].wait_zero(timeout=SLOW))
    wait_until(lambda: s[0].waiting_for_zero == 1)
    s[0].acquire()
    t.join(SLOW)
    assert s[0].waiting_for_zero == 0


# ---- op: several operations at once ---------------------------------------------------------

def test_op_applies_every_operation(make_set):
    s = make_set(3, values=[1, 0, 5])
    s.op([(0, -1), (1, 2), (2, -5)])
    assert s.values == [0, 2, 0]


def test_op_applies_none_when_one_would_block(make_set):
    s = make_set(2, values=[1, 0])
    with pytest.raises(BlockingIOError):
        s.op([(0, -1), (1, -1)], block=False)
    assert s.values == [1, 0]


def test_op_waits_until_all_can_be_applied_together(make_set):
    s = make_set(2, values=[1, 0])
    later(0.1, s[1].release)
    s.op([(0, -1), (1, -1)], timeout=SLOW)
    assert s.values == [0, 0]


def test_op_per_operation_nowait_flag(make_set):
    s = make_set(2, values=[1, 0])
    with pytest.raises(BlockingIOError):
        s.op([(0, -1), (1, -1, IPC_NOWAIT)])
    assert s.values == [1, 0]


def test_op_nowait_flag_with_timeout_raises_blocking_io_error_not_timeout(make_set):
    s = make_set(values=[0])
    with pytest.raises(BlockingIOError) as e:
        s.op([(0, -1, IPC_NOWAIT)], timeout=SLOW)
    assert not isinstance(e.value, TimeoutError)


def test_op_timeout_raises_timeout_error(make_set):
    s = make_set(2, values=[1, 0])
    with pytest.raises(TimeoutError):
        s.op([(0, -1), (1, -1)], timeout=0.05)
    assert s.values == [1, 0]


def test_op_with_negative_index(make_set):
    s = make_set(2)
    s.op([(-1, 3)])
    assert s.values == [0, 3]


def test_op_undo_applies_sem_undo_to_every_operation(make_set):
    s = make_set(2, values=[1, 1])

    def take_both() -> int:
        SemaphoreSet.from_id(s.id).op([(0, -1), (1, -1)], undo=True)
        return 0

    assert run_in_child(take_both) == 0
    assert s.values == [1, 1]


def test_op_per_operation_undo_flag(make_set):
    s = make_set(2, values=[1, 1])

    def take_both() -> int:
        SemaphoreSet.from_id(s.id).op([(0, -1, SEM_UNDO), (1, -1)])
        return 0

    assert run_in_child(take_both) == 0
    assert s.values == [1, 0]


def test_op_without_operations_raises_value_error(make_set):
    with pytest.raises(ValueError, match="no operations"):
        make_set().op([])


def test_op_with_non_iterable_raises_type_error(make_set):
    with pytest.raises(TypeError, match="iterable"):
        make_set().op(5)


@pytest.mark.parametrize("ops", [[(0,)], [(0, 1, 0, 0)], [0], "ab"])
def test_op_with_malformed_operation_raises_type_error(make_set, ops):
    with pytest.raises(TypeError, match=r"ops\[0\]"):
        make_set().op(ops)


def test_op_index_out_of_range_raises_index_error(make_set):
    s = make_set(2)
    with pytest.raises(IndexError):
        s.op([(0, 1), (2, 1)])
    assert s.values == [0, 0]


def test_op_delta_that_is_not_a_short_raises_overflow_error(make_set):
    with pytest.raises(OverflowError, match="sem_op"):
        make_set().op([(0, 40000)])


def test_op_nonblocking_with_timeout_raises_value_error(make_set):
    with pytest.raises(ValueError, match="block=False"):
        make_set().op([(0, 1)], timeout=1, block=False)


# ---- removal and the set as a context manager ---------------------------------------------------

def test_operations_on_a_removed_set_fail_with_einval(make_set):
    s = make_set(values=[1])
    m = s[0]
    s.remove()
    for call in (m.acquire, m.release, lambda: m.value, lambda: s.values, s.stat):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno in (errno.EINVAL, errno.EIDRM)


def test_waiter_gets_identifier_removed_when_the_set_is_removed(make_set):
    s = make_set()
    later(0.1, s.remove)
    with pytest.raises(IdentifierRemovedError):
        s[0].acquire(timeout=SLOW)


def test_set_context_manager_removes_the_set_it_created():
    with SemaphoreSet.create(1) as s:
        semid = s.id
    with pytest.raises(OSError):
        SemaphoreSet.from_id(semid)


def test_set_context_manager_removes_it_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with SemaphoreSet.create(1) as s:
            semid = s.id
            raise RuntimeError
    with pytest.raises(OSError):
        SemaphoreSet.from_id(semid)


def test_set_context_manager_leaves_a_set_it_only_opened(make_set):
    s = make_set()
    with SemaphoreSet.from_id(s.id):
        pass
    assert SemaphoreSet.from_id(s.id).id == s.id


def test_set_context_manager_after_remove_does_not_raise():
    with SemaphoreSet.create(1) as s:
        s.remove()


def test_set_context_manager_tolerates_removal_by_another_process():
    with SemaphoreSet.create(1) as s:
        ipcbind.semctl(s.id, 0, ipcbind.IPC_RMID)


# ---- permissions ----------------------------------------------------------------------------

@needs_root
def test_acquire_without_alter_permission_raises_permission_error(make_set):
    s = make_set(values=[1], mode=0o604)

    def as_nobody() -> int:
        try:
            SemaphoreSet.from_id(s.id)[0].acquire(block=False)
        except PermissionError as e:
            return 0 if e.errno == errno.EACCES else 2
        return 1

    assert run_in_child(as_nobody, uid=NOBODY) == 0
    assert s[0].value == 1


@needs_root
def test_from_id_without_read_permission_wraps_the_set_and_reading_it_raises_permission_error(
        make_set):
    s = make_set(mode=0o600)

    def as_nobody() -> int:
        other = SemaphoreSet.from_id(s.id)
        try:
            other.values
        except PermissionError:
            return 0 if other.id == s.id else 2
        return 1

    assert run_in_child(as_nobody, uid=NOBODY) == 0


def test_repr_names_id_and_size(make_set):
    s = make_set(2)
    assert f"id={s.id}" in repr(s) and "nsems=2" in repr(s)
    assert repr(s[1]) == f"<Semaphore 1 of set {s.id}>"


def test_sets_are_equal_by_id(make_set):
    s, other = make_set(), make_set()
    assert s == SemaphoreSet.from_id(s.id) and s != other
    assert len({s, SemaphoreSet.from_id(s.id), other}) == 2


def test_semaphores_are_equal_by_set_and_index(make_set):
    s = make_set(2)
    assert s[1] == s[-1] and s[0] != s[1] and len({s[0], s[0], s[1]}) == 2


def test_pickled_set_comes_back_as_not_created(make_set):
    s = make_set(2)
    back = pickle.loads(pickle.dumps(s))
    assert back == s and len(back) == 2 and not back.created


def test_pickled_semaphore_comes_back(make_set):
    s = make_set(3, values=[0, 0, 5])
    back = pickle.loads(pickle.dumps(s[2]))
    assert back == s[2] and back.value == 5


def test_undo_operations_are_tracked_as_this_processs_undo_state(make_set):
    s = make_set(2, values=[3, 3])
    s[1].acquire(2, undo=True)
    s[0].release(undo=True)
    s.op([(1, -1)], undo=True)
    assert ipcbind.tracked_semundo()[s.id] == [-1, 3]
    with s[0]:
        assert ipcbind.tracked_semundo()[s.id] == [0, 3]
