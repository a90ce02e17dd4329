"""The wire format between a worker and its server's state store.

Wire format
-----------
A stream socket (an abstract Unix socket). The worker speaks first, and waits for the
reply to each request before it sends the next; a request that needs a key lock is
answered once it has the lock::

    hello    "!4sH"   b"SPS1", key length; then the key (ASCII): the first frame
             -> OK INT max_value_size, or ERROR REFUSED message (and the store closes)
    request  "!QBH"   length of what follows the header, op, key length; then the key
                      (UTF-8), then the op's values: each "!BQ" kind, length, then its bytes
    reply    "!BBQ"   status (OK | ERROR), kind (when OK) or error code, length; then bytes

Kinds: ``MISSING`` (no bytes), ``INT`` (two's complement, big-endian, as few bytes as it
takes), ``FLOAT`` (``"!d"``), ``PICKLE``, ``LIST`` (each key as ``"!I"`` length + UTF-8 for
KEYS; for ITEMS each key is followed by its value, ``"!BQ"`` + bytes). ERROR: a UTF-8
message. Ops, with the values they carry, and their reply::

    GET                  -> the value, or MISSING
    SET v                -> MISSING
    DELETE               -> INT 1 if the key was there, else 0
    INCR n               -> the new number; ERROR TYPE if the key holds a pickle
    SETDEFAULT v         -> the value the key holds now
    CAS expected new     -> INT 1 if the key held ``expected`` and now holds ``new``, else 0
    KEYS, ITEMS          -> LIST (the key is empty)
    LOCK_GET             -> the value (or MISSING), once this connection holds the key lock
    ONCE_GET             -> the value if the key has one; else, once this connection holds
                            the lock and the key is still missing, MISSING (lock kept)
    SET_UNLOCK v         -> MISSING: set the key, release its lock
    UNLOCK               -> MISSING

A ``SET``, ``DELETE``, ``INCR``, ``SETDEFAULT`` or ``CAS`` of a key another connection has
locked waits for the lock to be released: an ``update`` is atomic against them too.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

__all__ = [
    "ADDRESS_ENV",
    "DOUBLE",
    "HELLO",
    "KEY_ENV",
    "KEY_MAX",
    "LENGTH",
    "MAGIC",
    "REPLY",
    "REQUEST",
    "VALUE",
    "ErrorCode",
    "Kind",
    "Op",
    "Status",
    "int_bytes",
]

ADDRESS_ENV: Final = "SPERSE_STATE_ADDRESS"  # the stores a worker may use, comma-separated
KEY_ENV: Final = "SPERSE_STATE_KEY"  # their keys, in the same order

MAGIC: Final = b"SPS1"
HELLO: Final = struct.Struct("!4sH")
REQUEST: Final = struct.Struct("!QBH")
VALUE: Final = struct.Struct("!BQ")
REPLY: Final = struct.Struct("!BBQ")
DOUBLE: Final = struct.Struct("!d")
LENGTH: Final = struct.Struct("!I")  # a key's length, in a LIST
KEY_MAX: Final = 0xFFFF


class Op(enum.IntEnum):
    GET = 1
    SET = 2
    DELETE = 3
    INCR = 4
    SETDEFAULT = 5
    CAS = 6
    KEYS = 7
    ITEMS = 8
    LOCK_GET = 9
    ONCE_GET = 10
    SET_UNLOCK = 11
    UNLOCK = 12


class Kind(enum.IntEnum):
    MISSING = 0
    INT = 1
    FLOAT = 2
    PICKLE = 3
    LIST = 4


class Status(enum.IntEnum):
    OK = 0
    ERROR = 1


class ErrorCode(enum.IntEnum):
    TYPE = 1  # INCR of a key that holds a pickle
    TOO_LARGE = 2  # a value over the server's max value size
    LOCK = 3  # a lock taken twice by one connection, or released without being held
    REFUSED = 4  # the hello: wrong key, or a process that is not a worker of the server
    PROTOCOL = 5  # a malformed request (the store closes the connection)


def int_bytes(n: int) -> bytes:
    """``n`` as two's complement, big-endian, in as few bytes as it takes."""
    return n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)
