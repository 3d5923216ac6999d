"""Reading: narrative text to findings, with a spaCy pipeline built from the rules in reader.yaml.

The pipeline is a blank English tokenizer and four components registered as spaCy factories:

- ``riskset_normalizer`` sets each token's NORM: lower case, accents folded, stretched letters
  ("sooo") shrunk, and the spelling table applied, so rules match how people really type;
- ``riskset_targets`` finds every mention a rule describes (substance aliases, routes, factors)
  and every context cue, in one pass over the words;
- ``riskset_context`` gives each mention its status, ConText-style: negated, historical,
  hypothetical or about someone else, by the cues whose scope ends where the clause does;
- ``riskset_findings`` turns mentions into findings: one per code and status, plus the findings
  that follow from others (a camp means unhoused; a break and a return means tolerance loss).

``load()`` assembles it once; ``read(text)`` returns findings with exact character offsets.
"""

from __future__ import annotations

import gc
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, lru_cache
from itertools import compress, islice
from operator import itemgetter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .knowledge import Condition, KnowledgeBase, KnowledgeError, load_yaml
from .knowledge import load as load_knowledge
from .matching import RuleSet, Tokens, retokenise, token_kind
from .models import Finding, Status
from .snapshot import cached

Category = Literal["negated", "historical", "hypothetical", "other"]
STATUS_OF: dict[str, Status] = {
    "negated": Status.absent,
    "historical": Status.historical,
    "hypothetical": Status.hypothetical,
}
# When several triggers reach one mention, the strongest decides.
PRECEDENCE: tuple[Category, ...] = ("other", "negated", "historical", "hypothetical")
FACT_PREFIX = {
    Status.present: "",
    Status.absent: "not:",
    Status.historical: "past:",
    Status.hypothetical: "maybe:",
}


# ---------------------------------------------------------------------------------------------
# The rules, as data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    code: str
    patterns: list[str]
    immune: list[Category] = Field(
        default_factory=list,
        description="context categories that do not change this rule's mentions",
    )
    weak: bool = Field(
        False,
        description="a hint, not a statement: it gives way when the text denies the finding"
        " elsewhere (a visit to the syringe program, but 'would never inject')",
    )
    yields_to: list[str] = Field(
        default_factory=list,
        description="codes that, plainly present, make this hint give way too (a syringe"
        " program visit, but 'smokes crack, wanted stems')",
    )


class Blocker(_Strict):
    """Words that look like a mention but are not one ("sleeping bag", "clean needles")."""

    patterns: list[str]
    blocks: list[str]
    unless: list[str] = Field(
        default_factory=list,
        description="longer phrases in which the blocker's words keep their meaning",
    )


class Trigger(_Strict):
    category: Category
    direction: Literal["forward", "backward", "both"]
    window: int = Field(ge=1, le=40)
    patterns: list[str]
    stop_at: list[str] = Field(
        default_factory=list, description="words that begin another clause for this trigger"
    )
    from_words: list[str] = Field(
        default_factory=list, description="a backward scope starts at the last of these words"
    )
    comma_ends: bool = Field(
        False, description="a comma ends the scope unless a list goes on (heroin, meth, ...)"
    )
    only: list[str] = Field(
        default_factory=list, description="the codes this trigger can reach (empty: every code)"
    )
    reach: Literal["clause", "sentence"] = Field(
        "clause",
        description="how far a scope may run: to the clause's end, or on through the sentence"
        " ('before prison he smoked crack and sometimes used heroin')",
    )


class Derivation(_Strict):
    code: str
    when: Condition
    evidence_from: list[str] = Field(
        default_factory=list, description="codes whose words show this finding, in order of choice"
    )


class Suppression(_Strict):
    """A mention of `code` removes overlapping mentions of `suppresses` ("no narcan" is not
    also "has narcan")."""

    code: str
    suppresses: list[str]


class ContextRules(_Strict):
    terminators: list[str]
    terminators_unless_before: dict[str, list[str]] = Field(
        default_factory=dict,
        description="a terminator that ends nothing before these words ('only at raves')",
    )
    persons: dict[str, list[str]] = Field(
        default_factory=dict, description="pronouns by the person they point at"
    )
    subjects: list[str] = Field(default_factory=list, description="pronouns that start a clause")
    speaker: str = Field(
        "",
        description="the person (a key of persons) a quote's speaker calls themselves: inside"
        " quote marks it names whoever speaks, not the writer",
    )
    clause_starters: list[str]
    same_subject_after_and: list[str] = Field(
        default_factory=list,
        description="verbs that, after 'and', go on with the subject before it: someone else's"
        " scope runs on through them",
    )
    triggers: list[Trigger]
    pseudo: list[str] = Field(
        default_factory=list, description="phrases that contain a trigger word but are not one"
    )
    immune: dict[str, list[Category]] = Field(default_factory=dict)


class ReaderRules(_Strict):
    abbreviations: list[str] = Field(
        default_factory=list,
        description="words whose full stop is part of them ('incl.'): kept as one token, so"
        " 'denies drugs incl. opioids' is one sentence",
    )
    spelling: dict[str, str]
    spelling_as_written: dict[str, str] = Field(
        default_factory=dict,
        description="respellings that depend on case: 'ODd' is overdosed, 'odd' is odd",
    )
    internal_codes: list[str]
    rules: list[Rule]
    blockers: list[Blocker]
    suppressions: list[Suppression] = Field(default_factory=list)
    context: ContextRules
    derivations: list[Derivation]


