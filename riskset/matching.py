"""The rule pattern language and a matcher for it, over a spaCy Doc's normalised words.

A pattern is words separated by spaces, each compared with a token's normalised form:

    word        this word                        a|b|c       one word of these
    (a b|c)     one phrase of these              x?  (...)?  may be left out
    pre*        a word starting with pre         *           any one word
    ..N         up to N words, not past a clause end (. ! ? ; :)
    #           a number                         =Word       exactly this, case and all
    Title       a capitalised word               /regex/     a word matching the regex
    \\?          a question mark

Why not spaCy's Matcher: riskset's rule files hold hundreds of patterns that start with a word
list, and the Matcher tests every one of them at every token (tens of narratives a second).
Here plain phrases live in a trie and the other patterns are indexed by their possible first
words, so a token only wakes the few patterns that can start there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

NEGATIONS = frozenset({"not", "no", "never", "nobody", "nothing", "none", "without"})
KEYS = "\0keys"  # where a trie node keeps the keys of the phrases that end there
CLAUSE_ENDS = frozenset({".", "!", "?", ";", ":", "(", ")", "...", "…"})
MAX_PHRASES = 50_000


class PatternError(ValueError):
    """A pattern in a rule file that cannot be read."""


@dataclass(frozen=True)
class Tokens:
    """What the matcher needs of a document: one entry per token."""

    norms: Sequence[str]
    texts: Sequence[str]
    like_num: Sequence[bool]
    is_title: Sequence[bool]

    def __len__(self) -> int:
        return len(self.norms)

    def ends_clause(self, i: int) -> bool:
        return self.norms[i] in CLAUSE_ENDS or "\n" in self.texts[i]

    def can_skip(self, i: int) -> bool:
        """A gap (..N) passes over this word: not a clause end, and not a negation, which
        must stay visible to the reader ("won't do anything tonight")."""
        return not self.ends_clause(i) and self.norms[i] not in NEGATIONS


Test = Callable[[Tokens, int], bool]


@dataclass(frozen=True)
class Starts:
    """What the first token of a match can be: lets a token wake only the patterns it can start."""

    words: frozenset[str] = frozenset()
    exact: frozenset[str] = frozenset()
    number: bool = False
    title: bool = False
    anything: bool = False

    def __or__(self, other: Starts) -> Starts:
        return Starts(
            self.words | other.words,
            self.exact | other.exact,
            self.number or other.number,
            self.title or other.title,
            self.anything or other.anything,
        )


@dataclass(frozen=True)
class Slot:
    """One position of a pattern: alternatives (each a sequence of tests), or a gap."""

    choices: tuple[tuple[Test, ...], ...] = ()
    optional: bool = False
    gap: int = 0  # >0: up to this many words
    starts: Starts = Starts(anything=True)


def _split_outside_parens(text: str, is_sep: Callable[[str], bool]) -> list[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and is_sep(ch):
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise PatternError(f"unbalanced parentheses in {text!r}")
    parts.append(current)
    return [p for p in parts if p]


def split_top(text: str, sep: str = "|") -> list[str]:
    """Split on sep outside parentheses."""
    return _split_outside_parens(text, lambda ch: ch == sep)


def slots_of(pattern: str) -> list[str]:
    """A pattern's slots: its words, a parenthesised group counting as one."""
    if not pattern.strip():
        raise PatternError("empty pattern")
    return _split_outside_parens(pattern, str.isspace)


def split_clitic(word: str) -> list[str]:
    # The tokenizer reads "friend's" as "friend" + "'s"; so must the patterns.
    if len(word) > 2 and word.count("'") == 1 and word[0].isalnum():
        if word.endswith("'s"):
            return [word[:-2], "'s"]
        if word.endswith("s'"):
            return [word[:-1], "'"]
    return [word]


def is_plain(word: str) -> bool:
    special = word.startswith(("=", "#", "..", "\\", "/")) or word in ("*", "Title")
    return not (special or word.endswith("*"))


