"""A small filter language over product attributes, for filtering *during* vector search.

    category == "Fruit" and price < 20
    brand in ["acme", "umbrella"] and not (stock <= 0 or discontinued == true)

Grammar (keywords in any case)::

    expr       := or
    or         := and ("or" and)*
    and        := unary ("and" unary)*
    unary      := "not" unary | "(" expr ")" | comparison
    comparison := FIELD OP VALUE | FIELD "in" "[" VALUE ("," VALUE)* "]"
    OP         := == | != | < | <= | > | >=
    VALUE      := number | "string" | 'string' | true | false

``FIELD`` names a key of ``Product.attributes`` (letters, digits, ``_``; ``id`` and ``group`` name the
product's own fields). A product lacking a field, or holding a value of another type, does not match
a comparison on it (as in SQL, where such a comparison is NULL), and ``not`` of such a comparison
matches. One parsed ``Filter`` compiles to a SQL condition over the catalog, to a Milvus boolean
expression, and to a Python predicate (tests and brute force), so the three agree by construction.

Milvus compares JSON values across types (``1 == true`` holds) and treats a missing key as NULL under
``not``, so its expressions read a document written for them (``filter_document``): each value sits
under a key naming its type (``n:price`` for a number, ``s:category`` for a string, ``b:organic`` for
a boolean; ``s@id`` and ``s@group`` for the product's own fields), and every comparison first asks
that its key ``exists``: a comparison then only ever sees values of its own type, and is false, never
NULL, when the product lacks the field.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Union

from vitrine.errors import VitrineError

OPERATORS = ("==", "!=", "<=", ">=", "<", ">")
_TOKEN = re.compile(r"""\s*(?:(?P<number>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
                    r"""|(?P<op>==|!=|<=|>=|<|>)|(?P<punct>[()\[\],])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))""")
_KEYWORDS = {"and", "or", "not", "in", "true", "false"}
_OWN_FIELDS = {"id": "id", "group": "grp"}

Value = Union[float, int, str, bool]


class FilterError(VitrineError):
    """A filter that does not parse; the message names the position."""


@dataclass(frozen=True)
class Compare:
    field: str
    op: str
    value: Value


@dataclass(frozen=True)
class In:
    field: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Not:
    inner: "Node"


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    parts: tuple["Node", ...]


Node = Union[Compare, In, Not, BoolOp]


@dataclass(frozen=True)
class Filter:
    """A parsed filter: ``Filter.parse(text)``, then ``sql()``, ``milvus()`` or ``matches(product)``."""

    text: str
    root: Node

    @classmethod
    def parse(cls, text: str) -> "Filter":
        return cls(text, _Parser(text).parse())

    def sql(self) -> tuple[str, list[Any]]:
        """A condition over the catalog's ``products`` table and its parameters."""
        params: list[Any] = []
        return _sql(self.root, params), params

    def milvus(self, field: str = "attributes") -> str:
        """A Milvus boolean expression over a JSON field holding each product's ``filter_document``."""
        return _milvus(self.root, field)

    def matches(self, product: Any) -> bool:
        return _matches(self.root, product)


# --- parsing -----------------------------------------------------------------------------------

class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._tokenize(text)
        self.at = 0

    def parse(self) -> Node:
        if not self.tokens:
            raise FilterError("empty filter")
        node = self._or()
        if self.at < len(self.tokens):
            self._fail("unexpected", self.tokens[self.at])
        return node

    def _tokenize(self, text: str) -> list[tuple[str, str, int]]:
        tokens, pos = [], 0
        while pos < len(text):
            pos += len(text[pos:]) - len(text[pos:].lstrip())
            if pos >= len(text):
                break
            match = _TOKEN.match(text, pos)
            if not match or match.end() == pos:
                raise FilterError(f"filter {text!r}: cannot read from column {pos + 1}: {text[pos:pos + 10]!r}")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind), match.start(kind)))
            pos = match.end()
        return tokens

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _word(self, word: str) -> bool:
        token = self._peek()
        if token and token[0] == "word" and token[1].lower() == word:
            self.at += 1
            return True
        return False

    def _punct(self, mark: str) -> bool:
        token = self._peek()
        if token and token[0] == "punct" and token[1] == mark:
            self.at += 1
            return True
        return False

    def _or(self) -> Node:
        parts = [self._and()]
        while self._word("or"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else BoolOp("or", tuple(parts))

    def _and(self) -> Node:
        parts = [self._unary()]
        while self._word("and"):
            parts.append(self._unary())
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def _unary(self) -> Node:
        if self._word("not"):
            return Not(self._unary())
        if self._punct("("):
            node = self._or()
            if not self._punct(")"):
                self._fail("expected ')' at", self._peek())
            return node
        return self._comparison()

    def _comparison(self) -> Node:
        token = self._peek()
        if not token or token[0] != "word" or token[1].lower() in _KEYWORDS:
            self._fail("expected a field name at", token)
        self.at += 1
        field = token[1]
        if self._word("in"):
            if not self._punct("["):
                self._fail("expected '[' after 'in' at", self._peek())
            values = [self._value()]
            while self._punct(","):
                values.append(self._value())
            if not self._punct("]"):
                self._fail("expected ']' at", self._peek())
            return In(field, tuple(values))
        op = self._peek()
        if not op or op[0] != "op":
            self._fail(f"expected an operator ({' '.join(OPERATORS)}) or 'in' after {field!r} at", op)
        self.at += 1
        return Compare(field, op[1], self._value())

    def _value(self) -> Value:
        token = self._peek()
        if token is None:
            self._fail("expected a value at", None)
        kind, text, _ = token
        self.at += 1
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "string":
            return json.loads('"' + text[1:-1].replace('\\"', '"').replace('"', '\\"') + '"')
        if kind == "word" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        self._fail("expected a number, a quoted string, true or false at", token)

    def _fail(self, what: str, token: tuple[str, str, int] | None):
        where = f"column {token[2] + 1} ({token[1]!r})" if token else "the end"
        raise FilterError(f"filter {self.text!r}: {what} {where}")


# --- compiling ---------------------------------------------------------------------------------

def _column(field: str) -> str:
    if field in _OWN_FIELDS:
        return _OWN_FIELDS[field]
    return f"json_extract(attributes, '$.\"{field}\"')"


def _sql_typed(field: str, value: Value, params: list[Any]) -> str:
    """``column`` compared only when its JSON type matches the value's (so "12" never equals 12)."""
    params.append(int(value) if isinstance(value, bool) else value)
    if field in _OWN_FIELDS:
        return _column(field)
    kind = ("'true','false'" if isinstance(value, bool) else "'integer','real'" if isinstance(value, (int, float))
            else "'text'")
    return f"(CASE WHEN json_type(attributes, '$.\"{field}\"') IN ({kind}) THEN {_column(field)} END)"


def _sql(node: Node, params: list[Any]) -> str:
    if isinstance(node, Compare):
        op = "=" if node.op == "==" else node.op
        return f"({_sql_typed(node.field, node.value, params)} {op} ?)"
    if isinstance(node, In):
        return "(" + " OR ".join(f"({_sql_typed(node.field, value, params)} = ?)" for value in node.values) + ")"
    if isinstance(node, Not):
        return f"(NOT COALESCE({_sql(node.inner, params)}, 0))"
    return "(" + f" {node.op.upper()} ".join(f"COALESCE({_sql(part, params)}, 0)" for part in node.parts) + ")"


def filter_document(product: Any) -> dict[str, Value]:
    """What ``Filter.milvus()`` expressions read for ``product``: its own fields and its attributes,
    each under a key naming the value's type. Values no filter can match (lists, objects, null) are left out."""
    own = {"id": product.id, "group": product.group}
    document = {_document_key(name, value, own=True): value for name, value in own.items() if _kind(value)}
    document.update((_document_key(name, value), value) for name, value in product.attributes.items() if _kind(value))
    return document


def _kind(value: Any) -> str:
    """``b``, ``n`` or ``s`` for the value types a filter compares; empty for any other."""
    if isinstance(value, bool):
        return "b"
    if isinstance(value, (int, float)):
        return "n" if math.isfinite(value) and abs(value) < 2**63 else ""
    return "s" if isinstance(value, str) else ""


def _document_key(name: str, value: Value, own: bool = False) -> str:
    return f"{_kind(value)}{'@' if own else ':'}{name}"


def _milvus_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def _milvus_compare(field: str, name: str, op: str, value: Value) -> str:
    key = f"{field}[{json.dumps(_document_key(name, value, own=name in _OWN_FIELDS))}]"
    return f"(exists {key} and {key} {op} {_milvus_value(value)})"


def _milvus(node: Node, field: str) -> str:
    if isinstance(node, Compare):
        return _milvus_compare(field, node.field, node.op, node.value)
    if isinstance(node, In):
        return "(" + " or ".join(_milvus_compare(field, node.field, "==", value) for value in node.values) + ")"
    if isinstance(node, Not):
        return f"(not {_milvus(node.inner, field)})"
    return "(" + f" {node.op} ".join(_milvus(part, field) for part in node.parts) + ")"


def _same_kind(a: Any, b: Value) -> bool:
    if isinstance(b, bool) or isinstance(a, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(b, (int, float)):
        return isinstance(a, (int, float))
    return isinstance(a, str)


def _lookup(product: Any, field: str) -> Any:
    if field == "id":
        return product.id
    if field == "group":
        return product.group
    return product.attributes.get(field)


def _matches(node: Node, product: Any) -> bool:
    if isinstance(node, Compare):
        held = _lookup(product, node.field)
        if held is None or not _same_kind(held, node.value):
            return False
        return {"==": held == node.value, "!=": held != node.value, "<": held < node.value,
                "<=": held <= node.value, ">": held > node.value, ">=": held >= node.value}[node.op]
    if isinstance(node, In):
        held = _lookup(product, node.field)
        return held is not None and any(_same_kind(held, v) and held == v for v in node.values)
    if isinstance(node, Not):
        return not _matches(node.inner, product)
    results = (_matches(part, product) for part in node.parts)
    return all(results) if node.op == "and" else any(results)