@cache
def reader_rules() -> ReaderRules:
    data = {k: v for k, v in load_yaml("reader.yaml").items() if k != "version"}
    try:
        return ReaderRules.model_validate(data)
    except ValidationError as err:
        raise KnowledgeError(f"reader.yaml: {err}") from err


def check_codes(rules: ReaderRules, kb: KnowledgeBase) -> None:
    """Every code the reader's rules name must be a finding riskset knows (or one of the
    reader's own internal codes): a misspelt code would be found and never shown, or never
    found at all."""
    known = {*kb.codes, *(s.code for s in kb.substances.values()), *rules.internal_codes}
    named = [(f"rule {r.code}", [r.code, *r.yields_to]) for r in rules.rules]
    named += [(f"blocker {b.patterns[0]!r}", b.blocks) for b in rules.blockers]
    named += [(f"suppression {s.code}", [s.code, *s.suppresses]) for s in rules.suppressions]
    named += [(f"trigger {t.patterns[0]!r}", t.only) for t in rules.context.triggers]
    named += [(f"derivation {d.code}", [d.code, *d.evidence_from]) for d in rules.derivations]
    unknown = [f"{where}: {code}" for where, codes in named for code in codes if code not in known]
    if unknown:
        raise KnowledgeError("reader.yaml names unknown codes: " + "; ".join(unknown))


# ---------------------------------------------------------------------------------------------
# Normalising what people type

_STRETCH = re.compile(r"(\w)\1{2,}")
QUOTE_MARKS = frozenset({"'", '"', "`", "''", "``", "\u201c", "\u201d", "\u00ab", "\u00bb"})
# An emoji that no rule names ends a sentence, as it does in a text
# message ("cant even stand 🤮🤮 sleepin in the truck").
EMOJI_WORD = "\u2026"


def fold(word: str) -> str:
    """Lower case, accents and curly quotes folded: what a rule's word is compared with.

    Invisible format characters go too: text pasted from a word processor or a phone carries
    byte-order marks, zero-width spaces and soft hyphens inside words ("her\u00adoin").
    """
    word = word.lower().replace("\u2019", "'").replace("\u2018", "'")
    decomposed = unicodedata.normalize("NFKD", word)
    return "".join(
        c for c in decomposed if not unicodedata.combining(c) and unicodedata.category(c) != "Cf"
    )


@lru_cache(maxsize=200_000)
def normalise_word(word: str, known: frozenset[str] = frozenset()) -> str:
    word = fold(word)
    if word[-1:] == "." and word in _abbreviations():
        word = word[:-1]  # "incl." is "incl" to the rules; the stop only kept it one token
    if _STRETCH.search(word):
        # "sooo high", "hiiigh", "sleeeep": prefer whichever shrink the rules know.
        double = _STRETCH.sub(r"\1\1", word)
        single = _STRETCH.sub(r"\1", word)
        word = single if single in known and double not in known else double
    return reader_rules().spelling.get(word, word)


@cache
def _abbreviations() -> frozenset[str]:
    return frozenset(fold(word) for word in reader_rules().abbreviations)


def _is_emoji(word: str) -> bool:
    # (Skin tones are modifier symbols, and U+FE0F asks for emoji presentation.)
    return any(unicodedata.category(c) == "So" for c in word) and all(
        unicodedata.category(c) in ("So", "Sk", "Mn") for c in word
    )


# ---------------------------------------------------------------------------------------------
# The pipeline components

try:  # spaCy is imported lazily by load(); the factories are registered on first use.
    import numpy as np
    from spacy.attrs import IDX, NORM, ORTH, SPACY
    from spacy.language import Language
    from spacy.tokenizer import Tokenizer
    from spacy.tokens import Doc
except ImportError as err:  # pragma: no cover - spaCy is a hard dependency
    raise ImportError("riskset needs spaCy: pip install riskset") from err


@dataclass(slots=True)
class Mention:
    code: str
    start: int  # token offsets
    end: int
    status: Status = Status.present
    cue: str | None = None
    other: bool = False
    derived: bool = False
    immune: frozenset[str] = frozenset()
    weak: bool = False
    yields_to: frozenset[str] = frozenset()


@dataclass
class Reading:
    findings: list[Finding] = field(default_factory=list)
    signs: list[Finding] = field(default_factory=list)
    about_others: list[Finding] = field(default_factory=list)


@dataclass(slots=True)
class Progress:
    """What the pipeline has made of one document so far, each component adding its part."""

    tokens: Tokens
    cues: list[tuple[str, int, int]] = field(default_factory=list)
    mentions: list[Mention] = field(default_factory=list)
    reading: Reading | None = None


# The components pass a document's Progress along in doc.user_data, a plain dict: a spaCy
# extension attribute costs a microsecond or two on each use, and a reading used a dozen.
# The extensions stay, for anyone looking at a Doc, as views of the same thing.
PROGRESS = "riskset"


