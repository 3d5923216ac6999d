"""Language check: find stigmatising words about drug use and suggest person-first ones.

Every term, its suggestion and the contexts that make it harmless live in
``riskset/data/language.yaml``. This module only validates that data, turns it into spaCy
matchers and applies them, so changing what is flagged never needs a code change.

Public API: :func:`check`, :class:`LanguageIssue`, :func:`load_language_data` and the data
models :class:`LanguageData`, :class:`Term`, :class:`Matchable`, :class:`MentionRule` and
:class:`Source`.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import spacy
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from spacy.matcher import Matcher, PhraseMatcher

__all__ = [
    "LanguageData",
    "LanguageIssue",
    "Matchable",
    "MentionRule",
    "Source",
    "Term",
    "check",
    "load_language_data",
]

DATA_FILE = "language.yaml"

# spaCy refuses texts longer than nlp.max_length (1,000,000 characters) and one huge Doc costs
# a lot of memory, so long texts are read in pieces of about this size.
CHUNK_CHARS = 100_000

# spaCy's string store encodes text as UTF-8, which a lone surrogate cannot be. Swapping each one
# for U+FFFD (also one code point) keeps every character offset the same.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

_CHUNK_SEPARATORS = ("\n", ". ", " ")

TokenPattern = list[dict[str, Any]]
_TokenSpan = tuple[int, int]

_FIND = "find"
_WHEN = "when"
_HARMLESS = "harmless"


# --- data models -------------------------------------------------------------------------------


class _StrictModel(BaseModel):
    # A misspelt key in the YAML would otherwise be dropped silently and a rule lost.
    model_config = ConfigDict(extra="forbid")


class Matchable(_StrictModel):
    """Words to look for: whole phrases (any letter case) and/or spaCy Matcher token patterns."""

    phrases: list[str] = Field(default_factory=list)
    patterns: list[TokenPattern] = Field(default_factory=list)

    @field_validator("phrases")
    @classmethod
    def _phrases_have_words(cls, phrases: list[str]) -> list[str]:
        if any(not phrase.strip() for phrase in phrases):
            raise ValueError("a phrase must contain at least one word")
        return phrases

    @field_validator("patterns")
    @classmethod
    def _patterns_have_tokens(cls, patterns: list[TokenPattern]) -> list[TokenPattern]:
        if any(not pattern for pattern in patterns):
            raise ValueError("a token pattern must describe at least one token")
        return patterns

    def is_empty(self) -> bool:
        return not self.phrases and not self.patterns


class MentionRule(_StrictModel):
    """When a quoted term is talked about (a mention) rather than used."""

    quotes: list[str] = Field(min_length=1)
    cue_words: list[str] = Field(min_length=1)
    cue_window: int = Field(ge=1, le=20)
    max_quoted_tokens: int = Field(ge=0, le=20)


class Source(_StrictModel):
    """Where the advice about a term comes from."""

    citation: str = Field(min_length=1)
    url: str | None = Field(default=None, pattern=r"^https://\S+$")


class Term(_StrictModel):
    """One stigmatising term: how to find it, when it is harmless, and what to say instead."""

    id: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    find: Matchable
    flag_only_when: Matchable | None = None
    harmless_when: Matchable = Field(default_factory=Matchable)
    suggestion: str = Field(min_length=1)
    why: str = Field(min_length=1)
    sources: list[str] = Field(min_length=1)

    @field_validator("find")
    @classmethod
    def _find_is_not_empty(cls, find: Matchable) -> Matchable:
        if find.is_empty():
            raise ValueError("a term needs at least one phrase or pattern to find")
        return find

    @field_validator("flag_only_when")
    @classmethod
    def _context_is_not_empty(cls, context: Matchable | None) -> Matchable | None:
        if context is not None and context.is_empty():
            raise ValueError("flag_only_when, when given, needs at least one phrase or pattern")
        return context

    @field_validator("why")
    @classmethod
    def _why_is_one_sentence(cls, why: str) -> str:
        why = why.strip()
        if not why.endswith(".") or re.search(r"[.!?]\s+[A-Z]", why):
            raise ValueError("why must be one sentence ending with a full stop")
        return why


class LanguageData(_StrictModel):
    """The whole of ``language.yaml``."""

    version: Literal[1]
    mentions: MentionRule | None = None
    word_lists: dict[str, list[str]] = Field(default_factory=dict)
    shared_tokens: dict[str, dict[str, Any]] = Field(default_factory=dict)
    sources: dict[str, Source]
    terms: list[Term] = Field(min_length=1)

    @model_validator(mode="after")
    def _ids_are_unique(self) -> LanguageData:
        ids = [term.id for term in self.terms]
        duplicates = sorted({term_id for term_id in ids if ids.count(term_id) > 1})
        if duplicates:
            raise ValueError(f"duplicate term ids: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _sources_are_known(self) -> LanguageData:
        for term in self.terms:
            unknown = [key for key in term.sources if key not in self.sources]
            if unknown:
                raise ValueError(f"term {term.id!r} cites unknown sources: {', '.join(unknown)}")
        return self


class LanguageIssue(BaseModel):
    """A stigmatising term found in a text; ``text == original[start:end]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    suggestion: str
    why: str