def phrases_of(pattern: str, norm: Callable[[str], str]) -> list[tuple[str, ...]] | None:
    """The word sequences a pattern stands for, if it is only words, choices and optionals."""
    variants: list[tuple[str, ...]] = [()]
    for slot in slots_of(pattern):
        optional = slot.endswith("?") and slot != "\\?"
        body = slot[:-1] if optional else slot
        choices: list[tuple[str, ...]] = []
        for alt in split_top(body):
            inner = alt[1:-1] if alt.startswith("(") and alt.endswith(")") else alt
            for phrase in split_top(inner):
                words = [w for word in phrase.split() for w in split_clitic(word)]
                if not all(is_plain(w) for w in words):
                    return None
                choices.append(tuple(norm(w) for w in words))
        if optional:
            choices.append(())
        variants = [v + c for v in variants for c in choices]
        if len(variants) > MAX_PHRASES:
            return None
    return [v for v in variants if v]


def _test(word: str, norm: Callable[[str], str]) -> tuple[Test, Starts]:
    """A token test, and what tokens it can accept (for indexing)."""
    if word == "\\?":
        return (lambda t, i: t.texts[i] == "?"), Starts(words=frozenset({"?"}))
    if word == "*":
        return (lambda t, i: not t.ends_clause(i)), Starts(anything=True)
    if word == "Title":
        return (lambda t, i: t.is_title[i]), Starts(title=True)
    if word == "#":
        return (lambda t, i: t.like_num[i]), Starts(number=True)
    if word.startswith("=") and len(word) > 1:
        exact = word[1:]
        return (lambda t, i: t.texts[i] == exact), Starts(exact=frozenset({exact}))
    if len(word) > 2 and word.startswith("/") and word.endswith("/"):
        rx = re.compile(word[1:-1])
        return (lambda t, i: rx.search(t.norms[i]) is not None), Starts(anything=True)
    if word.endswith("*") and len(word) > 1:
        prefix = norm(word[:-1])
        return (lambda t, i: t.norms[i].startswith(prefix)), Starts(anything=True)
    words = frozenset(norm(w) for w in word.split("|"))
    return (lambda t, i: t.norms[i] in words), Starts(words=words)


def compile_slot(slot: str, norm: Callable[[str], str]) -> Slot:
    optional = slot.endswith("?") and slot != "\\?"
    body = slot[:-1] if optional else slot
    if body.startswith("..") and body[2:].isdigit():
        return Slot(gap=int(body[2:]), optional=True)
    plain: list[str] = []
    choices: list[tuple[Test, ...]] = []
    starts = Starts()
    for alt in split_top(body):
        inner = alt[1:-1] if alt.startswith("(") and alt.endswith(")") else alt
        for phrase in split_top(inner):
            words = [w for word in phrase.split() for w in split_clitic(word)]
            if len(words) == 1 and is_plain(words[0]):
                plain.append(words[0])
                continue
            tests = [_test(w, norm) for w in words]
            choices.append(tuple(t for t, _ in tests))
            starts |= tests[0][1]
    if plain:
        test, first = _test("|".join(plain), norm)
        choices.insert(0, (test,))
        starts |= first
    return Slot(choices=tuple(choices), optional=optional, starts=starts)


@dataclass
class _Compiled:
    key: str
    slots: tuple[Slot, ...]
    # When the first slot is one word and the second a plain word list, the word after a
    # start must be in this set: a cheap test that turns most candidates away.
    second: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if len(self.slots) < 2:
            return
        first, second = self.slots[0], self.slots[1]
        single = not first.optional and not first.gap and all(len(c) == 1 for c in first.choices)
        plain = second.starts
        if (
            single
            and not second.optional
            and not second.gap
            and not (plain.anything or plain.number or plain.title or plain.exact)
            and all(len(c) == 1 for c in second.choices)
        ):
            self.second = plain.words

    def longest(self, t: Tokens, start: int) -> int:
        """The end of the longest match starting at start, or -1."""
        frontier = {start}
        n = len(t)
        for slot in self.slots:
            reached: set[int] = set(frontier) if slot.optional else set()
            if slot.gap:
                for pos in frontier:
                    stop = pos
                    while stop < n and stop - pos < slot.gap and t.can_skip(stop):
                        stop += 1
                        reached.add(stop)
            else:
                for pos in frontier:
                    for tests in slot.choices:
                        end = pos
                        for test in tests:
                            if end >= n or not test(t, end):
                                break
                            end += 1
                        else:
                            reached.add(end)
            if not reached:
                return -1
            frontier = reached
        return max(frontier)


