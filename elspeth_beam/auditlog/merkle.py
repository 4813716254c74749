"""RFC 6962 Merkle trees (sha256): roots, audit paths, and their check (RFC 9162 §2.1.3).

Why our own and not pymerkle (7.0, RFC 9162, pure Python): the seal hashes every audit record
of a run, and over 300 000 leaves these list comprehensions over ``hashlib`` took 0.28–0.45 s
to the root where pymerkle's ``InmemoryTree.append_entries`` took 2.6–3.8 s (same root; busy
2-core machine). The trees are the RFC's:

- a leaf is ``H(0x00 ‖ d)``, a node ``H(0x01 ‖ left ‖ right)``, the empty tree ``H()``;
- the tree over n > 1 leaves splits at k, the largest power of two below n: left the first k.

Built level by level, pairing neighbours and carrying a level's odd last node up unchanged,
gives exactly that tree. So a complete, aligned run of 2**j leaves is one node of it, which is
why the digest can hash segments of 4096 records on their own and join their roots: the
result is the tree over all the records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

LEAF, NODE = b"\x00", b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """``H(0x00 ‖ data)``: the leaf of one datum."""
    return _sha256(LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``H(0x01 ‖ left ‖ right)``."""
    return _sha256(NODE + left + right).digest()


def _up(level: Sequence[bytes]) -> list[bytes]:
    """The level above: neighbours paired, an odd last node carried up as it is."""
    pairs = iter(level)
    above = [_sha256(NODE + left + right).digest() for left, right in zip(pairs, pairs)]
    if len(level) % 2:
        above.append(level[-1])
    return above


def levels(hashes: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree over ``hashes`` (leaf hashes, or roots of aligned complete
    subtrees), from them up to the root's."""
    tree = [list(hashes)]
    while len(tree[-1]) > 1:
        tree.append(_up(tree[-1]))
    return tree


def root(hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash over ``hashes`` (``EMPTY_ROOT`` for none)."""
    if not hashes:
        return EMPTY_ROOT
    level = hashes
    while len(level) > 1:
        level = _up(level)
    return level[0]


def path(tree: list[list[bytes]], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` in ``levels(…)``: its siblings from the bottom up (a
    node carried up has none at that level)."""
    siblings = []
    for level in tree[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            siblings.append(level[sibling])
        index >>= 1
    return siblings


def root_from_path(leaf: bytes, index: int, size: int, siblings: Sequence[bytes]) -> bytes | None:
    """The root that ``siblings`` lead ``leaf`` (at ``index`` of ``size`` leaves) to, or None
    when the path cannot be one of such a tree (too long, too short, index out of range):
    RFC 9162 §2.1.3.2."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in siblings:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None
