"""Which addresses a server takes a pull's proof for (``sperse._server.pull_auth``): the
proof is bound to the address the puller dialled, so it must be one of the holder's own."""

from __future__ import annotations

import asyncio

import pytest

from sperse._server.pull_auth import OwnAddresses, pull_proof, split_address

PORT = 5123


def includes(own: OwnAddresses, address: str) -> bool:
    return asyncio.run(own.include(address))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (f"127.0.0.1:{PORT}", True),
        (f"sperse://127.0.0.1:{PORT}", True),
        (f"localhost:{PORT}", True),
        (f"127.0.0.1:{PORT + 1}", False),  # another port: another server
        (f"192.0.2.7:{PORT}", False),  # another host (TEST-NET-1, never local)
        (f"no-such-host.invalid:{PORT}", False),
        ("127.0.0.1", False),
        ("", False),
    ],
)
def test_a_server_bound_to_loopback_owns_its_loopback_address_only(
    address: str, expected: bool
) -> None:
    assert includes(OwnAddresses("127.0.0.1", PORT), address) is expected


def test_a_server_bound_everywhere_owns_the_addresses_of_this_machine() -> None:
    own = OwnAddresses("0.0.0.0", PORT)
    assert includes(own, f"127.0.0.1:{PORT}")
    assert not includes(own, f"192.0.2.7:{PORT}")
    assert not includes(own, f"127.0.0.1:{PORT + 1}")


def test_the_advertised_address_is_its_own_whatever_its_port() -> None:
    own = OwnAddresses("127.0.0.1", PORT, advertise="gateway.example:7000")
    assert includes(own, "gateway.example:7000")
    assert not includes(own, "gateway.example:7001")


def test_a_proof_names_the_address_the_object_and_the_asking_server() -> None:
    proof = pull_proof("token", "127.0.0.1:1", "obj", "beta")
    assert proof == pull_proof("token", "127.0.0.1:1", "obj", "beta")
    assert proof not in {
        pull_proof("other", "127.0.0.1:1", "obj", "beta"),
        pull_proof("token", "127.0.0.1:2", "obj", "beta"),
        pull_proof("token", "127.0.0.1:1", "obj2", "beta"),
        pull_proof("token", "127.0.0.1:1", "obj", "gamma"),
        pull_proof("token", "127.0.0.1:1obj", "", "beta"),  # fields cannot run together
    }


def test_addresses_are_split_like_the_options_that_take_them() -> None:
    assert split_address("[::1]:80") == ("::1", 80)
    assert split_address("sperse://h:1") == ("h", 1)
    assert split_address("h:0") is None and split_address("h:x") is None
