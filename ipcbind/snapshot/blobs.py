"""Large byte strings kept out of a snapshot file's JSON text while it is made or read,
so that neither a dump nor a load holds a segment's base64 whole; and the checksum,
which is computed over the text with them put back."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from typing import Any, Dict, Iterator, List, Mapping, Optional

from ..errors import SnapshotFormatError

# Bytes per base64 piece of a segment's data: a multiple of 3, so that the pieces'
# base64 put together is the base64 of the whole.
_B64_PIECE = 3 << 18


class _Blobs:
    """Large byte strings kept out of the JSON text while it is made or read.

    Each stands in the text as a token, a string no file can hold by chance (it
    carries a number drawn for this use alone); :meth:`expand` puts the base64 of
    the bytes back, piece by piece, so that neither a dump nor a load ever holds a
    segment's base64 whole.
    """

    def __init__(self) -> None:
        self.nonce = os.urandom(8).hex()
        self.data: Dict[str, bytes] = {}
        self.pattern = re.compile(r'"\\u0000blob-' + self.nonce + r'-[0-9]+\\u0000"')

    def add(self, data: bytes) -> str:
        token = f"\0blob-{self.nonce}-{len(self.data)}\0"
        self.data[token] = data
        return token

    def take(self, token: str) -> Optional[bytes]:
        """The bytes ``token`` stands for, once (None: not a token of ours)."""
        return self.data.pop(token, None)

    def expand(self, text: str) -> Iterator[str]:
        """``text`` with every token (as JSON writes it) replaced by its data in base64."""
        at = 0
        for found in self.pattern.finditer(text):
            data = self.data.get(json.loads(found.group()))
            if data is None:
                continue
            yield text[at:found.start()] + '"'
            view = memoryview(data)
            for i in range(0, len(view), _B64_PIECE):
                yield base64.b64encode(view[i:i + _B64_PIECE]).decode("ascii")
            yield '"'
            at = found.end()
        yield text[at:]


def _digest(body: Mapping[str, Any], blobs: Optional[_Blobs] = None) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    h = hashlib.sha256()
    for piece in (blobs.expand(canonical) if blobs is not None else (canonical,)):
        h.update(piece.encode())
    return "sha256:" + h.hexdigest()


_BIG_STRING = 1 << 16
_B64_TEXT = re.compile(rb"[A-Za-z0-9+/=]*")


class _Decoder:
    """A base64 string decoded as it comes, refused unless it is base64 as written."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.rest = b""
        self.ended = False

    @staticmethod
    def bad(why: str) -> SnapshotFormatError:
        return SnapshotFormatError(f"snapshot file: a string of more than {_BIG_STRING} "
                                   f"characters {why} (only data, in base64, is that long)")

    def feed(self, piece: bytes) -> None:
        if not _B64_TEXT.fullmatch(piece):
            raise self.bad("is not base64")
        text = self.rest + piece
        whole = len(text) // 4 * 4
        if not whole:
            self.rest = text
            return
        if self.ended:
            raise self.bad("goes on after its padding")
        block = text[:whole]
        try:
            data = base64.b64decode(block, validate=True)
        except (binascii.Error, ValueError):
            raise self.bad("is not valid base64") from None
        if base64.b64encode(data) != block:
            raise self.bad("is not base64 as written (padding or spare bits)")
        self.ended = block.endswith(b"=")
        self.out += data
        self.rest = text[whole:]

    def finish(self) -> bytes:
        if self.rest:
            raise self.bad("is not valid base64 (its length is not a multiple of 4)")
        return bytes(self.out)


class _Scanner:
    """Splits a JSON text, fed in chunks, into the text without its long strings (in
    their place a token of ``blobs``) and their decoded bytes."""

    def __init__(self, blobs: _Blobs) -> None:
        self.blobs = blobs
        self.text: List[bytes] = []
        self.inside = False
        self.parts: List[bytes] = []
        self.length = 0
        self.slashes = 0  # backslashes ending the string so far
        self.decoder: Optional[_Decoder] = None
        self.plain = False

    def feed(self, chunk: bytes) -> None:
        # UTF-8 never has the bytes of " or \ inside another character's bytes.
        at = 0
        while at < len(chunk):
            end = chunk.find(b'"', at)
            if not self.inside:
                if end < 0:
                    self.text.append(chunk[at:])
                    return
                self.text.append(chunk[at:end])
                self.inside, self.parts, self.length, self.slashes = True, [], 0, 0
                self.decoder, self.plain = None, False
                at = end + 1
                continue
            piece = chunk[at:] if end < 0 else chunk[at:end]
            if end >= 0:
                run = len(piece) - len(piece.rstrip(b"\\"))
                if run == len(piece):
                    run += self.slashes
                if run % 2:  # an escaped quote: the string goes on
                    self.add(piece + b'"')
                    at = end + 1
                    continue
            self.add(piece)
            if end < 0:
                return
            self.close()
            at = end + 1

    def add(self, piece: bytes) -> None:
        if not piece:
            return
        run = len(piece) - len(piece.rstrip(b"\\"))
        self.slashes = run + self.slashes if run == len(piece) else run
        if self.decoder is not None:
            self.decoder.feed(piece)
            return
        self.parts.append(piece)
        self.length += len(piece)
        if self.length > _BIG_STRING and not self.plain:
            whole = b"".join(self.parts)
            if _B64_TEXT.fullmatch(whole):
                self.decoder = _Decoder()
                self.decoder.feed(whole)
                self.parts = []
            else:
                self.plain = True  # not data: it stays in the text, and fails there

    def close(self) -> None:
        if self.decoder is not None:
            token = self.blobs.add(self.decoder.finish())
            self.text.append(json.dumps(token).encode())
        else:
            self.text.append(b'"' + b"".join(self.parts) + b'"')
        self.inside = False
        self.parts = []