def progress(doc: Doc) -> Progress:
    return doc.user_data[PROGRESS]  # type: ignore[no-any-return]


def _view(part: str) -> Callable[[Doc], object]:
    return lambda doc: getattr(doc.user_data.get(PROGRESS), part, None)


if not Doc.has_extension("riskset_reading"):
    for _part in ("tokens", "cues", "mentions", "reading"):
        Doc.set_extension(f"riskset_{_part}", getter=_view(_part))


class Component:
    """A pipeline step. When spaCy streams texts (``nlp.pipe``), a batch of documents goes
    through one step before the next: each step's rules then stay in the processor's cache for
    the whole batch, where four steps taking turns on every narrative would keep evicting one
    another's (about a tenth of the reading time)."""

    def __call__(self, doc: Doc) -> Doc:
        raise NotImplementedError

    def pipe(self, docs: Iterable[Doc], batch_size: int = 256) -> Iterator[Doc]:
        docs = iter(docs)
        while batch := list(islice(docs, batch_size)):
            with _collection_paused():
                done = [self(doc) for doc in batch]
            yield from done


@contextmanager
def _collection_paused() -> Iterator[None]:
    """No cyclic garbage collection for a moment. Reading makes no reference cycles, so the
    collector frees nothing here, yet every few hundred objects made it would walk everything
    the caller keeps alive (a batch's earlier results): a tenth of the time or more."""
    was_collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_collecting:
            gc.enable()


@Language.factory("riskset_normalizer")
def make_normalizer(nlp: Language, name: str) -> Normalizer:
    return cached("normalizer", Normalizer)


_TOKEN_ATTRS = [ORTH, NORM, IDX, SPACY]
_PAIR = np.dtype((np.void, 16))  # a token's ORTH and NORM ids (two uint64) as one key
# A distinct word as the rules see it: norm, text, like_num, is_title, stop, skippable, and
# whether it may end a clause.
_Entry = tuple[str, str, bool, bool, bool, bool, bool]
_NORM_OF = itemgetter(0)


class Normalizer(Component):
    def __init__(self) -> None:
        rules = reader_rules()
        words: set[str] = set()
        for rule in rules.rules:
            for pattern in rule.patterns:
                words.update(fold(w) for w in re.split(r"[\s|]+", pattern))
        self.known = frozenset(words)
        self.terminators = terminators(rules.context)
        self._cache: dict[bytes, _Entry] = {}

    def __call__(self, doc: Doc) -> Doc:
        # Token objects are the pipeline's main cost in Python, so read the tokens as arrays of
        # string ids; a word and spaCy's norm for it (which depends on context: "n't" -> "not")
        # decide everything the rules see, so they key the cache.
        cache_ = self._cache
        columns = doc.to_array(_TOKEN_ATTRS)
        if not len(columns):
            doc.user_data[PROGRESS] = Progress(Tokens([], [], [], []))
            return doc
        # Each token's (word, norm) pair as one 16-byte key, made in C rather than a tuple a token.
        pairs = np.ascontiguousarray(columns[:, :2]).view(_PAIR).ravel()
        keys: list[bytes] = pairs.tolist()  # type: ignore[assignment]  # void items are bytes
        found = [cache_.get(key) for key in keys]
        entries: list[_Entry] = found  # type: ignore[assignment]  # no None left, as checked
        if None in found:
            entries = []
            for i, entry in enumerate(found):
                if entry is None:  # a word not seen before: worked out once, then cached
                    entry = self._entry(doc, int(columns[i, 0]), int(columns[i, 1]))
                    if len(cache_) < 100_000:
                        cache_[keys[i]] = entry
                entries.append(entry)
        offsets, spaces = columns[:, 2].tolist(), columns[:, 3].tolist()
        quoted: list[bool] = []
        if not QUOTE_MARKS.isdisjoint(map(_NORM_OF, entries)):
            # Quote marks say nothing to the rules and would come between words they match
            # ("fent + 'bars' daily"), so they are left out; spans are then cut from the text.
            # What they held is remembered: a quoted "I" is the person quoted, not the writer.
            inside = _inside_quotes([entry[0] for entry in entries])
            kept = [i for i, entry in enumerate(entries) if entry[0] not in QUOTE_MARKS]
            entries = [entries[i] for i in kept]
            offsets = [offsets[i] for i in kept]
            spaces = [spaces[i] for i in kept]
            quoted = [inside[i] for i in kept]
            if not entries:
                doc.user_data[PROGRESS] = Progress(Tokens([], [], [], []))
                return doc
        norms, texts, like_num, is_title, stops, skippable, boundaries = zip(*entries, strict=True)
        # Spans are cut from the text only where quote marks were left out (doc.text is built
        # afresh on each call, and most texts hold none).
        text = doc.text if len(offsets) < len(columns) else ""
        doc.user_data[PROGRESS] = Progress(
            Tokens(
                norms,
                texts,
                like_num,
                is_title,
                offsets,
                spaces,
                stops,
                skippable,
                text,
                quoted,
                boundaries,
            )
        )
        return doc

    def _entry(self, doc: Doc, orth: int, spacy_norm: int) -> _Entry:
        lexeme = doc.vocab[orth]
        text = lexeme.orth_
        norm = rule_word(text, doc.vocab.strings[spacy_norm], self.known)
        stop, skippable = token_kind(norm, text)
        boundary = may_end_clause(norm, text, self.terminators)
        return (norm, text, lexeme.like_num, lexeme.is_title, stop, skippable, boundary)


