"""The text branch: strip noise from product titles and descriptions, then enhance them with tags.

What counts as noise is partly *learned from the catalog*: a sentence or line that recurs in many
products' texts ("Machine wash cold", a shop's return policy) says nothing about any one product,
so fragments found in at least ``boilerplate_min_products`` products are boilerplate. A configurable
lexicon adds promotional phrases a catalog may not repeat often enough to be caught that way. Rules
cover what needs no statistics: HTML markup and entities, encoding debris, numeric spec-sheet lines
in texts that carry a spec sheet, and fragments repeated inside one text.

Every removal is recorded with its reason, so the audit trail can say what left and why.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vitrine.config import GovernanceConfig

_TAG = re.compile(r"<[^>]+>")
_MOJIBAKE = re.compile(r"Â(?=[®©™°\s])|â€™|â€œ|â€\x9d|â€“|â€”")
_REPAIR = {"â€™": "'", "â€œ": '"', "â€\x9d": '"', "â€“": " - ", "â€”": " - "}
"""UTF-8 read as Latin-1: put back the punctuation it stood for (a stray 'Â' just goes)."""
_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")
_DANGLING = re.compile(r"(?:\s+[-–|:,;/]+)+\s*$|^\s*[-–|:,;/]+\s+")
_FRAGMENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\s*\n+\s*|\s*[•|]\s*")
_SPEC = re.compile(r"^\s*([A-Za-z][\w /&()\-]{0,40}?)\s*:\s*(.+)$")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Removal:
    """One piece of text that the cleaner dropped, and the rule that dropped it."""

    text: str
    reason: str


@dataclass(frozen=True)
class CleanedText:
    before: str
    after: str
    removed: tuple[Removal, ...] = ()

    @property
    def tokens_before(self) -> int:
        return count_tokens(self.before)

    @property
    def tokens_after(self) -> int:
        return count_tokens(self.after)


@dataclass
class TextCleaner:
    """Fit on a catalog's texts (``TextCleaner.fit``), then ``clean`` any title or description."""

    boilerplate: frozenset[str] = frozenset()
    lexicon: tuple[str, ...] = ()
    spec_min_lines: int = 3
    _lexicon_pattern: re.Pattern | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        phrases = sorted((p for p in self.lexicon if p), key=len, reverse=True)
        self._lexicon_pattern = (re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in phrases) + r")(?!\w)[!.]*",
                                            re.IGNORECASE) if phrases else None)

    @classmethod
    def fit(cls, texts: Iterable[str], config: GovernanceConfig | None = None) -> "TextCleaner":
        """Learn the boilerplate of a catalog: fragments that recur across at least
        ``config.boilerplate_min_products`` distinct texts."""
        config = config or GovernanceConfig()
        seen: Counter[str] = Counter()
        for text in texts:
            seen.update({_normalise(fragment) for fragment in _fragments(_strip_markup(text)) if _words(fragment) >= 2})
        boilerplate = frozenset(f for f, n in seen.items() if f and n >= config.boilerplate_min_products)
        lexicon = tuple(phrase.strip() for phrase in config.lexicon.split(",") if phrase.strip())
        return cls(boilerplate=boilerplate, lexicon=lexicon, spec_min_lines=config.spec_min_lines)

    def clean(self, text: str, *, title: bool = False) -> CleanedText:
        """``text`` without its noise. A title is never emptied: if every word would go, it is kept."""
        removed: list[Removal] = []
        plain = _strip_markup(text)
        markup = _TAG.findall(text) + _ENTITY.findall(text)
        if markup:
            removed.append(Removal(" ".join(markup)[:200], "html"))
        debris = _MOJIBAKE.findall(html.unescape(text))
        if debris:
            removed.append(Removal(" ".join(debris), "encoding"))
        if self._lexicon_pattern is not None:
            for match in self._lexicon_pattern.findall(plain):
                removed.append(Removal(match, "promotional"))
            plain = self._lexicon_pattern.sub(" ", plain)
        fragments = _fragments(plain) if not title else [plain]
        spec_lines = sum(1 for fragment in fragments if _SPEC.match(fragment))
        kept: list[str] = []
        seen: set[str] = set()
        for fragment in fragments:
            key = _normalise(fragment)
            if not key:
                continue
            reason = self._reason(fragment, key, seen, spec_sheet=spec_lines >= self.spec_min_lines, title=title)
            if reason:
                removed.append(Removal(fragment, reason))
                continue
            seen.add(key)
            kept.append(fragment)
        after = _DANGLING.sub("", _squash(" ".join(_dedupe_words(kept, removed) if title else kept)))
        if title and not _words(after):
            return CleanedText(text, _squash(_strip_markup(text)), ())
        return CleanedText(text, after, tuple(removed))

    def _reason(self, fragment: str, key: str, seen: set[str], *, spec_sheet: bool, title: bool) -> str:
        if key in seen:
            return "repeated"
        if not title and key in self.boilerplate:
            return "boilerplate"
        spec = _SPEC.match(fragment)
        if spec_sheet and spec and _is_measure(spec.group(2)):
            return "spec"
        return ""


def enhance(text: str, tags: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """``text`` with the object classes it does not mention yet appended; returns (text, tags added)."""
    lowered = text.lower()
    added = tuple(dict.fromkeys(tag for tag in tags if tag and tag.lower() not in lowered))
    if not added:
        return text, ()
    sep = "" if not text or text.rstrip().endswith((".", "!", "?")) else "."
    return f"{text}{sep} Shows: {', '.join(added)}.".strip(), added


def count_tokens(text: str) -> int:
    return len(_WORD.findall(text or ""))


def _strip_markup(text: str) -> str:
    text = _TAG.sub(" ", text or "")
    text = html.unescape(text)
    text = _MOJIBAKE.sub(lambda m: _REPAIR.get(m.group(0), ""), text)
    return re.sub(r"[ \t\r\f\v]+", " ", text).strip()


def _fragments(text: str) -> list[str]:
    return [part.strip() for part in _FRAGMENT_SPLIT.split(text) if part and part.strip()]


def _normalise(fragment: str) -> str:
    return " ".join(_WORD.findall(fragment.lower()))


def _words(text: str) -> int:
    return len(_WORD.findall(text))


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _is_measure(value: str) -> bool:
    """Numbers with units ('13.0 " L x 12.7 " W', '80', '2 lbs'): spec-sheet filler, not product words.
    Every word is a number or a unit-sized token (at most three letters), and there is a number."""
    words = _WORD.findall(value)
    return any(w.isdigit() for w in words) and all(w.isdigit() or len(w) <= 3 for w in words)


def _dedupe_words(fragments: list[str], removed: list[Removal]) -> list[str]:
    """Collapse a word or phrase repeated back to back ("Apple Apple iPhone", "XL XL")."""
    out = []
    for fragment in fragments:
        tokens = fragment.split()
        kept: list[str] = []
        for token in tokens:
            if kept and token.lower() == kept[-1].lower():
                removed.append(Removal(token, "repeated"))
                continue
            kept.append(token)
        out.append(" ".join(kept))
    return out
