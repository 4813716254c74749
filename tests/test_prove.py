"""Inclusion proofs: a source row's records reach the run's sealed root through RFC 6962 audit
paths that the shipped stdlib script checks; a record changed since the seal breaks its proof
(and verify names it); the trees are RFC 6962's, test vectors included."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_digest import _copy, _settings, _sql, _verify

from elspeth_beam import testing
from elspeth_beam.auditlog import digest, merkle
from elspeth_beam.inspect.prove import ProofError, prove_row
from elspeth_beam.landscape.store import LandscapeStore

REPO = Path(__file__).resolve().parent.parent
CHECKER = REPO / "tools" / "check_proof.py"
ROW = 1  # goes through the gate into the aggregation: routing events and a batch membership
REQUIRED = {"rows", "tokens", "node_states", "routing_events", "token_outcomes", "batch_members"}


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_proof", CHECKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_proof = _checker()


@pytest.fixture(scope="module")
def sealed(tmp_path_factory) -> tuple[Path, str, str]:
    """A finished run's database, run id and digest root; tests change copies of it."""
    tmp = tmp_path_factory.mktemp("prove")
    run = testing.run_for_test(_settings(tmp), tmp)
    testing.assert_audit_complete(run)
    run.store.dispose()
    db = tmp / "landscape.db"
    return db, run.run_id, _sql(db, "SELECT digest_root FROM runs")[0][0]


def _prove(db: Path, run_id: str, row: int, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elspeth_beam.cli", "prove", run_id, "--row", str(row), "-l", str(db),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)


def _check(proof: Path, root: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), str(proof), root], capture_output=True, text=True, timeout=60)


def _row_state_ids(db: Path, run_id: str, row: int) -> list[str]:
    return [r[0] for r in _sql(db, "SELECT state_id FROM node_states WHERE token_id IN (SELECT token_id FROM tokens WHERE "
                                   "row_id IN (SELECT row_id FROM rows WHERE run_id = ? AND row_index = ?)) ORDER BY state_id",
                               run_id, row)]


# ---- a row's proof -------------------------------------------------------------------------------


def test_a_rows_proof_checks_against_the_root_with_the_shipped_script(sealed, tmp_path):
    db, run_id, root = sealed
    made = _prove(db, run_id, ROW, tmp_path / "proof.json")
    assert made.returncode == 0, made.stderr
    assert f"check it with: python tools/check_proof.py {tmp_path / 'proof.json'} ROOT" in made.stdout

    checked = _check(tmp_path / "proof.json", root)
    assert checked.returncode == 0, checked.stdout
    proof = json.loads((tmp_path / "proof.json").read_text())
    assert REQUIRED <= set(proof["tables"])
    records = sum(len(t["records"]) for t in proof["tables"].values())
    assert checked.stdout.splitlines()[-1] == f"{records} record(s) reach {root}, 0 do not"
    # the records are the row's, as the Landscape holds them
    states = proof["tables"]["node_states"]
    assert [r["key"] for r in states["records"]] == _row_state_ids(db, run_id, ROW)
    columns = json.loads(states["entry"])["columns"]
    state = dict(zip(columns, json.loads(states["records"][0]["record"])))
    assert state["run_id"] == run_id and state["state_id"] == states["records"][0]["key"]
    (row,) = proof["tables"]["rows"]["records"]
    assert json.loads(row["record"])[3] == ROW  # rows.row_index

    assert _check(tmp_path / "proof.json", "0" * 64).returncode == 1  # another root


def test_the_checker_uses_only_the_standard_library():
    tree = ast.parse(CHECKER.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"hashlib", "json", "sys"}, imported


