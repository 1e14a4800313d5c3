"""The rules every kind of IPC object shares (ipcbind._base.IpcObject), tested for each kind:
create-or-open, the creator process and ``with``, the key's form, ids, equality, pickling."""

from __future__ import annotations

import copy
import errno
import pickle
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List

import pytest

import ipcbind
from ipcbind import IPC_PRIVATE, MessageQueue, SemaphoreSet, SharedMemory
from ipcbind._base import IpcObject

from conftest import run_in_child


@dataclass(frozen=True)
class Kind:
    name: str
    cls: Any
    create: Callable[..., IpcObject[Any]]  # create(key=..., exclusive=...)
    exists: Callable[[int], bool]


def _exists(stat: Callable[[int], object]) -> Callable[[int], bool]:
    def exists(ident: int) -> bool:
        try:
            stat(ident)
        except OSError as e:
            assert e.errno in (errno.EINVAL, errno.EIDRM), e
            return False
        return True
    return exists


# Every subclass of IpcObject has its entry here, so that each rule is tested for it.
KINDS = [
    Kind("queue", MessageQueue, MessageQueue.create,
         _exists(lambda i: ipcbind.msgctl(i, ipcbind.IPC_STAT))),
    Kind("semaphore set", SemaphoreSet, lambda **kw: SemaphoreSet.create(1, **kw),
         _exists(lambda i: ipcbind.semctl(i, 0, ipcbind.IPC_STAT))),
    Kind("shared memory", SharedMemory, lambda **kw: SharedMemory.create(4096, **kw),
         _exists(lambda i: ipcbind.shmctl(i, ipcbind.IPC_STAT))),
]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    k: Kind = request.param
    return k


@pytest.fixture
def make(kind: Kind) -> Iterator[Callable[..., IpcObject[Any]]]:
    """Factory: make(key=IPC_PRIVATE, exclusive=False) of the kind; removed at teardown."""
    made: List[IpcObject[Any]] = []

    def create(**kwargs: Any) -> IpcObject[Any]:
        obj = kind.create(**kwargs)
        made.append(obj)
        return obj

    yield create
    for obj in made:
        try:
            obj.remove()
        except OSError:
            pass  # the test removed it


def _free_high_key(kind: Kind) -> int:
    """A key with the high bit set that no object of the kind has now."""
    while True:
        key = random.randrange(0x80000000, 0xFFFFFFFF)
        try:
            kind.cls.open(key)
        except FileNotFoundError:
            return key


def test_a_forked_child_leaving_with_does_not_remove_the_object(
        kind: Kind, make: Callable[..., IpcObject[Any]]) -> None:
    obj = make()

    def child() -> int:
        with obj:
            pass
        return 0

    assert run_in_child(child) == 0
    assert kind.exists(obj.id)


def test_the_creator_leaving_with_removes_the_object(kind: Kind) -> None:
    with kind.create() as obj:
        ident = obj.id
    assert not kind.exists(ident)


def test_leaving_with_of_an_opened_object_removes_nothing(
        kind: Kind, make: Callable[..., IpcObject[Any]]) -> None:
    obj = make()
    with kind.cls.from_id(obj.id):
        pass
    assert kind.exists(obj.id)


def test_a_key_with_the_high_bit_set_reads_the_same_everywhere(
        kind: Kind, make: Callable[..., IpcObject[Any]]) -> None:
    key = _free_high_key(kind)
    obj = make(key=key, exclusive=True)
    assert obj.key == obj.stat().key == kind.cls.from_id(obj.id).key == key
    assert kind.cls.open(key).key == kind.cls.open(key - 2 ** 32).key == key
    assert f"key={key:#010x}" in repr(obj)


def test_create_with_a_taken_key_opens_the_object_and_did_not_create_it(
        kind: Kind, make: Callable[..., IpcObject[Any]]) -> None:
    first = make(key=_free_high_key(kind), exclusive=True)
    again = kind.create(key=first.key)
    assert again == first and first.created and not again.created


def test_from_id_of_an_id_that_names_nothing_fails_at_once_naming_the_id(
        kind: Kind, make: Callable[..., IpcObject[Any]]) -> None:
    obj = make()
    obj.remove()
    with pytest.raises(OSError, match=f"no {kind.cls._kind} with id {obj.id}") as e:
        kind.cls.from_id(obj.id)
    assert e.value.errno in (errno.EINVAL, errno.EIDRM)


def test_from_id_of_an_id_never_used_fails_at_once(kind: Kind) -> None:
    with pytest.raises(OSError, match="with id 999999") as e:
        kind.cls.from_id(999999)
    assert e.value.errno == errno.EINVAL


def test_objects_with_the_same_id_are_equal_and_hash_alike(
        kind: Kind, make: Callable[..., IpcObject[Any]]) -> None:
    obj = make()
    same = kind.cls.from_id(obj.id)
    assert same == obj and hash(same) == hash(obj) and make() != obj


def test_objects_of_two_kinds_with_the_same_id_differ() -> None:
    q = MessageQueue.create()
    try:
        s = SemaphoreSet(q.id, IPC_PRIVATE)  # the same number, wrapped unchecked
        assert q != s and len({q, s}) == 2
    finally:
        q.remove()


def test_a_pickled_object_is_the_same_object_but_not_its_creator(
        kind: Kind, make: Callable[..., IpcObject[Any]]) -> None:
    obj = make()
    back = pickle.loads(pickle.dumps(obj))
    assert type(back) is kind.cls and back == obj and obj.created and not back.created
    with back:
        pass
    assert kind.exists(obj.id)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_stat_structure_pickles_and_copies_to_an_equal_one(
        kind: Kind, make: Callable[..., IpcObject[Any]], protocol: int) -> None:
    ds = make().stat()
    back = pickle.loads(pickle.dumps(ds, protocol))
    assert type(back) is type(ds) and back == ds and copy.copy(ds) == ds == copy.deepcopy(ds)


@pytest.mark.parametrize("cmd", ["msgctl", "semctl", "shmctl"])
def test_an_info_structure_pickles_to_an_equal_one(cmd: str) -> None:
    call = getattr(ipcbind, cmd)
    _, info = call(0, 0, ipcbind.IPC_INFO) if cmd == "semctl" else call(0, ipcbind.IPC_INFO)
    assert pickle.loads(pickle.dumps(info)) == info


def test_repr_names_the_class_the_id_the_key_and_the_creator(
        kind: Kind, make: Callable[..., IpcObject[Any]]) -> None:
    obj = make()
    assert repr(obj).startswith(f"<{kind.cls.__name__} id={obj.id} key=0x00000000")
    assert repr(obj).endswith(" created>")
    assert not repr(kind.cls.from_id(obj.id)).endswith(" created>")


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (2 ** 31, ValueError),
                                      (True, TypeError), ("1", TypeError)])
def test_an_id_that_is_no_c_int_id_is_refused_before_any_call(kind: Kind, bad: object,
                                                              exc: type) -> None:
    with pytest.raises(exc, match=kind.cls._id_name):
        kind.cls.from_id(bad)


@pytest.mark.parametrize("call", ["create", "open"])
def test_a_bool_key_is_refused_as_an_id_is(kind: Kind, call: str) -> None:
    # True would otherwise name key 1, another program's object perhaps
    with pytest.raises(TypeError, match="key must be an int, not bool"):
        kind.create(key=True) if call == "create" else kind.cls.open(True)