_OPENS = {"\u201c": "\u201d", "\u00ab": "\u00bb", "``": "''"}


def _inside_quotes(norms: list[str]) -> list[bool]:
    """Per token, whether it lies between a pair of quote marks. A mark with no partner
    quotes nothing: one stray quote must not swallow the rest of a note."""
    inside = [False] * len(norms)
    open_at: dict[str, int] = {}  # the closing mark waited for -> where its opening was
    for i, norm in enumerate(norms):
        if norm in open_at:
            for j in range(open_at.pop(norm) + 1, i):
                inside[j] = True
        elif norm in QUOTE_MARKS:
            open_at[_OPENS.get(norm, norm)] = i
    return inside


def rule_word(text: str, spacy_norm: str, known: frozenset[str] = frozenset()) -> str:
    """A token as the rules see it: spaCy's norm where it says more than the lower-cased word
    ("n't" -> "not", which depends on context), then riskset's own spelling."""
    exact = reader_rules().spelling_as_written.get(text)
    if exact is not None:
        return exact
    word = normalise_word(spacy_norm if spacy_norm != text.lower() else text, known)
    return EMOJI_WORD if word not in known and _is_emoji(word) else word


@Language.factory("riskset_targets")
def make_targets(nlp: Language, name: str) -> TargetMatcher:
    return cached("targets", lambda: TargetMatcher(nlp, load_knowledge()))


def as_read(nlp: Language) -> Callable[[Iterable[str]], list[str]]:
    """Patterns with their words written as the pipeline's tokenizer reads them in a text."""

    @cache
    def split(word: str) -> list[str] | None:
        tokens = nlp.tokenizer(word)
        if len(tokens) < 2:
            return None
        return [rule_word(t.text, t.norm_) for t in tokens]

    return lambda patterns: [retokenise(pattern, split) for pattern in patterns]


class TargetMatcher(Component):
    """Finds every mention (aliases from the knowledge base and the reader's rules), and the
    context cues that the context component gives them their status by."""

    def __init__(self, nlp: Language, kb: KnowledgeBase) -> None:
        rules = reader_rules()
        check_codes(rules, kb)
        read_as = as_read(nlp)
        # Rules, blockers and context cues share one rule set, so the text is scanned once;
        # blockers' keys start with "!" and cues' with "^", which no code does.
        self.matcher = RuleSet(normalise_word)
        # One matcher key per rule, so a mention knows which rule (and immunity) found it.
        self.rule_of: dict[str, tuple[str, frozenset[str], bool, frozenset[str]]] = {}
        for substance in kb.substances.values():
            self._add(substance.code, substance.code, read_as(substance.aliases), frozenset())
            self.matcher.add(
                substance.code, [f"={alias}" for alias in substance.case_sensitive_aliases]
            )
        for i, rule in enumerate(rules.rules):
            self._add(
                f"{rule.code}#{i}",
                rule.code,
                read_as(rule.patterns),
                frozenset(rule.immune),
                rule.weak,
                frozenset(rule.yields_to),
            )
        for i, blocker in enumerate(rules.blockers):
            self.matcher.add(f"!block{i}", read_as(blocker.patterns))
            if blocker.unless:
                self.matcher.add(f"!unless{i}", read_as(blocker.unless))
        self.blocked_codes = {f"!block{i}": set(b.blocks) for i, b in enumerate(rules.blockers)}
        for i, trigger in enumerate(rules.context.triggers):
            self.matcher.add(f"^trigger{i}", read_as(trigger.patterns))
        self.matcher.add("^pseudo", read_as(rules.context.pseudo))
        self.suppressions = [(s.code, set(s.suppresses)) for s in rules.suppressions]

    def _add(
        self,
        key: str,
        code: str,
        patterns: Iterable[str],
        immune: frozenset[str],
        weak: bool = False,
        yields_to: frozenset[str] = frozenset(),
    ) -> None:
        self.rule_of[key] = (code, immune, weak, yields_to)
        self.matcher.add(key, patterns)

    def __call__(self, doc: Doc) -> Doc:
        done = progress(doc)
        tokens = done.tokens
        # Per token, the codes a blocker covering it rules out: linear in the text's length.
        blocked: dict[int, set[str]] = {}
        found = self.matcher(tokens)
        done.cues = [(k[1:], s, e) for k, s, e in found if k[0] == "^"]
        blocking = [match for match in found if match[0][0] == "!"]
        kept = [
            (k.removeprefix("!unless"), s, e) for k, s, e in blocking if k.startswith("!unless")
        ]
        for key, start, end in blocking:
            # "Has narcan x2" is a kit in hand, though "narcan x2" alone is a rescue.
            if key.startswith("!unless") or any(
                f"!block{k}" == key and s <= start and end <= e for k, s, e in kept
            ):
                continue
            for i in range(start, end):
                blocked.setdefault(i, set()).update(self.blocked_codes[key])
        mentions: list[Mention] = []
        for key, start, end in found:
            if key[0] in "!^":
                continue
            code, immune, weak, yields_to = self.rule_of[key]
            if any(code in blocked.get(i, ()) for i in range(start, end)):
                continue
            mentions.append(
                Mention(code, start, end, immune=immune, weak=weak, yields_to=yields_to)
            )
        done.mentions = self._suppress(_longest_per_code(mentions))
        return doc

    def _suppress(self, mentions: list[Mention]) -> list[Mention]:
        if not self.suppressions:
            return mentions
        # Per token, the codes a stronger mention covering it suppresses.
        suppressed: dict[int, set[str]] = {}
        strong_codes = dict(self.suppressions)
        for m in mentions:
            victims = strong_codes.get(m.code)
            if victims:
                for i in range(m.start, m.end):
                    suppressed.setdefault(i, set()).update(victims)
        return [
            m
            for m in mentions
            if not any(m.code in suppressed.get(i, ()) for i in range(m.start, m.end))
        ]