def test_a_changed_record_breaks_the_proof_and_verify_names_it(sealed, tmp_path):
    db, run_id, root = sealed
    db = _copy(db, tmp_path / "l.db")
    state_id = _row_state_ids(db, run_id, ROW)[0]
    _sql(db, "UPDATE node_states SET duration_ms = duration_ms + 1 WHERE state_id = ?", state_id)

    made = _prove(db, run_id, ROW, tmp_path / "proof.json")
    assert made.returncode == 1
    assert f"1 record(s) of row {ROW} changed since the run's digest" in made.stderr
    assert f"node_states state_id={state_id}" in made.stderr
    checked = _check(tmp_path / "proof.json", root)
    assert checked.returncode == 1
    failed = [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [f"FAIL node_states {state_id}"]
    assert _verify(db, run_id).problems == [f"node_states: 1 record(s) changed since the run's digest: state_id={state_id}"]


def _mutations(proof: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Copies of a proof, each with one thing changed."""
    def changed(edit) -> dict[str, Any]:
        copy = json.loads(json.dumps(proof))
        edit(copy["tables"]["node_states"])
        return copy

    def flip(text: str) -> str:
        return text[:-2] + ("0" if text[-2] != "0" else "1") + text[-1]

    return [
        ("record text", changed(lambda t: t["records"][0].update(record=t["records"][0]["record"][:-1] + ",0]"))),
        ("record path", changed(lambda t: t["records"][0]["path"].__setitem__(0, flip(t["records"][0]["path"][0])))),
        ("record index", changed(lambda t: t["records"][0].update(index=t["records"][0]["index"] + 1))),
        ("path cut short", changed(lambda t: t["records"][0]["path"].pop())),
        ("table entry", changed(lambda t: t.update(entry=t["entry"].replace('"count":', '"count":1')))),
        ("table path", changed(lambda t: t["path"].__setitem__(0, flip(t["path"][0])))),
        ("table index", changed(lambda t: t.update(index=t["index"] - 1))),
    ]


def test_a_proof_edited_anywhere_no_longer_checks(sealed, tmp_path):
    db, run_id, root = sealed
    store = LandscapeStore.open_existing(str(db))
    proof = prove_row(store, run_id, ROW).document
    store.dispose()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(proof))
    assert check_proof.main(str(good), root) == 0
    for what, edited in _mutations(proof):
        path = tmp_path / "edited.json"
        path.write_text(json.dumps(edited))
        assert check_proof.main(str(path), root) == 1, what


def test_proofs_cross_segment_boundaries(sealed, tmp_path, monkeypatch):
    """Sealed in segments of 4 records, every table's records span several segments: the paths
    still reach the root, verify agrees, and the root is the one 4096-record segments give."""
    db, run_id, root = sealed
    db = _copy(db, tmp_path / "l.db")
    monkeypatch.setattr(digest, "SEGMENT", 4)
    store = LandscapeStore.open_existing(str(db))
    with store.engine.begin() as conn:
        assert digest.write_digest(conn, run_id) == root
    assert _sql(db, "SELECT COUNT(*) FROM record_digests WHERE table_name = 'node_states'")[0][0] > 4
    assert _verify(db, run_id).ok
    for row in (0, ROW, 15):
        path = tmp_path / f"proof{row}.json"
        path.write_text(json.dumps(prove_row(store, run_id, row).document))
        assert check_proof.main(str(path), root) == 0, row
    store.dispose()


def test_prove_says_why_it_cannot(sealed, tmp_path):
    db, run_id, _ = sealed
    missing = _prove(db, run_id, 99, tmp_path / "p.json")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"run {run_id} has no source row 99 (rows are 0-based; it read 16)" in missing.stderr

    db = _copy(db, tmp_path / "l.db")
    store = LandscapeStore.open_existing(str(db))
    manifest = json.loads(_sql(db, "SELECT digest_manifest FROM runs")[0][0])
    _sql(db, "UPDATE runs SET digest_manifest = ?", json.dumps(manifest | {"format": 3}))
    with pytest.raises(ProofError, match="sealed with digest format 3, before the digest was a Merkle tree"):
        prove_row(store, run_id, ROW)
    _sql(db, "UPDATE runs SET status = 'running', digest_root = NULL, digest_manifest = NULL")
    with pytest.raises(ProofError, match=f"run {run_id} is running and not sealed"):
        prove_row(store, run_id, ROW)
    store.dispose()


# ---- the trees -----------------------------------------------------------------------------------

# RFC 6962 test vectors as transparency-dev/merkle publishes them (testonly/constants.go,
# proof/verify_test.go): leaf inputs, the root of each tree size 0..8, and inclusion proofs
# (leaf index, tree size, path).
VECTOR_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                            "606162636465666768696a6b6c6d6e6f")]
VECTOR_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
VECTOR_PROOFS = [
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]


def test_rfc_6962_roots():
    leaves = [merkle.leaf_hash(d) for d in VECTOR_LEAVES]
    assert [merkle.root(leaves[:n]).hex() for n in range(9)] == VECTOR_ROOTS


@pytest.mark.parametrize(("index", "size", "expected"), VECTOR_PROOFS)
def test_rfc_6962_inclusion_proofs(index, size, expected):
    leaves = [merkle.leaf_hash(d) for d in VECTOR_LEAVES[:size]]
    path = merkle.path(merkle.levels(leaves), index)
    assert [p.hex() for p in path] == expected
    assert merkle.root_from_path(leaves[index], index, size, path).hex() == VECTOR_ROOTS[size]
    text = VECTOR_LEAVES[index].decode("latin-1")  # the checker hashes UTF-8 text: ASCII leaves only
    if text.isascii():
        assert check_proof.climb(text, index, size, expected) == VECTOR_ROOTS[size]


leaf_texts = st.lists(st.text(max_size=6), min_size=1, max_size=40)


@given(texts=leaf_texts, data=st.data())
@settings(max_examples=200, deadline=None)
def test_every_inclusion_proof_verifies_and_a_flipped_byte_fails(texts, data):
    """For any leaves, each leaf's path reaches the root, in merkle.py and in the shipped
    checker alike; one flipped bit in the path, or a changed leaf, does not."""
    leaves = [merkle.leaf_hash(t.encode()) for t in texts]
    tree, root, size = merkle.levels(leaves), merkle.root(leaves), len(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    path = merkle.path(tree, index)
    assert merkle.root_from_path(leaves[index], index, size, path) == root
    assert check_proof.climb(texts[index], index, size, [p.hex() for p in path]) == root.hex()
    assert merkle.root_from_path(merkle.leaf_hash(texts[index].encode() + b"x"), index, size, path) != root
    if path:
        at, bit = data.draw(st.integers(0, len(path) - 1), label="element"), data.draw(st.integers(0, 255), label="bit")
        broken = list(path)
        broken[at] = bytes([b ^ (1 << bit % 8) if i == bit // 8 else b for i, b in enumerate(broken[at])])
        assert merkle.root_from_path(leaves[index], index, size, broken) != root
        assert check_proof.climb(texts[index], index, size, [p.hex() for p in broken]) != root.hex()
    if size > 1:  # nor does the path take the leaf to the root from another place
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index), label="other")
        assert merkle.root_from_path(leaves[index], other, size, path) != root or leaves[other] == leaves[index]


@given(texts=st.lists(st.binary(max_size=4), min_size=1, max_size=70), bits=st.integers(0, 4), data=st.data())
@settings(max_examples=200, deadline=None)
def test_segments_joined_are_the_tree_over_all_records(texts, bits, data):
    """Why the digest may hash segments of 2**k records on their own: their roots, joined,
    are the root over all the leaves, and a segment's path followed by the segment's own is
    the record's path in the whole tree."""
    leaves = [merkle.leaf_hash(t) for t in texts]
    size = 1 << bits
    segments = [leaves[i:i + size] for i in range(0, len(leaves), size)]
    top = merkle.levels([merkle.root(seg) for seg in segments])
    assert top[-1][0] == merkle.root(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    joined = merkle.path(merkle.levels(segments[index // size]), index % size) + merkle.path(top, index // size)
    assert joined == merkle.path(merkle.levels(leaves), index)


def test_the_segment_size_is_a_power_of_two():
    assert digest.SEGMENT & (digest.SEGMENT - 1) == 0
