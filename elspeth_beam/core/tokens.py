"""TokenInfo — one instance of a source row on one path — and its deterministic Beam coder.

A token carries everything needed to continue processing and to record lineage, so a
runner checkpoint (or our own resume) that restores tokens restores full lineage.
"""

from __future__ import annotations

import json
import math
import re

import orjson
from typing import TYPE_CHECKING, Any

from apache_beam import coders
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.core.errors import CanonicalizationError, ElspethError

JSONValue = Any  # str | int | float | bool | None | list | dict of those

MAX_NESTING = 100
"""Objects and arrays in a row nest at most this deep: every reader after the source (the JSON
parser, canonical JSON, the coder, explain and export in a fresh process) recurses, and none
of them should meet a row that exhausts Python's stack."""


def _check_json_native(value: Any, path: str, depth: int = 1) -> None:
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise CanonicalizationError(f"field {path!r} holds a lone surrogate; it has no UTF-8 form") from None
        return
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalizationError(
                f"field {path!r} is {value!r}: NaN/Infinity has no canonical form; "
                "clean the value or map it to null"
            )
        return
    if isinstance(value, (dict, list)) and depth > MAX_NESTING:
        raise CanonicalizationError(f"field {path!r} is nested deeper than {MAX_NESTING} levels (objects and arrays)")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalizationError(f"field {path!r} has a non-string key {k!r}")
            _check_json_native(v, f"{path}.{k}", depth + 1)
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_json_native(v, f"{path}[{i}]", depth + 1)
        return
    raise CanonicalizationError(
        f"field {path!r} holds a {type(value).__name__}; row values must be JSON types "
        "(str, int, float, bool, null, list, object)"
    )


_encode_token = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _token_bytes(fields: dict[str, Any]) -> bytes:
    """Compact JSON, the token's fields in their fixed order and the row's in its own: the
    row's field order is what the sinks write as columns, so it must survive every stage
    boundary (a sorted encoding gave a CSV sink other columns on a runner that reshuffles).
    orjson (a sixth of the time; tokens are encoded at every stage boundary and for every
    buffered checkpoint), json for what orjson refuses (integers beyond 64 bits). Both keep
    int vs float; a token's row never holds NaN (validated). Hashes are over canonical JSON,
    not this."""
    try:
        return orjson.dumps(fields)
    except TypeError:
        return _encode_token(fields).encode("utf-8")


class TokenError(ElspethError, ValueError):
    """A token's fields are not what a token holds (a wrong type, an unknown field): a restored
    checkpoint or a decoded element that was not written by elspeth_beam."""


_LONG_DIGITS = re.compile(rb"\d{19}")  # maybe an integer orjson cannot keep exact
_FIELDS = ("run_id", "row_id", "token_id", "row_index", "parent_ids", "branch", "row")
_TEXT = ("run_id", "row_id", "token_id")