def _longest_per_code(mentions: list[Mention]) -> list[Mention]:
    """Of overlapping mentions of one code keep the longest: "fent dope" over "dope"."""
    by_code: dict[str, list[Mention]] = {}
    for m in mentions:
        by_code.setdefault(m.code, []).append(m)
    kept: list[Mention] = []
    for group in by_code.values():
        group.sort(key=lambda m: (m.start, m.start - m.end))
        cluster: list[Mention] = []
        cluster_end = -1
        for m in group:
            if cluster and m.start >= cluster_end:
                kept.append(max(cluster, key=lambda c: c.end - c.start))
                cluster = []
            cluster.append(m)
            cluster_end = max(cluster_end, m.end) if len(cluster) > 1 else m.end
        if cluster:
            kept.append(max(cluster, key=lambda c: c.end - c.start))
    return sorted(kept, key=lambda m: (m.start, m.end))


def _ends_sentence(t: Tokens, i: int) -> bool:
    text = t.texts[i]
    return (
        t.norms[i] in SENTENCE_ENDS
        or "\n" in text
        # "died in Aug. B drinking heavy since": an abbreviation's stop ends a sentence when a
        # capital follows, and an initial's always ("hx hep C. drinks").
        or (text[-1] == "." and i + 1 < len(t) and t.is_title[i + 1])
        or (len(text) == 2 and text[1] == "." and text[0].isupper())
    )


def _without_overruled_hints(mentions: list[Mention]) -> list[Mention]:
    """A weak mention gives way to the same code plainly denied, and to a code it yields to
    plainly present ("SEP" hints at injecting, unless the note says the person smokes)."""
    if not any(m.weak for m in mentions):
        return mentions
    denied = {m.code for m in mentions if not m.weak and m.status is Status.absent}
    said = {m.code for m in mentions if not m.weak and m.status is Status.present}
    return [
        m
        for m in mentions
        if not (m.weak and (m.code in denied or not m.yields_to.isdisjoint(said)))
    ]


def _most_common(people: list[str | None]) -> str | None:
    """The person named most often, if one is named more often than any other."""
    counts = {who: people.count(who) for who in set(people) if who}
    ranked = sorted(counts.values(), reverse=True)
    if not ranked or (len(ranked) > 1 and ranked[0] == ranked[1]):
        return None
    return max(counts, key=lambda who: counts[who])


def _within_pseudo(start: int, end: int, pseudo: list[tuple[int, int]]) -> bool:
    """A trigger that overlaps a pseudo-trigger without covering it is part of a phrase that
    means something else ("no" in "no longer"); one that covers it is that phrase ("no longer"
    itself, a historical trigger) and stands."""
    return any(s < end and start < e and not (start <= s and e <= end) for s, e in pseudo)


@Language.factory("riskset_context")
def make_context(nlp: Language, name: str) -> ContextReader:
    return cached("context", ContextReader)


def terminators(context: ContextRules) -> frozenset[str]:
    return frozenset(normalise_word(w) for w in context.terminators)


@dataclass(slots=True)
class _Scope:
    category: Category
    start: int
    end: int
    trigger: tuple[int, int]  # the cue's tokens
    only: frozenset[str] = frozenset()


SENTENCE_ENDS = frozenset({".", "!", "?", ";", "...", "…"})
CLAUSE_MARKS = frozenset({",", "-", "--", "—", "–", "(", ")", ":"})
# How a clause ends at a word: not at all, before it, after it, with the sentence after it, or
# before it with the same subject going on ("... and wants to use").
_NO_END, _ENDS_BEFORE, _ENDS_AFTER, _ENDS_SENTENCE, _GOES_ON = range(5)


def may_end_clause(norm: str, text: str, terminators: frozenset[str]) -> bool:
    """Whether a word can end (or begin) a clause, as ContextReader.clause_bounds decides."""
    return text[-1:] == "." or "\n" in text or norm in terminators or norm in _CLAUSE_WORDS


_CLAUSE_WORDS = SENTENCE_ENDS | CLAUSE_MARKS | {"and"}