@dataclass
class RuleSet:
    """Patterns under keys. Calling it returns every (key, start, end) match, longest per start."""

    norm: Callable[[str], str]
    _trie: dict[str, Any] = field(default_factory=dict)
    _by_first: dict[str, list[_Compiled]] = field(default_factory=dict)
    _by_exact: dict[str, list[_Compiled]] = field(default_factory=dict)
    _on_number: list[_Compiled] = field(default_factory=list)
    _on_title: list[_Compiled] = field(default_factory=list)
    _anywhere: list[_Compiled] = field(default_factory=list)

    def add(self, key: str, patterns: Iterable[str]) -> None:
        for pattern in patterns:
            phrases = phrases_of(pattern, self.norm)
            if phrases is not None:
                for phrase in phrases:
                    self._insert(phrase, key)
                continue
            compiled = _Compiled(key, tuple(compile_slot(s, self.norm) for s in slots_of(pattern)))
            starts = self._starts(compiled.slots)
            if starts.anything:
                self._anywhere.append(compiled)
                continue
            for word in starts.words:
                self._by_first.setdefault(word, []).append(compiled)
            for text in starts.exact:
                self._by_exact.setdefault(text, []).append(compiled)
            if starts.number:
                self._on_number.append(compiled)
            if starts.title:
                self._on_title.append(compiled)

    def _insert(self, phrase: tuple[str, ...], key: str) -> None:
        node = self._trie
        for word in phrase:
            node = node.setdefault(word, {})
        keys: set[str] = node.setdefault(KEYS, set())
        keys.add(key)

    @staticmethod
    def _starts(slots: tuple[Slot, ...]) -> Starts:
        """What a match's first token can be (an optional slot lets the next one start)."""
        starts = Starts()
        for slot in slots:
            if slot.gap:
                return Starts(anything=True)
            starts |= slot.starts
            if not slot.optional:
                return starts
        return Starts(anything=True)

    def __call__(self, t: Tokens) -> list[tuple[str, int, int]]:
        found: dict[tuple[str, int], int] = {}
        by_first, by_exact = self._by_first, self._by_exact
        for start, norm in enumerate(t.norms):
            if norm in self._trie:
                self._walk_trie(t, start, found)
            candidates: list[_Compiled] = []
            if norm in by_first:
                candidates += by_first[norm]
            if t.texts[start] in by_exact:
                candidates += by_exact[t.texts[start]]
            if t.like_num[start]:
                candidates += self._on_number
            if t.is_title[start]:
                candidates += self._on_title
            following = t.norms[start + 1] if start + 1 < len(t) else None
            for compiled in (*candidates, *self._anywhere):
                if compiled.second is not None and following not in compiled.second:
                    continue
                end = compiled.longest(t, start)
                if end > start:
                    key = (compiled.key, start)
                    found[key] = max(found.get(key, 0), end)
        return [(key, start, end) for (key, start), end in found.items()]

    def _walk_trie(self, t: Tokens, start: int, found: dict[tuple[str, int], int]) -> None:
        node: dict[str, Any] | None = self._trie
        i = start
        while i < len(t) and node is not None:
            node = node.get(t.norms[i])
            if node is None:
                return
            i += 1
            for key in node.get(KEYS, ()):
                found[(key, start)] = max(found.get((key, start), 0), i)
