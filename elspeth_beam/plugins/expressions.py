"""A small, safe expression language for gate conditions and computed fields.

Python syntax, but only a whitelist of constructs is accepted — no ``eval``, no attribute
access beyond a few string methods and ``row.get``, no names but ``row``. Expressions are
checked when settings load, so a forbidden construct is a settings error, not a runtime one.
"""

from __future__ import annotations

import ast
import operator
from typing import Any, Callable

from elspeth_beam.core.errors import ExpressionError
from elspeth_beam.core.reasons import without_values

_MAX_REPEAT = 10_000  # 'x' * n and [..] * n: a row expression must not exhaust memory


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, (str, list)) or isinstance(b, (str, list)):
        count = b if isinstance(a, (str, list)) else a
        if isinstance(count, int) and count > _MAX_REPEAT:
            raise ValueError(f"repeating a string or list {count} times exceeds the limit of {_MAX_REPEAT}")
    return operator.mul(a, b)


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
}
_STR_METHODS = {"lower", "upper", "strip", "startswith", "endswith"}


class Expression:
    """A parsed, checked expression; ``evaluate(row)`` runs it against one row."""

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"invalid expression {source!r}: {exc.msg}") from None
        _check(tree.body)
        self._body = tree.body

    def evaluate(self, row: dict[str, Any]) -> Any:
        try:
            return _eval(self._body, row)
        except KeyError as exc:
            raise ExpressionError.about(lambda: f"{self.source!r}: row has no field {exc.args[0]!r}") from None
        except (TypeError, ValueError, ZeroDivisionError, IndexError, OverflowError) as exc:
            raise _failed(self.source, exc) from None

    def __reduce__(self):
        return (Expression, (self.source,))


def _failed(source: str, exc: Exception) -> ExpressionError:
    """The expression's error on one row: the expression and the error type are the reason,
    the values the error message quotes (Python's own messages name them) are taken out."""
    detail, values = without_values(str(exc))
    prefix = f"{source!r}: {type(exc).__name__}: "
    return ExpressionError(f"{prefix}{exc}", reason=prefix + detail, values=values)


def _check(node: ast.AST) -> None:
    """Reject every construct not on the whitelist."""
    match node:
        case ast.Constant():
            return
        case ast.Name(id="row"):
            return
        case ast.Name(id=name):
            raise ExpressionError(f"unknown name {name!r}; refer to fields as row['{name}']")
        case ast.BoolOp(values=values):
            for v in values:
                _check(v)
        case ast.BinOp(op=op, left=left, right=right) if type(op) in _BINOPS:
            _check(left)
            _check(right)
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
            _check(operand)
        case ast.Compare(left=left, ops=ops, comparators=comps) if all(type(o) in _CMPOPS for o in ops):
            for n in (left, *comps):
                _check(n)
        case ast.IfExp(test=test, body=body, orelse=orelse):
            for n in (test, body, orelse):
                _check(n)
        case ast.Subscript(value=value, slice=index):
            _check(value)
            _check(index)
        case ast.Slice(lower=lower, upper=upper, step=step):
            for n in (lower, upper, step):
                if n is not None:
                    _check(n)
        case ast.List(elts=elts) | ast.Tuple(elts=elts) | ast.Set(elts=elts):
            for n in elts:
                _check(n)
        case ast.Call(func=ast.Name(id=fname), args=args, keywords=[]) if fname in _FUNCTIONS:
            for n in args:
                _check(n)
        case ast.Call(func=ast.Attribute(value=ast.Name(id="row"), attr="get"), args=args, keywords=[]):
            if not 1 <= len(args) <= 2:
                raise ExpressionError("row.get takes a field name and an optional default")
            for n in args:
                _check(n)
        case ast.Call(func=ast.Attribute(value=value, attr=attr), args=args, keywords=[]) if attr in _STR_METHODS:
            _check(value)
            for n in args:
                _check(n)
        case ast.Call(func=ast.Name(id=fname)):
            raise ExpressionError(f"function {fname!r} is not allowed; allowed: {', '.join(sorted(_FUNCTIONS))}")
        case _:
            raise ExpressionError(
                f"{type(node).__name__} is not allowed in expressions "
                "(allowed: literals, row['field'], arithmetic, comparisons, and/or/not, if-else, "
                f"{', '.join(sorted(_FUNCTIONS))}, row.get, str methods {', '.join(sorted(_STR_METHODS))})"
            )


def _eval(node: ast.AST, row: dict[str, Any]) -> Any:
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name():
            return row
        case ast.BoolOp(op=ast.And(), values=values):
            result: Any = True
            for v in values:
                result = _eval(v, row)
                if not result:
                    return result
            return result
        case ast.BoolOp(values=values):
            result = False
            for v in values:
                result = _eval(v, row)
                if result:
                    return result
            return result
        case ast.BinOp(op=op, left=left, right=right):
            return _BINOPS[type(op)](_eval(left, row), _eval(right, row))
        case ast.UnaryOp(op=op, operand=operand):
            return _UNARY[type(op)](_eval(operand, row))
        case ast.Compare(left=left, ops=ops, comparators=comps):
            current = _eval(left, row)
            for op, comp in zip(ops, comps):
                nxt = _eval(comp, row)
                if not _CMPOPS[type(op)](current, nxt):
                    return False
                current = nxt
            return True
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return _eval(body, row) if _eval(test, row) else _eval(orelse, row)
        case ast.Subscript(value=value, slice=index):
            return _eval(value, row)[_eval(index, row)]
        case ast.Slice(lower=lower, upper=upper, step=step):
            return slice(*(None if n is None else _eval(n, row) for n in (lower, upper, step)))
        case ast.List(elts=elts) | ast.Tuple(elts=elts):
            return [_eval(n, row) for n in elts]
        case ast.Set(elts=elts):
            return {_eval(n, row) for n in elts}
        case ast.Call(func=ast.Name(id=fname), args=args):
            return _FUNCTIONS[fname](*(_eval(a, row) for a in args))
        case ast.Call(func=ast.Attribute(value=ast.Name(id="row"), attr="get"), args=args):
            return row.get(*(_eval(a, row) for a in args))
        case ast.Call(func=ast.Attribute(value=value, attr=attr), args=args):
            target = _eval(value, row)
            if not isinstance(target, str):
                raise TypeError(f".{attr}() needs a string, got {type(target).__name__}")
            return getattr(target, attr)(*(_eval(a, row) for a in args))
    raise ExpressionError(f"cannot evaluate {ast.dump(node)}")  # unreachable after _check