class ContextReader(Component):
    """Gives each mention its status from the trigger words around it (after ConText)."""

    def __init__(self) -> None:
        context = reader_rules().context
        self.rules = context
        self.triggers: dict[str, Trigger] = {}
        self.stop_words: dict[str, set[str]] = {}
        self.from_words: dict[str, set[str]] = {}
        self.only: dict[str, frozenset[str]] = {}
        for i, trigger in enumerate(context.triggers):
            key = f"trigger{i}"
            self.triggers[key] = trigger
            self.stop_words[key] = {fold(w) for w in trigger.stop_at}
            self.from_words[key] = {fold(w) for w in trigger.from_words}
            self.only[key] = frozenset(trigger.only)
        self.terminators = terminators(context)
        self.not_ending = {
            normalise_word(w): {normalise_word(after) for after in words}
            for w, words in context.terminators_unless_before.items()
        }
        self.subjects = {fold(w) for w in context.subjects}
        self.clause_starters = {normalise_word(w) for w in context.clause_starters}
        self.same_subject = {normalise_word(w) for w in context.same_subject_after_and}
        self.immune = {code: set(cats) for code, cats in context.immune.items()}
        persons = context.persons
        self.person_of = {fold(w): who for who, words in persons.items() for w in words}
        self.speaker = context.speaker

    def __call__(self, doc: Doc) -> Doc:
        done = progress(doc)
        mentions = done.mentions
        if not mentions:
            return doc
        tokens = done.tokens
        clauses, sentences, subjects = self.clause_bounds(tokens)
        scopes = list(self.scopes(done, clauses, sentences, subjects))
        scopes += self.other_person_scopes(tokens, clauses)
        # Index the scopes by the tokens they cover (each covers a few words), so a long text
        # costs time in proportion to its length, not to mentions times triggers.
        covering: dict[int, list[_Scope]] = {}
        for scope in scopes:
            for i in {*range(scope.start, scope.end), *range(*scope.trigger)}:
                covering.setdefault(i, []).append(scope)
        for mention in mentions:
            self.assign(mention, covering.get(mention.start, []), tokens)
        return doc

    def other_person_scopes(self, t: Tokens, clause: list[int]) -> list[_Scope]:
        """Clauses whose subject is a different person from the one the narrative is about.

        In "D's partner hits her when he's drunk. She injects ..." the narrative is about "she";
        "he's drunk" is the partner. The person is whoever the pronouns mostly point at.
        """
        people = [self.person_of.get(norm) for norm in t.norms]
        # Who the narrative is about is told by the writer's own words: inside quote marks "I"
        # is whoever speaks ("'I shoot tranq,' she says"), and a quoted "she" is someone the
        # speaker talks about. So quotes do not vote, though a quoted "she" still marks
        # someone else's clause.
        told = people
        if t.quoted:
            people = [
                None if inside and who == self.speaker else who
                for who, inside in zip(people, t.quoted, strict=True)
            ]
            told = [None if inside else who for who, inside in zip(people, t.quoted, strict=True)]
        if len({who for who in people if who}) < 2:
            return []
        # Whoever is named most often; on a tie, whoever is more often the subject ("she's
        # scared she'll find him dead": "him" is named as often as "she", but is no subject).
        subjects = [who for who, norm in zip(told, t.norms, strict=True) if norm in self.subjects]
        main = _most_common(told) or _most_common(subjects)
        if main is None:
            return []
        scopes: list[_Scope] = []
        for i, who in enumerate(people):
            if who and who != main and t.norms[i] in self.subjects:
                end = i + 1
                while end < len(t) and clause[end] == clause[i] and people[end] != main:
                    end += 1
                scopes.append(_Scope("other", i, end, (i, i + 1)))
        return scopes

    def clause_bounds(self, t: Tokens) -> tuple[list[int], list[int], list[int]]:
        """For each token, the index of its clause, of its sentence, and of its run of clauses
        with one subject (a clause that goes on with "and wants ..." keeps the subject)."""
        n = len(t)
        clauses: list[int] = []
        sentences: list[int] = []
        subjects: list[int] = []
        clause = sentence = subject = 0
        given = 0  # how many tokens have their clause and sentence
        # Only a few words can end a clause (the normaliser marks them): the rest are given
        # their clause a run at a time.
        maybe = compress(range(n), t.boundaries) if len(t.boundaries) == n else range(n)
        for i in maybe:
            ends = self._clause_ends(t, i)
            if ends is _NO_END:
                continue
            upto = i if ends is _ENDS_BEFORE or ends is _GOES_ON else i + 1
            clauses += [clause] * (upto - given)
            sentences += [sentence] * (upto - given)
            subjects += [subject] * (upto - given)
            given = upto
            clause += 1
            sentence += ends is _ENDS_SENTENCE
            subject += ends is not _GOES_ON
        clauses += [clause] * (n - given)
        sentences += [sentence] * (n - given)
        subjects += [subject] * (n - given)
        return clauses, sentences, subjects

    def _clause_ends(self, t: Tokens, i: int) -> int:
        """Whether a clause ends at token i: not at all, before it, after it, with the
        sentence after it, or before it with the subject going on. Only words that
        ``may_end_clause`` marks can end one: the two must agree."""
        norm = t.norms[i]
        text = t.texts[i]
        if norm in SENTENCE_ENDS or ((text[-1] == "." or "\n" in text) and _ends_sentence(t, i)):
            return _ENDS_SENTENCE
        if norm in self.terminators:
            after = self.not_ending.get(norm)
            if after and i + 1 < len(t) and t.norms[i + 1] in after:
                return _NO_END
            return _ENDS_BEFORE
        if norm in CLAUSE_MARKS and self._starts_clause(t, i + 1):
            return _ENDS_AFTER
        if norm == "and" and self._starts_clause(t, i + 1):
            return _GOES_ON if t.norms[i + 1] in self.same_subject else _ENDS_BEFORE
        return _NO_END

    def _starts_clause(self, t: Tokens, i: int) -> bool:
        return i < len(t) and t.norms[i] in self.clause_starters

    def scopes(
        self, done: Progress, clause: list[int], sentence: list[int], subject: list[int]
    ) -> Iterator[_Scope]:
        t = done.tokens
        ends = {m.end - 1 for m in done.mentions}
        matches = done.cues  # found by the targets
        pseudo = [(s, e) for k, s, e in matches if k == "pseudo"]
        found = [(k, s, e) for k, s, e in matches if k != "pseudo"]
        # Longest trigger first, so "no longer" is not also read as "no"; of two with the same
        # words, the one that reaches further.
        found.sort(key=lambda m: (m[1] - m[2], m[1], -self.triggers[m[0]].window))
        # (token, kind) already used by a longer trigger; triggers that reach different codes
        # are different kinds.
        taken: set[tuple[int, tuple[str, str, frozenset[str]]]] = set()
        for key, start, end in found:
            trigger = self.triggers[key]
            # A longer trigger of the same kind wins ("no longer" over "no"); kinds don't compete.
            kind = (trigger.category, trigger.direction, self.only[key])
            span = range(start, end)
            if _within_pseudo(start, end, pseudo) or any((i, kind) in taken for i in span):
                continue
            taken.update((i, kind) for i in span)
            # A forward scope runs in the clause where the trigger ends: "Partner still smokes"
            # holds a terminator, yet the smoking is still the partner's.
            # Someone else's scope runs on while the subject does ("my cousin got out and
            # wants to use"); back from the trigger, it stops where the clause does.
            runs_on = trigger.category == "other" and trigger.direction == "forward"
            bounds = subject if runs_on else clause
            if trigger.reach == "sentence":
                bounds = sentence
            here = bounds[end - 1] if trigger.direction == "forward" else bounds[start]
            if trigger.direction in ("forward", "both"):
                if trigger.category == "other":
                    end = start + 1
                stop = end
                stops = self.stop_words[key]
                while (
                    stop < len(t)
                    and stop < end + trigger.window
                    and bounds[stop] == here
                    and not (stop > end and t.norms[stop] in stops)
                    and not (trigger.comma_ends and t.norms[stop] == "," and stop - 1 not in ends)
                ):
                    stop += 1
                yield _Scope(trigger.category, end, stop, (start, end), self.only[key])
            if trigger.direction in ("backward", "both"):
                begin = start
                while begin > 0 and begin > start - trigger.window and bounds[begin - 1] == here:
                    begin -= 1
                if trigger.from_words:
                    # "the dope is purple??" is surprise, not a question about the dope: a question
                    # reaches back only to its question word ("is it ok to mix ...?").
                    asked = [i for i in range(begin, start) if t.norms[i] in self.from_words[key]]
                    if not asked:
                        continue
                    begin = asked[-1]
                yield _Scope(trigger.category, begin, start, (start, end), self.only[key])

    def assign(self, mention: Mention, scopes: list[_Scope], t: Tokens) -> None:
        immune = self.immune.get(mention.code, set()) | mention.immune
        reaching = [
            s
            for s in scopes
            if s.category not in immune
            and (not s.only or mention.code in s.only)
            and (
                s.start <= mention.start < s.end
                # "used to use with her", "was on done 2 yrs": a past-tense trigger holding
                # the mention's first word marks it
                or (s.category == "historical" and s.trigger[0] <= mention.start < s.end)
            )
            # A negation or condition wholly inside the mention is part of its meaning ("no
            # narcan", "might have fent in it"); "used to" or "his girlfriend overdosed" are not.
            and (
                s.category in ("other", "historical")
                or not (mention.start <= s.trigger[0] and s.trigger[1] <= mention.end)
            )
        ]
        if not reaching:
            return
        strongest = min(reaching, key=lambda s: PRECEDENCE.index(s.category))
        if strongest.category == "other":
            mention.other = True
            rest = [s for s in reaching if s.category != "other"]
            if not rest:
                return
            strongest = min(rest, key=lambda s: PRECEDENCE.index(s.category))
        mention.status = STATUS_OF[strongest.category]
        mention.cue = t.quote(*strongest.trigger)[0]