@functools.cache
def load_language_data() -> LanguageData:
    """Read and validate ``riskset/data/language.yaml`` (once per process)."""
    raw = resources.files("riskset").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    return LanguageData.model_validate(yaml.safe_load(raw))


# --- matching engine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mentions:
    quotes: frozenset[str]
    cue_words: frozenset[str]
    cue_window: int
    max_quoted_tokens: int


@dataclass(frozen=True)
class _Engine:
    nlp: Any
    matcher: Any
    phrase_matcher: Any
    labels: dict[int, tuple[int, str]]  # spaCy match id -> (term index, role)
    terms: tuple[Term, ...]
    mentions: _Mentions | None


@dataclass(frozen=True)
class _Candidate:
    start: int  # token index
    end: int  # token index, exclusive
    term_index: int

    @property
    def tokens(self) -> range:
        return range(self.start, self.end)


@functools.cache
def _tokenizer() -> Any:
    # Only the tokenizer is needed: every rule is written in words, not in parts of speech.
    return spacy.blank("en")


def _roles(term: Term) -> Iterator[tuple[str, Matchable]]:
    yield _FIND, term.find
    if term.flag_only_when is not None:
        yield _WHEN, term.flag_only_when
    if not term.harmless_when.is_empty():
        yield _HARMLESS, term.harmless_when


@functools.cache
def _engine() -> _Engine:
    data = load_language_data()
    nlp = _tokenizer()
    # validate=True turns a malformed pattern in the YAML into an error at load time.
    matcher: Any = Matcher(nlp.vocab, validate=True)
    phrase_matcher: Any = PhraseMatcher(nlp.vocab, attr="LOWER")
    labels: dict[int, tuple[int, str]] = {}
    for index, term in enumerate(data.terms):
        for role, matchable in _roles(term):
            key = f"{term.id}:{role}"
            labels[int(nlp.vocab.strings.add(key))] = (index, role)
            if matchable.patterns:
                matcher.add(key, matchable.patterns)
            if matchable.phrases:
                phrase_matcher.add(key, [nlp.make_doc(phrase) for phrase in matchable.phrases])
    return _Engine(
        nlp=nlp,
        matcher=matcher,
        phrase_matcher=phrase_matcher,
        labels=labels,
        terms=tuple(data.terms),
        mentions=_mentions(data.mentions),
    )


def _mentions(rule: MentionRule | None) -> _Mentions | None:
    if rule is None:
        return None
    return _Mentions(
        quotes=frozenset(rule.quotes),
        cue_words=frozenset(word.lower() for word in rule.cue_words),
        cue_window=rule.cue_window,
        max_quoted_tokens=rule.max_quoted_tokens,
    )


def _matches_by_label(engine: _Engine, doc: Any) -> dict[tuple[int, str], list[_TokenSpan]]:
    found: dict[tuple[int, str], list[_TokenSpan]] = defaultdict(list)
    for match_id, start, end in [*engine.matcher(doc), *engine.phrase_matcher(doc)]:
        found[engine.labels[int(match_id)]].append((int(start), int(end)))
    return found


def _covered_tokens(spans: Iterable[_TokenSpan]) -> set[int]:
    # A set of token positions makes each overlap test linear, even in a huge text.
    return {token for start, end in spans for token in range(start, end)}


# A cue word on the far side of one of these belongs to another sentence or line.
_SENTENCE_ENDS = frozenset({".", "!", "?", ";"})


def _ends_sentence(token: Any) -> bool:
    return token.text in _SENTENCE_ENDS or (bool(token.is_space) and "\n" in token.text)


def _quote_before(doc: Any, start: int, mentions: _Mentions) -> int | None:
    """Index of the quote that opens a quotation holding the term at ``start``, if any."""
    for position in range(start - 1, max(start - 1 - mentions.max_quoted_tokens, -1), -1):
        token = doc[position]
        if token.text in mentions.quotes:
            return position
        if _ends_sentence(token):
            return None
    return None


