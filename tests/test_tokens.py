"""Bearer tokens (``aios-memory token create/list/revoke``), through the real CLI and the file it writes."""

from __future__ import annotations

import json
import stat

import pytest
from conftest import run_cli

from aios_memory import InvalidInputError, MemoryStore
from aios_memory.service.tokens import TokenStore


def _create(store, *args: str) -> dict:
    return json.loads(run_cli("--store", str(store), "token", "create", *args).stdout)


def test_create_list_revoke_through_the_cli(tmp_path):
    store = tmp_path / "s"
    run_cli("--store", str(store), "init")  # `token` refuses a location that holds no store
    a = _create(store, "--name", "agent-a", "--namespace", "agent-a", "--namespace", "shared")
    r = _create(store, "--name", "reader", "--all-namespaces", "--read-only", "--no-sql")
    assert a["token"].startswith("aiosm_") and a["namespaces"] == ["agent-a", "shared"]
    assert (a["write"], a["sql"], a["admin"]) == (True, True, False)
    assert (r["namespaces"], r["write"], r["sql"]) == (None, False, False)

    path = store / "_service" / "tokens.json"
    raw = path.read_text()
    assert a["token"] not in raw and r["token"] not in raw  # only digests are kept
    assert a["token"][-43:] not in raw  # not even the secret part (which may itself hold "_")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    listed = json.loads(run_cli("--store", str(store), "token", "list").stdout)
    assert [t["name"] for t in listed] == ["agent-a", "reader"]
    assert "token" not in listed[0] and a["token"] not in json.dumps(listed)

    tokens = TokenStore(store)
    assert tokens.verify(a["token"]).scope.namespaces == frozenset({"agent-a", "shared"})
    run_cli("--store", str(store), "token", "revoke", a["id"])
    assert tokens.verify(a["token"]) is None  # the same object sees the revocation (the file changed)
    assert tokens.verify(r["token"]).name == "reader"
    bad = run_cli("--store", str(store), "token", "revoke", a["id"], check=False)
    assert bad.returncode != 0 and "no token with id" in bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--name", "x"],  # neither --namespace nor --all-namespaces
        ["--name", "x", "--namespace", "a", "--all-namespaces"],
        ["--name", "", "--namespace", "a"],
        ["--name", "x", "--namespace", ""],
    ],
)
def test_bad_create_is_refused_and_writes_nothing(tmp_path, args):
    store = tmp_path / "s"
    MemoryStore(store)  # a store, so that the refusal is about the arguments
    proc = run_cli("--store", str(store), "token", "create", *args, check=False)
    assert proc.returncode != 0 and "StoreNotFoundError" not in proc.stderr
    assert not (store / "_service" / "tokens.json").exists()


def test_wrong_tokens_are_not_live(tmp_path):
    tokens = TokenStore(tmp_path)
    good, info = tokens.create("t", ["a"])
    assert tokens.verify(good) == info
    prefix, tid, secret = good.split("_", 2)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for wrong in [
        None,
        "",
        "Bearer " + good,
        good + "x",
        f"{prefix}_{tid}_{flipped}",
        f"{prefix}_00000000_{secret}",
        42,
    ]:
        assert tokens.verify(wrong) is None
    with pytest.raises(InvalidInputError):
        tokens.create("t", "a")  # one string, not a list of namespaces