@Language.factory("riskset_findings")
def make_findings(nlp: Language, name: str) -> FindingBuilder:
    return FindingBuilder(load_knowledge())


class FindingBuilder(Component):
    """Mentions to findings: one per code and status, then what follows from them."""

    def __init__(self, kb: KnowledgeBase) -> None:
        rules = reader_rules()
        self.kb = kb
        self.internal = set(rules.internal_codes)
        self.derivations = rules.derivations

    def __call__(self, doc: Doc) -> Doc:
        done = progress(doc)
        mentions = done.mentions
        tokens = done.tokens
        reading = Reading()
        mine = _without_overruled_hints([m for m in mentions if not m.other])
        chosen = self._one_per_code_and_status(mine)
        facts = self.facts(chosen)
        derived = self._derive(doc, chosen, facts)
        for mention in [*chosen, *derived]:
            if mention.code in self.internal:
                continue
            finding = self._finding(tokens, mention)
            if finding.frame == "sign":
                reading.signs.append(finding)
            else:
                reading.findings.append(finding)
        for mention in self._one_per_code_and_status([m for m in mentions if m.other]):
            if mention.code not in self.internal:
                reading.about_others.append(self._finding(tokens, mention))
        for found in (reading.findings, reading.about_others):
            found.sort(key=lambda f: (f.start if f.start is not None else -1, f.code))
        done.reading = reading
        return doc

    @staticmethod
    def _one_per_code_and_status(mentions: list[Mention]) -> list[Mention]:
        seen: dict[tuple[str, Status], Mention] = {}
        for m in mentions:
            seen.setdefault((m.code, m.status), m)
        return list(seen.values())

    def facts(self, mentions: Iterable[Mention]) -> set[str]:
        facts: set[str] = set()
        for m in mentions:
            facts.add(FACT_PREFIX[m.status] + m.code)
            if m.status is Status.present:
                klass = self.kb.substance_class(m.code)
                if klass:
                    facts.update((f"class:{klass}", "class:any"))
        return facts

    def _derive(self, doc: Doc, chosen: list[Mention], facts: set[str]) -> list[Mention]:
        derived: list[Mention] = []
        # Run twice so a derived finding can support another (camp -> unhoused -> ...).
        for _ in range(2):
            for rule in self.derivations:
                if rule.code in facts or not rule.when.holds(facts):
                    continue
                evidence = self._evidence(chosen + derived, rule)
                start, end = (evidence.start, evidence.end) if evidence else (-1, -1)
                derived.append(Mention(rule.code, start, end, derived=True))
                facts.add(rule.code)
        return derived

    @staticmethod
    def _evidence(mentions: list[Mention], rule: Derivation) -> Mention | None:
        wanted = rule.evidence_from or [*rule.when.all, *rule.when.any]
        for code in wanted:
            bare = (
                code.split(":", 1)[1] if code.split(":", 1)[0] in ("not", "past", "maybe") else code
            )
            for m in mentions:
                if m.code == bare:
                    return m
        return None

    def _finding(self, t: Tokens, m: Mention) -> Finding:
        if m.start < 0:
            return Finding(
                code=m.code,
                status=m.status,
                label=self.kb.label(m.code),
                frame=self.kb.frame(m.code),
                source="inferred",
            )
        text, start, end = t.quote(m.start, m.end)
        return Finding(
            code=m.code,
            status=m.status,
            text=text,
            start=start,
            end=end,
            cue=m.cue,
            label=self.kb.label(m.code),
            frame=self.kb.frame(m.code),
            source="inferred" if m.derived else "narrative",
        )


