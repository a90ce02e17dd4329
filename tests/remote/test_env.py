"""``env={"pip": [...]}``: packages a server installs before it runs the work that asks.

Real servers, a real ``pip install`` of a wheel built here (no network), real workers.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import sperse
from sperse._backends.sperse import EmbeddedServer, SperseBackend

pytestmark = pytest.mark.slow

WAIT = 120.0  # a first call installs the package: pip takes a few seconds


def build_wheel(folder: Path, name: str, version: str, body: str) -> Path:
    """A pure-Python wheel of module ``name`` whose source is ``body``: what pip installs."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": body.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@pytest.fixture
def envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the servers of a test install environments (their XDG cache)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "sperse" / "envs"


@pytest.fixture
def cluster(envs: Path) -> Iterator[sperse.Cluster]:
    server = EmbeddedServer(workers=1)
    with sperse.Cluster(SperseBackend(server.address, token=server.token, process=server)) as c:
        yield c


def version_of_the_package() -> str:
    import sperse_env_probe  # type: ignore[import-not-found]  # only where the env has it

    return str(sperse_env_probe.VERSION)


def test_work_runs_with_what_its_env_installs(
    cluster: sperse.Cluster, envs: Path, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path, "sperse_env_probe", "1.0", "VERSION = 'one'\n")
    with pytest.raises(ImportError):
        version_of_the_package()  # not here, nor on the server's own workers:
    with pytest.raises(ModuleNotFoundError):
        sperse.remote(version_of_the_package)().result(WAIT)
    probe = sperse.remote(env={"pip": [str(wheel)]})(version_of_the_package)
    assert probe().result(WAIT) == "one"
    assert [p.result(WAIT) for p in [probe() for _ in range(3)]] == ["one"] * 3
    (installed,) = [p for p in envs.iterdir() if not p.name.startswith(".")]  # once, by content
    assert (installed / "sperse_env_probe.py").exists()
    with pytest.raises(ModuleNotFoundError):  # the server's own workers never see it
        sperse.remote(version_of_the_package)().result(WAIT)


def test_two_environments_do_not_meet(cluster: sperse.Cluster, tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = build_wheel(tmp_path / "one", "sperse_env_probe", "1.0", "VERSION = 'one'\n")
    two = build_wheel(tmp_path / "two", "sperse_env_probe", "2.0", "VERSION = 'two'\n")
    first = sperse.remote(env={"pip": [str(one)]})(version_of_the_package)
    second = first.options(env={"pip": [str(two)]})
    assert sperse.gather(first(), second(), first(), timeout=WAIT) == ["one", "two", "one"]


def test_an_env_for_every_call_of_a_cluster(envs: Path, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, "sperse_env_probe", "3.0", "VERSION = 'three'\n")
    server = EmbeddedServer(workers=1)
    backend = SperseBackend(server.address, token=server.token, process=server)
    with sperse.Cluster(backend, env={"pip": [str(wheel)]}) as cluster:
        assert sperse.remote(version_of_the_package)().result(WAIT) == "three"
        ws = sperse.Workspace(cluster)  # remote statements at the prompt have it too
        ws.run("v = remote __import__('sperse_env_probe').VERSION")
        assert ws.wait("v", timeout=WAIT) == "three"
        ws.close()


def test_an_env_that_cannot_be_had_is_a_clear_error(cluster: sperse.Cluster) -> None:
    missing = "/nonexistent/sperse_no_such_package-1.0-py3-none-any.whl"
    broken = sperse.remote(env={"pip": [missing]})(version_of_the_package)
    calls = [broken() for _ in range(3)]  # one installation attempt answers all three
    for call in calls:
        with pytest.raises(sperse.EnvUnavailable, match=r"cannot install .*pip exited"):
            call.result(WAIT)
    assert sperse.remote(os.getpid)().result(WAIT) > 0  # the server serves on


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"files": ["data.csv"]}, "only 'pip'.*travel with your functions"),
        ({"pip": "numpy"}, "list of requirement strings"),
        ({"pip": [""]}, "list of requirement strings"),
        (["numpy"], "must be a dict"),
    ],
)
def test_a_wrong_env_is_refused_at_once(env: object, error: str) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        sperse.remote(env=env)(os.getpid)  # type: ignore[arg-type]


def test_an_env_needs_servers() -> None:
    with sperse.Cluster(sperse.LocalBackend(1)):
        call = sperse.remote(env={"pip": ["anything"]})(os.getpid)()
        with pytest.raises(sperse.EnvUnavailable, match="needs sperse servers"):
            call.result(WAIT)