def _quote_after(doc: Any, end: int, mentions: _Mentions) -> int | None:
    """Index of the quote that closes a quotation holding the term ending at ``end``, if any."""
    for position in range(end, min(end + mentions.max_quoted_tokens + 1, len(doc))):
        token = doc[position]
        if token.text in mentions.quotes:
            return position
        # A full stop may sit inside the quotation: “addict.”
        next_is_quote = position + 1 < len(doc) and doc[position + 1].text in mentions.quotes
        if _ends_sentence(token) and not next_is_quote:
            return None
    return None


def _has_cue(doc: Any, positions: Iterable[int], mentions: _Mentions) -> bool:
    for position in positions:
        token = doc[position]
        if _ends_sentence(token):
            return False
        if token.lower_ in mentions.cue_words:
            return True
    return False


def _is_quoted_mention(doc: Any, start: int, end: int, mentions: _Mentions | None) -> bool:
    """True for words talked about rather than used: avoid the word "junkie"."""
    if mentions is None:
        return False
    opening = _quote_before(doc, start, mentions)
    closing = None if opening is None else _quote_after(doc, end, mentions)
    if opening is None or closing is None:
        return False
    before = range(opening - 1, max(opening - 1 - mentions.cue_window, -1), -1)
    after = range(closing + 1, min(closing + 1 + mentions.cue_window, len(doc)))
    return _has_cue(doc, before, mentions) or _has_cue(doc, after, mentions)


def _reportable(
    engine: _Engine,
    doc: Any,
    index: int,
    finds: list[_TokenSpan],
    found: dict[tuple[int, str], list[_TokenSpan]],
) -> Iterator[_Candidate]:
    term = engine.terms[index]
    harmless = _covered_tokens(found.get((index, _HARMLESS), []))
    context = _covered_tokens(found.get((index, _WHEN), []))
    for start, end in finds:
        candidate = _Candidate(start, end, index)
        if not harmless.isdisjoint(candidate.tokens):
            continue
        if term.flag_only_when is not None and context.isdisjoint(candidate.tokens):
            continue
        if _is_quoted_mention(doc, start, end, engine.mentions):
            continue
        yield candidate


def _candidates(engine: _Engine, doc: Any) -> Iterator[_Candidate]:
    found = _matches_by_label(engine, doc)
    for index in range(len(engine.terms)):
        finds = found.get((index, _FIND))
        if finds:
            yield from _reportable(engine, doc, index, finds, found)


def _without_overlaps(candidates: Iterable[_Candidate]) -> list[_Candidate]:
    # Longest first, so "former addict" wins over "addict"; then earliest; then data order.
    chosen: list[_Candidate] = []
    taken: set[int] = set()
    for candidate in sorted(candidates, key=lambda c: (c.start - c.end, c.start, c.term_index)):
        if taken.isdisjoint(candidate.tokens):
            chosen.append(candidate)
            taken.update(candidate.tokens)
    return sorted(chosen, key=lambda c: c.start)


def _chunk_end(text: str, start: int, size: int) -> int:
    limit = start + size
    if limit >= len(text):
        return len(text)
    # Cut in the second half at a line break, else a sentence end, else a space, so that a
    # term and the context around it are not split between two pieces.
    floor = start + size // 2
    for separator in _CHUNK_SEPARATORS:
        cut = text.rfind(separator, floor, limit)
        if cut != -1:
            return cut + len(separator)
    return limit


def _chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[tuple[int, str]]:
    start = 0
    while start < len(text):
        end = _chunk_end(text, start, size)
        yield start, text[start:end]
        start = end


def _issues_in_chunk(
    engine: _Engine, original: str, chunk: str, offset: int
) -> Iterator[LanguageIssue]:
    doc = engine.nlp.make_doc(chunk)
    for candidate in _without_overlaps(_candidates(engine, doc)):
        span = doc[candidate.start : candidate.end]
        start = offset + int(span.start_char)
        end = offset + int(span.end_char)
        term = engine.terms[candidate.term_index]
        yield LanguageIssue(
            text=original[start:end],
            start=start,
            end=end,
            suggestion=term.suggestion,
            why=term.why,
        )


def check(text: str) -> list[LanguageIssue]:
    """Find stigmatising terms in ``text``, in order, with exact character offsets."""
    if not text:
        return []
    engine = _engine()
    tokenizable = _LONE_SURROGATE.sub("\ufffd", text)
    return [
        issue
        for offset, chunk in _chunks(tokenizable)
        for issue in _issues_in_chunk(engine, text, chunk, offset)
    ]
