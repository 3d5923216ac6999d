"""Remove what could identify a person from free text before riskset stores it.

There is no trained NER model on riskset's machines, so names are found from data: a list of
given names, words that are never names (drugs, brands, places, clinical shorthand), cue words
("my friend", "Dr.", "aka") and a Capitalised-word heuristic. Phones, emails, addresses, dates
of birth and ID numbers are found by regexes. Every word list and detection pattern lives in
data/scrub.yaml (given names in data/first_names.txt); only token-shape regexes stay here.

Public API: ``scrub(text) -> ScrubResult``; ``ScrubResult.removed`` holds ``Removed`` spans
with offsets into the original text. ``load_config()`` returns the validated data.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Kind = Literal["name", "phone", "email", "address", "dob", "id"]
KINDS: tuple[Kind, ...] = ("name", "phone", "email", "address", "dob", "id")

__all__ = [
    "KINDS",
    "Kind",
    "Removed",
    "ScrubConfig",
    "ScrubResult",
    "load_config",
    "scrub",
]


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


class Removed(BaseModel):
    """One removed span; ``start``/``end`` index the original text (end exclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class ScrubResult(BaseModel):
    """The scrubbed text and what was taken out of the original."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    removed: list[Removed]


# --------------------------------------------------------------------------------------
# Configuration (data/scrub.yaml), validated strictly so a typo in the data fails loudly
# --------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PatternSpec(_Strict):
    """A regex detector; a named group ``pii`` narrows what is removed."""

    name: str
    kind: Kind
    regex: str
    ignore_case: bool = True
    verbose: bool = False

    def compile(self) -> re.Pattern[str]:
        flags = (re.IGNORECASE if self.ignore_case else 0) | (re.VERBOSE if self.verbose else 0)
        return re.compile(self.regex, flags)

    @model_validator(mode="after")
    def _compiles(self) -> PatternSpec:
        try:
            self.compile()
        except re.error as exc:
            raise ValueError(f"pattern {self.name!r} does not compile: {exc}") from exc
        return self


class CueLists(_Strict):
    strong_before: list[str]
    weak_before: list[str]
    nickname_before: list[str]
    nickname_prefixes: list[str]
    particles: list[str]


class WordLists(_Strict):
    never: list[str]
    keep: list[str]
    months: list[str]
    abbreviations: list[str]
    keep_phrases: list[str]
    ambiguous_names: list[str]
    place_before: list[str]
    place_after: list[str]
    person_after: list[str]
    person_to_verbs: list[str]
    drug_before: list[str]


class ScrubConfig(_Strict):
    version: Literal[1]
    first_names_file: str
    placeholders: dict[Kind, str]
    patterns: list[PatternSpec] = Field(min_length=1)
    cues: CueLists
    words: WordLists

    @field_validator("first_names_file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        # The file must sit beside scrub.yaml inside the package, never elsewhere.
        if not value or "/" in value or "\\" in value or value.startswith("."):
            raise ValueError("first_names_file must be a plain file name in riskset/data")
        return value

    @field_validator("placeholders")
    @classmethod
    def _every_kind_has_a_placeholder(cls, value: dict[Kind, str]) -> dict[Kind, str]:
        missing = [kind for kind in KINDS if not value.get(kind)]
        if missing:
            raise ValueError(f"placeholders missing for: {', '.join(missing)}")
        return value


def _data_text(name: str) -> str:
    return resources.files("riskset").joinpath("data", name).read_text(encoding="utf-8")


@cache
def load_config() -> ScrubConfig:
    """The validated scrubber data, read once per process."""
    return ScrubConfig.model_validate(yaml.safe_load(_data_text("scrub.yaml")))


def _read_first_names(text: str) -> frozenset[str]:
    names: set[str] = set()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        names.update(_key(word) for word in line.split())
    return frozenset(names)


# --------------------------------------------------------------------------------------
# Compiled rules
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _WordSet:
    """Case-insensitive entries, plus entries with capitals that must match exactly."""

    folded: frozenset[str]
    exact: frozenset[str]

    @classmethod
    def of(cls, words: list[str]) -> _WordSet:
        exact = frozenset(w for w in words if w != w.lower())
        return cls(frozenset(_fold(w) for w in words if w == w.lower()), exact)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and (_fold(word) in self.folded or word in self.exact)


Phrases = frozenset[tuple[str, ...]]


@dataclass(frozen=True)
class _Rules:
    patterns: tuple[tuple[Kind, re.Pattern[str]], ...]
    placeholders: dict[Kind, str]
    placeholder_re: re.Pattern[str]
    first_names: frozenset[str]
    stop: frozenset[str]
    never: _WordSet
    keep: _WordSet
    keep_phrases: Phrases
    ambiguous: frozenset[str]
    place_before: frozenset[str]
    place_after: frozenset[str]
    person_after: frozenset[str]
    person_to_verbs: frozenset[str]
    drug_before: frozenset[str]
    particles: frozenset[str]
    nickname_prefixes: Phrases
    strong: Phrases
    weak: Phrases
    nickname: Phrases
    months: frozenset[str]
    abbreviations: frozenset[str]


@cache
def _nlp() -> Any:
    # Imported lazily: spaCy is slow to import and only the blank tokenizer is needed.
    import spacy

    return spacy.blank("en")


def _tokenizer() -> Any:
    return _nlp().tokenizer


def _phrase_keys(phrases: list[str]) -> Phrases:
    # Cue phrases are split by the same tokenizer as the text, so "a.k.a." or "name:" line up
    # with how they appear in a note.
    keys: set[tuple[str, ...]] = set()
    for phrase in phrases:
        tokens = [_key(str(t.text)) for t in _tokenizer()(phrase) if not str(t.text).isspace()]
        key = tuple(k for k in tokens if k)
        if key:
            keys.add(key)
    return frozenset(keys)


@cache
def _rules() -> _Rules:
    config = load_config()
    words, cues = config.words, config.cues
    placeholders = dict(config.placeholders)
    return _Rules(
        patterns=tuple((spec.kind, spec.compile()) for spec in config.patterns),
        placeholders=placeholders,
        placeholder_re=re.compile("|".join(re.escape(p) for p in placeholders.values())),
        first_names=_read_first_names(_data_text(config.first_names_file)),
        stop=frozenset(str(w) for w in _nlp().Defaults.stop_words),
        never=_WordSet.of(words.never),
        keep=_WordSet.of(words.keep),
        keep_phrases=_phrase_keys(words.keep_phrases),
        ambiguous=frozenset(_key(w) for w in words.ambiguous_names),
        place_before=frozenset(_key(w) for w in words.place_before),
        place_after=frozenset(_key(w) for w in words.place_after),
        person_after=frozenset(_key(w) for w in words.person_after),
        person_to_verbs=frozenset(_key(w) for w in words.person_to_verbs),
        drug_before=frozenset(_key(w) for w in words.drug_before),
        particles=frozenset(_key(w) for w in cues.particles),
        nickname_prefixes=_phrase_keys(cues.nickname_prefixes),
        strong=_phrase_keys(cues.strong_before),
        weak=_phrase_keys(cues.weak_before),
        nickname=_phrase_keys(cues.nickname_before),
        months=frozenset(_key(w) for w in words.months),
        abbreviations=frozenset(_key(w) for w in words.abbreviations),
    )


# --------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_WRAPPED_WORD = re.compile(r"([\W_]+)?([^\W\d_]+(?:['’][^\W\d_]+)*)([\W_]+)?")
_PLURAL_ACRONYM = re.compile(r"[A-Z]{2,}s")
_CLITIC = re.compile(r"['’][^\W\d_]{1,2}")  # 's 'm 're: spaCy's own tokens, keep whole
_INITIALS = re.compile(r"(?:[A-Z]\.){1,3}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_QUOTES = frozenset("\"'“”‘’«»`")
_OPENERS = frozenset({"(", "[", *_QUOTES})
_SKIPPABLE = frozenset({",", ":", "-", "–", "—", "(", "=", *_QUOTES})
_MID_SENTENCE_PUNCT = frozenset({",", "(", ")", "&", "/", "+", "=", "'s", "’s", *_QUOTES})


@lru_cache(maxsize=65536)
def _fold(text: str) -> str:
    # "José" finds "Jose" in the name list, "fiancé" the cue "fiance".
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _key(text: str) -> str:
    # "Mr." and "Mr" are the same cue; a lone "." is dropped from cue matching entirely.
    return _fold(text).rstrip(".") if text.strip(".") else ""


@dataclass(slots=True)
class _Tok:
    text: str
    start: int
    end: int
    key: str
    is_word: bool
    is_initial: bool
    newline_before: bool = False
    sent_start: bool = False
    title_line: bool = False

    @property
    def is_title(self) -> bool:
        # "Jessica", "DeShawn", "O'Brien"; not "UAs" or "IDs" (plural acronyms).
        return (
            self.is_word
            and self.text[0].isupper()
            and not self.is_upper
            and _PLURAL_ACRONYM.fullmatch(self.text) is None
        )

    @property
    def is_upper(self) -> bool:
        return self.is_word and len(self.text) > 1 and self.text.isupper()

    @property
    def is_lower(self) -> bool:
        return self.is_word and self.text.islower()


def _make_tok(text: str, start: int) -> _Tok:
    return _Tok(
        text=text,
        start=start,
        end=start + len(text),
        key=_key(text),
        is_word=_WORD.fullmatch(text) is not None,
        is_initial=_INITIALS.fullmatch(text) is not None,
    )


def _split_wrapped(text: str, start: int) -> list[_Tok]:
    # spaCy leaves some punctuation glued to words ("-Jess" in a text-message signature);
    # peel it off so the word itself can be judged.
    match = _WRAPPED_WORD.fullmatch(text)
    if match is None or _INITIALS.fullmatch(text) or text.endswith(".") or _CLITIC.fullmatch(text):
        return [_make_tok(text, start)]
    parts: list[_Tok] = []
    for index in (1, 2, 3):
        if match.group(index):
            parts.append(_make_tok(match.group(index), start + match.start(index)))
    return parts


def _tokenize(text: str) -> list[_Tok]:
    # spaCy's tokenizer cannot hash lone surrogates; swapping each for U+FFFD keeps offsets.
    safe = _SURROGATE.sub("\ufffd", text)
    tokens: list[_Tok] = []
    for token in _tokenizer()(safe):
        token_text = str(token.text)
        if not token_text.isspace():
            tokens.extend(_split_wrapped(token_text, int(token.idx)))
    _mark_sentences(text, tokens)
    _mark_title_lines(tokens)
    return tokens


def _ends_sentence(prev: _Tok, rules: _Rules) -> bool:
    if prev.text in _MID_SENTENCE_PUNCT:
        return False
    if not any(ch.isalnum() for ch in prev.text):
        # ".", "!", "?", ":", bullets, emoji: in notes and texts a new thought starts here.
        return True
    if prev.text.endswith((".", "!", "?")) and len(prev.text) > 1:
        return not (
            prev.is_initial or prev.key in rules.abbreviations or (prev.key,) in rules.strong
        )
    return False


def _mark_sentences(text: str, tokens: list[_Tok]) -> None:
    rules = _rules()
    prev_any: _Tok | None = None  # the token just before, for line breaks
    prev: _Tok | None = None  # the last token that is not an opening quote or bracket
    for tok in tokens:
        gap = text[prev_any.end : tok.start] if prev_any else ""
        tok.newline_before = prev_any is None or "\n" in gap or "\r" in gap
        if tok.newline_before:
            prev = None  # a note's lines are separate thoughts even without a full stop
        tok.sent_start = prev is None or _ends_sentence(prev, rules)
        prev_any = tok
        # Quotes and brackets are looked through: '"Jessica' starts a sentence like 'Jessica'.
        if tok.text not in _OPENERS:
            prev = tok


def _mark_title_lines(tokens: list[_Tok]) -> None:
    # Headings and forms ("Harm Reduction Outreach Log") capitalise every word, so the
    # "Capitalised in mid-sentence" signal means nothing on such a line.
    line: list[_Tok] = []
    for tok in [*tokens, None]:
        if tok is None or (tok.newline_before and line):
            words = [t for t in line if t.is_word and len(t.text) > 1]
            capitalised = sum(1 for t in words if t.is_title or t.is_upper)
            is_title = len(words) >= 3 and capitalised / len(words) >= 0.8
            for t in line:
                t.title_line = is_title
            line = []
        if tok is not None:
            line.append(tok)


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------

Cue = Literal["nickname", "strong", "weak"]


@dataclass
class _NameFinder:
    tokens: list[_Tok]
    rules: _Rules

    def __post_init__(self) -> None:
        self.keys = [t.key for t in self.tokens]
        self.protected = self._keep_phrase_tokens()
        cues = self.rules.strong | self.rules.weak | self.rules.nickname
        self.longest_cue = max((len(p) for p in cues), default=1)
        # Most tokens end no cue; checking the last word first keeps the scan cheap.
        self.cue_last_words = frozenset(p[-1] for p in cues)
        # Capitalised words judged to name a place ("to Beaverton"), so that "and
        # Hillsboro" after them is read as a place too.
        self.places: set[int] = set()

    # -- word classes -------------------------------------------------------------------

    def _keep_phrase_tokens(self) -> set[int]:
        # Multi-word keep phrases ("Special K", "Fred Meyer") protect every token in them.
        keys = self.keys
        longest = max((len(p) for p in self.rules.keep_phrases), default=0)
        protected: set[int] = set()
        for i in range(len(keys)):
            for n in range(2, longest + 1):
                if tuple(keys[i : i + n]) in self.rules.keep_phrases:
                    protected.update(range(i, i + n))
        return protected

    def never(self, i: int) -> bool:
        tok = self.tokens[i]
        return (
            i in self.protected
            or tok.text in self.rules.never
            or tok.key in self.rules.stop
            or (not tok.is_word and not tok.is_initial)
        )

    def kept(self, i: int) -> bool:
        tok = self.tokens[i]
        return tok.text in self.rules.keep or tok.key in self.rules.months

    def known(self, i: int) -> bool:
        key = self.tokens[i].key
        return key in self.rules.first_names and key not in self.rules.ambiguous

    def ambiguous(self, i: int) -> bool:
        return self.tokens[i].key in self.rules.ambiguous

    def prev_key(self, i: int) -> str:
        return self.tokens[i - 1].key if i > 0 else ""

    def place_context(self, i: int) -> bool:
        """Whether the words before token i say a place or thing follows."""
        before = self.prev_key(i)
        if before == "to" and i > 1 and self.tokens[i - 2].key in self.rules.person_to_verbs:
            return False  # "talked to Donovan"
        if before in {"and", "or", "&", ","} and i - 2 in self.places:
            return True  # "to Beaverton and Hillsboro"
        return before in self.rules.place_before

    def _place(self, i: int) -> bool:
        # Remembered for the coordination rule in place_context.
        self.places.add(i)
        return False

    # -- cues ---------------------------------------------------------------------------

    def cue_before(self, i: int) -> tuple[Cue | None, bool]:
        """The cue that ends just before token i, and whether a quote was skipped."""
        j, skips, quoted = i - 1, 0, False
        keys = self.keys
        while j >= 0:
            if keys[j] == "":  # a detached "." never starts or ends a cue
                j -= 1
                continue
            cue = self._cue_ending_at(keys, j)
            if cue is not None and not self._inside_proper_noun(j):
                return cue, quoted
            if self.tokens[j].text not in _SKIPPABLE or skips >= 2:
                break
            quoted = quoted or self.tokens[j].text in _QUOTES
            j, skips = j - 1, skips + 1
        return None, False

    def _inside_proper_noun(self, j: int) -> bool:
        # "the Good Neighbor Center": a Capitalised cue word after another Capitalised word
        # is part of a name of a place, not a relation. Titles ("Dr.") are written that way.
        tok = self.tokens[j]
        prev = self.tokens[j - 1] if j > 0 else None
        return (
            tok.is_title
            and not tok.text.endswith(".")
            and tok.key not in self.rules.abbreviations
            and prev is not None
            and prev.is_title
            and not prev.sent_start
        )

    def _cue_ending_at(self, keys: list[str], j: int) -> Cue | None:
        if keys[j] not in self.cue_last_words:
            return None
        window: list[str] = []
        k = j
        while k >= 0 and len(window) < self.longest_cue:
            if keys[k]:
                window.insert(0, keys[k])
                phrase = tuple(window)
                if phrase in self.rules.nickname:
                    return "nickname"
                if phrase in self.rules.strong:
                    return "strong"
                if phrase in self.rules.weak:
                    return "weak"
            k -= 1
        return None

    # -- seeds: tokens that start a name ------------------------------------------------

    def seed(self, i: int) -> tuple[bool, Cue | None, bool]:
        """Whether token i is (the start of) a name, the cue that said so, and quoting."""
        tok = self.tokens[i]
        cue, quoted = self.cue_before(i)
        if cue == "nickname" and self._nickname(i, quoted):
            return True, cue, quoted
        if self._nickname_prefix(i):
            return True, None, False
        if self.never(i) and not tok.is_initial:
            return False, None, False
        if cue is not None and cue != "nickname" and self._seed_by_cue(i, cue):
            return True, cue, quoted
        return self._seed_by_shape(i), None, False

    def _nickname_prefix(self, i: int) -> int:
        """Tokens in a "Big Mike" / "Old Man Frank" nickname starting at i (0: none)."""
        if not self.tokens[i].is_title:
            return 0
        for n in range(1, 3):
            name = i + n
            if (
                tuple(self.keys[i:name]) in self.rules.nickname_prefixes
                and name < len(self.tokens)
                and self.tokens[name].is_title
                and not self.kept(name)
                and name not in self.protected
            ):
                return n + 1
        return 0

    def _nickname(self, i: int, quoted: bool) -> bool:
        # A quoted nickname is taken whatever it says ("Mama Bear"); a bare one may be lower
        # case ("aka smoke") but not a function word ("calls her mom").
        tok = self.tokens[i]
        if not tok.is_word or i in self.protected:
            return False
        if quoted:
            return True
        return not self.never(i) and (tok.is_title or not self.kept(i))

    def _seed_by_cue(self, i: int, cue: Cue) -> bool:
        tok = self.tokens[i]
        if cue == "strong":
            if self._month_before_number(i):
                return False
            if tok.is_title or tok.is_initial:
                return True
            if tok.is_upper:
                return not self.kept(i)
            return tok.is_lower and (self.known(i) or self.ambiguous(i)) and not self.kept(i)
        if tok.is_lower:
            return self.known(i) and not self.kept(i)
        if self._run_is_place(i):
            return self._place(i)  # "called Multnomah County Crisis Line"
        return (tok.is_title or tok.is_initial) and not self.kept(i)

    def _month_before_number(self, i: int) -> bool:
        nxt = self.tokens[i + 1] if i + 1 < len(self.tokens) else None
        return (
            self.tokens[i].key in self.rules.months and nxt is not None and nxt.text[:1].isdigit()
        )

    def _seed_by_shape(self, i: int) -> bool:
        tok = self.tokens[i]
        if self.kept(i) or tok.is_initial:
            return False
        if self.known(i):
            return self._known_name(i)
        if self.ambiguous(i):
            return self._ambiguous_name(i)
        return self._unknown_capitalised(i)

    def _known_name(self, i: int) -> bool:
        tok = self.tokens[i]
        if tok.is_lower:
            # Text messages skip capitals; short lower-case names are too often words.
            return len(tok.text) >= 4
        return (tok.is_title or len(tok.text) >= 3) and not self._run_is_place(i)

    def _ambiguous_name(self, i: int) -> bool:
        tok = self.tokens[i]
        if not tok.is_title or tok.title_line:
            return False
        if tok.sent_start:
            # "Grace Alvarez came by", "Grace said" are names; "Grace is what she needs" is not.
            if self._person_follows(i):
                return True
            nxt = i + 1
            return nxt < len(self.tokens) and self._surname_like(nxt) and not self._run_is_place(i)
        if self.place_context(i) or self._run_is_place(i):
            return self._place(i)
        return self.prev_key(i) not in self.rules.drug_before

    def _person_follows(self, i: int) -> bool:
        nxt = self.tokens[i + 1] if i + 1 < len(self.tokens) else None
        return nxt is not None and nxt.key in self.rules.person_after

    def _unknown_capitalised(self, i: int) -> bool:
        tok = self.tokens[i]
        if not tok.is_title or len(tok.text) < 2 or tok.title_line:
            return False
        if tok.sent_start:
            # Sentence-initial words are capitalised anyway; only "Esperanza said ..." counts,
            # and not a plural ("Neighbors said").
            return not tok.text.endswith("s") and self._person_follows(i)
        if self._inside_run(i):
            return False
        if self.place_context(i) or self._run_is_place(i):
            return self._place(i)
        return self.prev_key(i) not in self.rules.drug_before

    def _inside_run(self, i: int) -> bool:
        # Only the first word of a Capitalised run is judged ("at Central City Concern",
        # "Narcan Nasal Spray"); after an unknown sentence-initial word ("Saw Delilah") the
        # run starts afresh.
        prev = self.tokens[i - 1] if i > 0 else None
        if prev is None or not prev.is_title or len(prev.text) < 2:
            return False
        return not prev.sent_start or self.kept(i - 1)

    def _run_is_place(self, i: int) -> bool:
        # "Laurelhurst Park", "Blanchet House Services": the run ends in a place word. Runs
        # are looked at for a few words only, so a text of nothing but names stays linear.
        j = i + 1
        while j < min(i + 6, len(self.tokens)) and self.tokens[j].is_title:
            if self.tokens[j].key in self.rules.place_after:
                return True
            j += 1
        return j < len(self.tokens) and self.tokens[j].key in self.rules.place_after

    def _surname_like(self, i: int) -> bool:
        tok = self.tokens[i]
        return (tok.is_title or tok.is_upper) and not self.never(i) and not self.kept(i)

    # -- extension: surnames, initials, particles, hyphens ------------------------------

    def extend(self, i: int, cue: Cue | None, quoted: bool) -> tuple[int, int]:
        if cue == "nickname" and quoted:
            return i, self._to_closing_quote(i)
        first, last = i, i + max(self._nickname_prefix(i) - 1, 0)
        while first > 0 and self._initial_at(first - 1):
            first -= 1
        added = 0
        while added < 4 and last + 1 < len(self.tokens):
            step = self._extension_step(last + 1)
            if step == 0:
                break
            last += step
            added += 1
        return first, last

    def _to_closing_quote(self, i: int) -> int:
        last = i
        for j in range(i, min(i + 6, len(self.tokens))):
            if self.tokens[j].text in _QUOTES:
                return last
            last = j
        return i

    def _initial_at(self, j: int) -> bool:
        tok = self.tokens[j]
        return tok.is_initial or (
            len(tok.text) == 1 and tok.text.isupper() and not self.never(j) and not self.kept(j)
        )

    def _extension_step(self, j: int) -> int:
        """How many tokens from j continue the name (0: the name has ended)."""
        if self._initial_at(j) or self._surname_like(j):
            return 1
        tok, prev = self.tokens[j], self.tokens[j - 1]
        after = j + 1
        if tok.text in {"-", "‐"} and prev.end == tok.start and tok.end == self._start_of(after):
            return 2 if self._surname_like_at(after) else 0
        # "Maria de la Cruz": lower-case particles count only with a surname after them.
        while (
            after - j < 3
            and self.tokens[after - 1].is_lower
            and (self.tokens[after - 1].key in self.rules.particles)
        ):
            if self._surname_like_at(after):
                return after - j + 1
            after += 1
        return 0

    def _start_of(self, j: int) -> int:
        return self.tokens[j].start if j < len(self.tokens) else -1

    def _surname_like_at(self, j: int) -> bool:
        return j < len(self.tokens) and self._surname_like(j)

    # -- all together -------------------------------------------------------------------

    def spans(self) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        i = 0
        while i < len(self.tokens):
            is_name, cue, quoted = self.seed(i)
            if not is_name:
                i += 1
                continue
            first, last = self.extend(i, cue, quoted)
            found.append((self.tokens[first].start, self.tokens[last].end))
            i = last + 1
        return found


# --------------------------------------------------------------------------------------
# Spans
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    kind: Kind | None  # None: a placeholder already in the text, never touched


def _regex_batches(text: str, rules: _Rules) -> list[list[_Span]]:
    batches: list[list[_Span]] = []
    for kind, pattern in rules.patterns:
        batch: list[_Span] = []
        for match in pattern.finditer(text):
            group = "pii" if "pii" in pattern.groupindex and match.group("pii") else 0
            start, end = match.span(group)
            if end > start:
                batch.append(_Span(start, end, kind))
        batches.append(batch)
    return batches


def _add_batch(accepted: list[_Span], batch: list[_Span]) -> list[_Span]:
    """Add the spans of ``batch`` that overlap nothing already accepted.

    Both lists are sorted by start and free of overlaps within themselves (one regex's
    matches, or the names), so one linear walk suffices even for huge texts. Earlier
    batches win: placeholders, then patterns in data order, then names.
    """
    kept: list[_Span] = []
    j = 0
    for span in batch:
        while j < len(accepted) and accepted[j].end <= span.start:
            j += 1
        if j < len(accepted) and accepted[j].start < span.end:
            continue
        kept.append(span)
    return sorted([*accepted, *kept], key=lambda s: s.start)


_JOINERS: dict[Kind, re.Pattern[str]] = {
    "name": re.compile(r"[ \t]*"),
    "address": re.compile(r"[ \t]*,?[ \t]*"),
}


def _merge_neighbours(text: str, spans: list[_Span]) -> list[_Span]:
    # "1234 W Elm St, Apt 4B" and "Jessica" + "Alvarez" each become one placeholder.
    merged: list[_Span] = []
    for span in spans:  # already sorted by start
        last = merged[-1] if merged else None
        joiner = _JOINERS.get(span.kind) if span.kind else None
        if (
            last
            and joiner
            and last.kind == span.kind
            and joiner.fullmatch(text, last.end, span.start)
        ):
            merged[-1] = _Span(last.start, span.end, span.kind)
        else:
            merged.append(span)
    return merged


_CHUNK = 100_000


def _chunks(text: str) -> list[tuple[int, int]]:
    """Cut long texts at line breaks (else spaces) into pieces of about _CHUNK characters.

    Names and numbers do not run across lines, and small pieces keep time and memory linear
    for a pasted log of megabytes.
    """
    bounds: list[tuple[int, int]] = []
    start = 0
    while len(text) - start > _CHUNK:
        cut = text.rfind("\n", start + _CHUNK // 2, start + _CHUNK)
        if cut < 0:
            cut = text.rfind(" ", start + _CHUNK // 2, start + _CHUNK)
        end = cut + 1 if cut >= 0 else start + _CHUNK
        bounds.append((start, end))
        start = end
    bounds.append((start, len(text)))
    return bounds


def _find_spans_in(text: str, start: int, end: int) -> list[_Span]:
    if start == 0 and end == len(text):
        return _find_stable(text)
    return [_Span(s.start + start, s.end + start, s.kind) for s in _find_stable(text[start:end])]


_MAX_PASSES = 3


def _find_stable(text: str) -> list[_Span]:
    """Spans to remove, looked for again in the scrubbed text until nothing new turns up.

    Taking a span out changes what is around it (a line stops looking like a heading, a
    word loses the name it was next to), so one pass can leave something a second pass
    would remove. Repeating here makes scrubbing a scrubbed text change nothing.
    """
    placeholders = _rules().placeholders
    spans = _find_spans(text)
    for _ in range(_MAX_PASSES):
        extra = _find_spans(_render(text, spans, placeholders))
        if not extra:
            break
        back = _to_original(extra, spans, placeholders)
        spans = _merge_neighbours(text, sorted([*spans, *back], key=lambda s: s.start))
    return spans


def _to_original(
    extra: list[_Span], spans: list[_Span], placeholders: dict[Kind, str]
) -> list[_Span]:
    """Map spans found in the rendered text back to the original text.

    They never overlap a placeholder (placeholders are protected), so each one moves by
    the length change of the placeholders before it.
    """
    mapped: list[_Span] = []
    shift = 0  # rendered offset minus original offset, for text after span k
    k = 0
    for span in extra:
        while k < len(spans):
            done = spans[k]
            assert done.kind is not None  # nosec B101 # _find_spans returns only spans with a kind
            rendered_end = done.start + shift + len(placeholders[done.kind])
            if rendered_end > span.start:
                break
            shift += len(placeholders[done.kind]) - (done.end - done.start)
            k += 1
        mapped.append(_Span(span.start - shift, span.end - shift, span.kind))
    return mapped


def _find_spans(text: str) -> list[_Span]:
    rules = _rules()
    accepted = [_Span(*m.span(), None) for m in rules.placeholder_re.finditer(text)]
    for batch in _regex_batches(text, rules):
        accepted = _add_batch(accepted, batch)
    names = _NameFinder(_tokenize(text), rules).spans()
    accepted = _add_batch(accepted, [_Span(start, end, "name") for start, end in names])
    return [s for s in _merge_neighbours(text, accepted) if s.kind is not None]


def _render(text: str, spans: list[_Span], placeholders: dict[Kind, str]) -> str:
    parts: list[str] = []
    cursor = 0
    for span in spans:
        assert span.kind is not None  # nosec B101 # _find_spans returns only spans with a kind
        parts.append(text[cursor : span.start])
        parts.append(placeholders[span.kind])
        cursor = span.end
    parts.append(text[cursor:])
    return "".join(parts)


def scrub(text: str) -> ScrubResult:
    """Replace names, phones, emails, addresses, birth dates and ID numbers with placeholders.

    Offsets in ``removed`` index ``text`` (the original). Placeholders already present
    (from an earlier scrub) are left as they are, so scrubbing twice changes nothing more.
    """
    if not text:
        return ScrubResult(text="", removed=[])
    spans = [span for start, end in _chunks(text) for span in _find_spans_in(text, start, end)]
    removed = [Removed(kind=s.kind, start=s.start, end=s.end) for s in spans if s.kind]
    return ScrubResult(text=_render(text, spans, _rules().placeholders), removed=removed)