class TokenInfo:
    """A row instance travelling one path through the graph (frozen, JSON-native data).

    A plain slotted class, not a pydantic model: the per-row path makes several tokens a row,
    and the model's construction (and Beam's state cache walking its attributes to size a bag)
    cost more than the step's own work. ``TokenInfo(...)`` checks every field, ``of`` only the
    row (the other fields come from our own code), ``child`` nothing (its row is its parent's).

    ``row_hash`` is computed once per token object and carried with it, so each node that
    records the row's hash (a transform's input, a gate's, a sink's) reuses the digest made
    where the row was made; it is derived, never encoded, so a decoded token hashes anew."""

    __slots__ = (*_FIELDS, "_row_hash")
    if TYPE_CHECKING:  # not at run time: Beam would infer a row schema from class annotations
        run_id: str
        row_id: str
        token_id: str
        row_index: int
        parent_ids: tuple[str, ...]
        branch: str | None
        row: dict[str, JSONValue]

    def __init__(self, *, run_id: str, row_id: str, token_id: str, row_index: int,
                 parent_ids: tuple[str, ...] | list[str] = (), branch: str | None = None,
                 row: dict[str, JSONValue]) -> None:
        for name, value in zip(_TEXT, (run_id, row_id, token_id)):
            if type(value) is not str:
                raise TokenError(f"a token's {name} must be a string, not {type(value).__name__}")
        if type(row_index) is not int:
            raise TokenError(f"a token's row_index must be an integer, not {type(row_index).__name__}")
        if not isinstance(parent_ids, (tuple, list)) or not all(type(p) is str for p in parent_ids):
            raise TokenError("a token's parent_ids must be a list of token ids (strings)")
        if branch is not None and type(branch) is not str:
            raise TokenError(f"a token's branch must be a string or null, not {type(branch).__name__}")
        _check_row(row)
        _set(self, run_id, row_id, token_id, row_index, tuple(parent_ids), branch, row)

    @classmethod
    def of(cls, row: dict[str, Any], *, run_id: str, row_id: str, token_id: str, row_index: int,
           parent_ids: tuple[str, ...] = (), branch: str | None = None, row_hash: str | None = None) -> "TokenInfo":
        """A token of our own making: its ``row`` checked (JSON types, no NaN, keys strings)
        and kept as given, not copied; ``row_hash`` if the caller already has the row's digest."""
        _check_row(row)
        token = object.__new__(cls)
        _set(token, run_id, row_id, token_id, row_index, parent_ids, branch, row)
        if row_hash is not None:
            _set_hash(token, row_hash)
        return token

    def child(self, *, token_id: str, branch: str | None) -> "TokenInfo":
        """A fork's child: this token's row (checked when it was made, and its hash) on a new path."""
        token = object.__new__(TokenInfo)
        _set(token, self.run_id, self.row_id, token_id, self.row_index, (self.token_id,), branch, self.row)
        _set_hash(token, self.row_hash)
        return token

    @property
    def row_hash(self) -> str:
        """``stable_hash(row)``: computed at most once per token."""
        try:
            return self._row_hash
        except AttributeError:
            digest = stable_hash(self.row)
            _set_hash(self, digest)
            return digest

    def with_row(self, row: dict[str, Any]) -> "TokenInfo":
        """The same token carrying new data (checked: NaN etc. are rejected here)."""
        return TokenInfo.of(row, run_id=self.run_id, row_id=self.row_id, token_id=self.token_id,
                            row_index=self.row_index, parent_ids=self.parent_ids, branch=self.branch)

    def replace(self, **changes: Any) -> "TokenInfo":
        """A copy with some fields changed, every field checked again."""
        return TokenInfo(**{**self.fields(), **changes})

    def fields(self) -> dict[str, Any]:
        """Its fields by name (not ``as_dict``: Beam takes an object with that for a schema Row)."""
        return {name: getattr(self, name) for name in _FIELDS}

    def to_json_bytes(self) -> bytes:
        return _token_bytes(
            {
                "run_id": self.run_id,
                "row_id": self.row_id,
                "token_id": self.token_id,
                "row_index": self.row_index,
                "parent_ids": list(self.parent_ids),
                "branch": self.branch,
                "row": self.row,
            }
        )

    @classmethod
    def from_json_bytes(cls, data: bytes) -> "TokenInfo":
        """The token ``to_json_bytes`` wrote, every field checked (TokenError if it is not one)."""
        # orjson reads an integer beyond 64 bits as a float; such a literal has 19 digits or more
        fields = json.loads(data) if _LONG_DIGITS.search(data) else orjson.loads(data)
        if not isinstance(fields, dict) or set(fields) - set(_FIELDS):
            raise TokenError(f"not a token's JSON: {bytes(data[:80])!r}")
        try:
            return cls(**fields)
        except TypeError as exc:  # a field missing
            raise TokenError(f"not a token's JSON ({exc}): {bytes(data[:80])!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a token is frozen: make a new one (with_row, replace) rather than set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a token is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not TokenInfo:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _FIELDS)

    __hash__ = None  # type: ignore[assignment]  # its row is a dict

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, tuple(getattr(self, n) for n in _FIELDS))

    def __repr__(self) -> str:
        return "TokenInfo(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in _FIELDS) + ")"


_setters = [TokenInfo.__dict__[n].__set__ for n in _FIELDS]
_set_hash = TokenInfo.__dict__["_row_hash"].__set__


def _set(token: TokenInfo, *values: Any) -> None:
    for setter, value in zip(_setters, values):
        setter(token, value)


def _restore(*values: Any) -> TokenInfo:
    token = object.__new__(TokenInfo)
    _set(token, *values)
    return token


def _check_row(row: Any) -> None:
    if not isinstance(row, dict):
        raise CanonicalizationError(f"a row must be an object (dict), not {type(row).__name__}")
    for key, value in row.items():
        if not isinstance(key, str):
            raise CanonicalizationError(f"row has a non-string key {key!r}")
        _check_json_native(value, key)


class TokenInfoCoder(coders.Coder):
    """Deterministic coder: compact JSON, a function of the token including its row's field
    order (keeps int vs float; never pickle). Tokens are never keys."""

    def encode(self, value: TokenInfo) -> bytes:
        return value.to_json_bytes()

    def decode(self, encoded: bytes) -> TokenInfo:
        return TokenInfo.from_json_bytes(encoded)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self):
        return TokenInfo

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


coders.registry.register_coder(TokenInfo, TokenInfoCoder)