# ---------------------------------------------------------------------------------------------
# The entry points

PIPELINE = ("riskset_normalizer", "riskset_targets", "riskset_context", "riskset_findings")

# spaCy does not promise that one pipeline may serve several threads at once: a server that
# reads from threads holds this lock (one per process, shared by every page that reads text).
LOCK = threading.Lock()


@cache
def load() -> Language:
    """The reading pipeline, assembled once per process and kept for its lifetime."""
    import spacy

    # Building makes a few hundred thousand objects that all live as long as the process
    # (spaCy's tokenizer, the knowledge base, the compiled rules): collections during the
    # build would walk them again and again and free nothing.
    was_collecting = gc.isenabled()
    gc.disable()
    try:
        nlp = spacy.blank("en")
        tokenizer: Tokenizer = nlp.tokenizer
        for abbreviation in reader_rules().abbreviations:
            for written in {abbreviation, abbreviation.capitalize(), abbreviation.upper()}:
                tokenizer.add_special_case(written, [{ORTH: written}])
        for name in PIPELINE:
            nlp.add_pipe(name)
    finally:
        if was_collecting:
            gc.enable()
    # And so would every full collection after it: the first one, soon after, costs a cold
    # one-narrative call 60 ms, and a batch a few per cent of its time. Frozen, they are
    # never walked again (and never freed, which they would not be anyway).
    gc.freeze()
    return nlp


def read(text: str) -> Reading:
    """Findings (and signs, and what is said of others) in one narrative.

    Raises ``InputError`` for text no reader can use (not a string, NUL bytes, lone surrogates).
    """
    from .assessment import check_text

    if isinstance(text, str) and not text.strip():
        return Reading()  # nothing to read is a valid, empty reading
    return _reading_of(load()(check_text(text)))


def read_many(texts: Iterable[str], batch_size: int = 256) -> Iterator[Reading]:
    for doc in load().pipe(texts, batch_size=batch_size):
        yield _reading_of(doc)


def _reading_of(doc: Doc) -> Reading:
    reading = progress(doc).reading
    if reading is None:  # pragma: no cover - the findings component always sets it
        raise RuntimeError("the reading pipeline ran without its findings component")
    return reading
