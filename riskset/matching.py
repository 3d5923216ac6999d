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
from functools import partial
from itertools import compress
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
    # Where each token starts in the text, and whether a space follows it: the reader's, to
    # quote a span's words without building spaCy Spans.
    offsets: Sequence[int] = ()
    spaces: Sequence[bool] = ()
    # Per token: a clause end, and a word a gap (..N) may pass over. Computed here when not
    # given; the reader gives them, having worked them out once per distinct word.
    stops: Sequence[bool] = ()
    skippable: Sequence[bool] = ()
    # The text the tokens came from, when they do not cover all of it (the reader leaves out
    # quote marks): quotes are cut from it.
    text: str = ""
    # Per token, whether it was inside quote marks (empty when the text held none).
    quoted: Sequence[bool] = ()
    # What the whole text holds, which each rule set asks before it matches anything.
    norm_set: frozenset[str] = field(init=False, repr=False)
    text_set: frozenset[str] = field(init=False, repr=False)
    # Where the numbers and capitals are: patterns that start with one wake only there.
    numbers_at: frozenset[int] = field(init=False, repr=False)
    titles_at: frozenset[int] = field(init=False, repr=False)
    # Where each word is: a pattern armed by a text is tried only where it can start.
    where: dict[str, list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        where: dict[str, list[int]] = {}
        for i, norm in enumerate(self.norms):
            where.setdefault(norm, []).append(i)
        facts: dict[str, object] = {
            "norm_set": frozenset(where),
            "where": where,
            "text_set": frozenset(self.texts),
            "numbers_at": frozenset(compress(range(len(self.norms)), self.like_num)),
            "titles_at": frozenset(compress(range(len(self.norms)), self.is_title)),
        }
        if len(self.stops) != len(self.norms):
            kinds = [token_kind(n, t) for n, t in zip(self.norms, self.texts, strict=True)]
            facts["stops"] = [stop for stop, _ in kinds]
            facts["skippable"] = [skip for _, skip in kinds]
        # (Set here, not as cached properties: a new Tokens per text, and a cached property's
        # first read takes a lock on Python 3.11.)
        for name, value in facts.items():
            object.__setattr__(self, name, value)

    def quote(self, start: int, end: int) -> tuple[str, int, int]:
        """The words of tokens start..end as they are in the text, and their character span."""
        first = self.offsets[start]
        if self.text:
            last = self.offsets[end - 1] + len(self.texts[end - 1])
            return self.text[first:last], first, last
        texts, spaces = self.texts, self.spaces
        words = "".join(texts[i] + " " * spaces[i] for i in range(start, end - 1)) + texts[end - 1]
        return words, first, first + len(words)

    def __len__(self) -> int:
        return len(self.norms)


Test = Callable[[Tokens, int], bool]


def token_kind(norm: str, text: str) -> tuple[bool, bool]:
    """Whether a token ends a clause, and whether a gap (..N) may pass over it: a gap stops at
    a clause end and at a negation, which must stay visible ("won't do anything tonight")."""
    stop = norm in CLAUSE_ENDS or "\n" in text
    return stop, not stop and norm not in NEGATIONS


@dataclass(frozen=True)
class Starts:
    """What the first token of a match can be: lets a token wake only the patterns it can start."""

    words: frozenset[str] = frozenset()
    exact: frozenset[str] = frozenset()
    prefixes: frozenset[str] = frozenset()
    number: bool = False
    title: bool = False
    anything: bool = False
    # Regexes a first word must match ("/^[0-9]+cc$/"): asked of each distinct word of a
    # text, not tried as a match at every token.
    regexes: frozenset[re.Pattern[str]] = frozenset()

    def __or__(self, other: Starts) -> Starts:
        return Starts(
            self.words | other.words,
            self.exact | other.exact,
            self.prefixes | other.prefixes,
            self.number or other.number,
            self.title or other.title,
            self.anything or other.anything,
            self.regexes | other.regexes,
        )

    @property
    def beyond_lists(self) -> bool:
        """Whether a first token may be something no word list names (any word, a number, a
        capital, a prefix, a regex): such starts can neither anchor nor screen a pattern."""
        return bool(self.anything or self.number or self.title or self.prefixes or self.regexes)


@dataclass(frozen=True)
class Slot:
    """One position of a pattern: alternatives (each a sequence of tests), or a gap."""

    choices: tuple[tuple[Test, ...], ...] = ()
    optional: bool = False
    gap: int = 0  # >0: up to this many words
    starts: Starts = Starts(anything=True)
    # When every choice is one plain word: the words, tested without calling anything.
    words: frozenset[str] | None = None


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


def check_choices(pattern: str) -> None:
    """Refuse a pattern whose choices look like phrases written without parentheses.

    "can not|cannot stop" is read slot by slot as "can", "not|cannot", "stop": it loads, and
    never matches "cannot stop". The telltale is one word offered in two choice slots side by
    side ("cant|couldnt find|hit" is fine; "moved in|moved back in" offers "moved" twice). A
    slot meant as written can be put in parentheses, which this check trusts.
    """
    slots = slots_of(pattern)
    offered = [_bare_choice_words(slot) for slot in slots]
    for i in range(len(slots) - 1):
        both = offered[i] & offered[i + 1]
        if both:
            raise PatternError(
                f"{pattern!r}: {sorted(both)[0]!r} is a choice in both {slots[i]!r} and"
                f" {slots[i + 1]!r}; a choice of several words needs parentheses"
                " ('(can not|cannot) stop'), and a slot meant as written can be put in them"
            )


def _bare_choice_words(slot: str) -> frozenset[str]:
    """The one-word choices of a slot of choices written without parentheses around it."""
    body = slot[:-1] if slot.endswith("?") else slot
    if body.startswith("/") or len(split_top(body)) < 2:  # a regex, one choice, or (...)
        return frozenset()
    return frozenset(words[0] for _, words in _choices(body) if len(words) == 1)


def split_clitic(word: str) -> list[str]:
    # The tokenizer reads "friend's" as "friend" + "'s"; so must the patterns.
    if len(word) > 2 and word.count("'") == 1 and word[0].isalnum():
        if word.endswith("'s"):
            return [word[:-2], "'s"]
        if word.endswith("s'"):
            return [word[:-1], "'"]
    return [word]


_WORD = re.compile(r"[^\s|()]+")
_REGEX_SLOT = re.compile(r"(?<!\S)/\S+/\??(?!\S)")


def retokenise(pattern: str, split: Callable[[str], list[str] | None]) -> str:
    """The pattern with each word written as the tokenizer reads it in a text.

    The tokenizer reads "gonna" as "gon" + "na" (normalised "going to"), "w/d" as three tokens
    and "co-worker" as three: a rule word it would split could never match. ``split`` gives a
    word's tokens' normalised forms, or None when the word stays one token.
    """

    # A /regex/ is left as written: its | and ( ) are the regex's own.
    regexes = [m.span() for m in _REGEX_SLOT.finditer(pattern)]

    def rewrite(match: re.Match[str]) -> str:
        word = match.group()
        if any(start <= match.start() < end for start, end in regexes):
            return word
        optional = word.endswith("?") and len(word) > 1
        bare = word[:-1] if optional else word
        if not is_plain(bare):
            return word
        parts = split(bare)
        if parts is None:
            return word
        inside = pattern.count("(", 0, match.start()) > pattern.count(")", 0, match.start())
        phrase = " ".join(parts)
        # In a phrase the tokens simply follow on; as one of a slot's choices they need
        # parentheses to stay one choice.
        if inside and not optional:
            return phrase
        return f"({phrase})" + ("?" if optional else "")

    return _WORD.sub(rewrite, pattern)


def is_plain(word: str) -> bool:
    special = word.startswith(("=", "#", "..", "\\", "/")) or word in ("*", "Title")
    return not (special or word.endswith("*"))


def _choices(body: str) -> list[tuple[str, list[str]]]:
    """A slot's choices, each as written and as the tokens it stands for: "a|(b c)|d's" is
    a, "b c" and "d 's"."""
    choices: list[tuple[str, list[str]]] = []
    for alt in split_top(body):
        inner = alt[1:-1] if alt.startswith("(") and alt.endswith(")") else alt
        for phrase in split_top(inner):
            choices.append((phrase, [w for word in phrase.split() for w in split_clitic(word)]))
    return choices


def phrases_of(pattern: str, norm: Callable[[str], str]) -> list[tuple[str, ...]] | None:
    """The word sequences a pattern stands for, if it is only words, choices and optionals."""
    variants: list[tuple[str, ...]] = [()]
    for slot in slots_of(pattern):
        optional = slot.endswith("?") and slot != "\\?"
        body = slot[:-1] if optional else slot
        choices: list[tuple[str, ...]] = []
        for _, words in _choices(body):
            if not all(is_plain(w) for w in words):
                return None
            choices.append(tuple(norm(w) for w in words))
        if optional:
            choices.append(())
        variants = [v + c for v in variants for c in choices]
        if len(variants) > MAX_PHRASES:
            return None
    return [v for v in variants if v]


# Token tests are module functions (bound with partial), not lambdas, so a compiled rule set
# can be pickled into the start-up snapshot.
def _is_question(t: Tokens, i: int) -> bool:
    return t.texts[i] == "?"


def _inside_clause(t: Tokens, i: int) -> bool:
    return not t.stops[i]


def _is_title(t: Tokens, i: int) -> bool:
    return t.is_title[i]


def _is_number(t: Tokens, i: int) -> bool:
    return t.like_num[i]


def _text_is(exact: str, t: Tokens, i: int) -> bool:
    return t.texts[i] == exact


def _norm_search(rx: re.Pattern[str], t: Tokens, i: int) -> bool:
    return rx.search(t.norms[i]) is not None


def _norm_starts(prefix: str, t: Tokens, i: int) -> bool:
    return t.norms[i].startswith(prefix)


def _norm_in(words: frozenset[str], t: Tokens, i: int) -> bool:
    return t.norms[i] in words


def _test(word: str, norm: Callable[[str], str]) -> tuple[Test, Starts]:
    """A token test, and what tokens it can accept (for indexing)."""
    if word == "\\?":
        return _is_question, Starts(words=frozenset({"?"}))
    if word == "*":
        return _inside_clause, Starts(anything=True)
    if word == "Title":
        return _is_title, Starts(title=True)
    if word == "#":
        return _is_number, Starts(number=True)
    if word.startswith("=") and len(word) > 1:
        exact = word[1:]
        return partial(_text_is, exact), Starts(exact=frozenset({exact}))
    if len(word) > 2 and word.startswith("/") and word.endswith("/"):
        rx = re.compile(word[1:-1])
        return partial(_norm_search, rx), _regex_starts(word[1:-1])
    if word.endswith("*") and len(word) > 1:
        prefix = norm(word[:-1])
        starts = Starts(prefixes=frozenset({prefix})) if prefix else Starts(anything=True)
        return partial(_norm_starts, prefix), starts
    words = frozenset(norm(w) for w in word.split("|"))
    return partial(_norm_in, words), Starts(words=words)


def _regex_starts(rx: str) -> Starts:
    """A regex anchored with ^ and a literal start can only wake on words with that start."""
    literal = re.match(r"\^([a-z0-9']+)", rx)
    if literal is None:
        return Starts(regexes=frozenset({re.compile(rx)}))
    prefix = literal.group(1)
    if rx[literal.end() : literal.end() + 1] in ("?", "*", "{"):
        prefix = prefix[:-1]  # the last letter is optional: not part of every match
    return Starts(prefixes=frozenset({prefix})) if prefix else Starts(anything=True)


def compile_slot(slot: str, norm: Callable[[str], str]) -> Slot:
    optional = slot.endswith("?") and slot != "\\?"
    body = slot[:-1] if optional else slot
    if body.startswith("..") and body[2:].isdigit():
        return Slot(gap=int(body[2:]), optional=True)
    plain: list[str] = []
    choices: list[tuple[Test, ...]] = []
    starts = Starts()
    for _, words in _choices(body):
        if len(words) == 1 and is_plain(words[0]):
            plain.append(words[0])
            continue
        tests = [_test(w, norm) for w in words]
        choices.append(tuple(t for t, _ in tests))
        starts |= tests[0][1]
    only_words = None
    if plain:
        test, first = _test("|".join(plain), norm)
        choices.insert(0, (test,))
        starts |= first
        if len(choices) == 1:
            only_words = first.words
    return Slot(choices=tuple(choices), optional=optional, starts=starts, words=only_words)


def _anchor(slot: Slot) -> tuple[str, frozenset[str]] | None:
    """The words ("norm") or exact texts ("text") one of which a required slot's match must
    start with, when its possible first tokens are only those."""
    starts = slot.starts
    if starts.beyond_lists:
        return None
    if starts.words and not starts.exact:
        return "norm", starts.words
    if starts.exact and not starts.words:
        return "text", starts.exact
    return None


@dataclass(eq=False)  # hashed by identity: a set of armed patterns holds the patterns themselves
class _Compiled:
    key: str
    slots: tuple[Slot, ...]
    # The words the token after a start can be, when the pattern says (see _next_words).
    second: frozenset[str] | None = None
    # How many of the first slots a start's position already satisfies.
    skip: int = 0
    # Word lists (and exact texts) of which the text must hold at least one each for a match
    # to be possible: a set test per document turns away most patterns before any matching.
    needs: tuple[frozenset[str], ...] = ()
    needs_text: tuple[frozenset[str], ...] = ()
    # What a match's first token can be.
    starts: Starts = Starts(anything=True)

    def __post_init__(self) -> None:
        anchors = [_anchor(slot) for slot in self.slots if not slot.optional and not slot.gap]
        self.needs = tuple(sorted((a[1] for a in anchors if a and a[0] == "norm"), key=len))
        self.needs_text = tuple(a[1] for a in anchors if a and a[0] == "text")
        self.starts = _starts_of(self.slots)
        first = self.slots[0]
        if first.optional or first.gap or any(len(choice) != 1 for choice in first.choices):
            return
        # The first slot takes one word, so the word after a start must be one the rest of the
        # pattern can begin with: a set test that turns most starts away.
        self.second = _next_words(self.slots[1:])
        if first.words is None:
            return
        # A start is only ever tried where one of the first slot's words is, so matching
        # begins at the second slot (or the third, once the second word has been checked).
        self.skip = 1
        if len(self.slots) > 1 and not self.slots[1].optional and self.slots[1].words is not None:
            self.skip = 2

    def arm(self) -> tuple[str, frozenset[str]] | None:
        """The word list (or exact texts) whose presence arms this pattern for a text: of the
        lists it cannot do without, the one least likely in any text, so that a common first
        word ("no", "he") does not wake it everywhere. The rest stay in ``needs``, to be
        checked once the pattern is armed."""
        lists = [("norm", words) for words in self.needs]
        lists += [("text", texts) for texts in self.needs_text]
        if not lists:
            return None
        kind, words = min(lists, key=lambda kind_words: _commonness(kind_words[1]))
        if kind == "norm":
            self.needs = tuple(other for other in self.needs if other is not words)
        else:
            self.needs_text = tuple(other for other in self.needs_text if other is not words)
        return kind, words

    def start_positions(self, t: Tokens) -> Iterable[int]:
        """Where in the text a match of this pattern could start."""
        starts = self.starts
        if starts.anything:
            return range(len(t))
        at: list[int] = []
        for word in t.norm_set.intersection(starts.words):
            at += t.where[word]
        if starts.exact and not t.text_set.isdisjoint(starts.exact):
            at += (i for i, text in enumerate(t.texts) if text in starts.exact)
        if starts.prefixes:
            at += (i for i, norm in enumerate(t.norms) if norm.startswith(tuple(starts.prefixes)))
        if starts.number:
            at += t.numbers_at
        if starts.title:
            at += t.titles_at
        for rx in starts.regexes:
            at += (i for norm, places in t.where.items() if rx.search(norm) for i in places)
        kinds = bool(starts.words) + bool(starts.exact) + bool(starts.prefixes)
        kinds += len(starts.regexes)
        return set(at) if kinds + starts.number + starts.title > 1 else at

    def longest(self, t: Tokens, start: int) -> int:
        """The end of the longest match starting at start, or -1."""
        norms = t.norms
        n = len(norms)
        frontier = {start + self.skip}
        for slot in self.slots[self.skip :]:
            words = slot.words
            if words is not None and not slot.optional and len(frontier) == 1:
                # The common case, one place to go on from and a word list: no sets built.
                (pos,) = frontier
                if pos < n and norms[pos] in words:
                    frontier = {pos + 1}
                    continue
                return -1
            reached: set[int] = set(frontier) if slot.optional else set()
            if words is not None:
                reached.update(pos + 1 for pos in frontier if pos < n and norms[pos] in words)
            elif slot.gap:
                skippable = t.skippable
                for pos in frontier:
                    stop = pos
                    while stop < n and stop - pos < slot.gap and skippable[stop]:
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


def _first_slot_apart(pattern: str) -> list[str]:
    """A pattern whose required first slot mixes single words with phrases or tests ("her|his|
    d's friend ..."), as one pattern per kind: the same matches, and each part knows the one
    word its start must be and what may follow it."""
    slots = slots_of(pattern)
    first = slots[0]
    if first.endswith("?") or first.startswith("..") or "/" in first:
        return [pattern]
    singles: list[str] = []
    others: list[tuple[str, list[str]]] = []
    for phrase, words in _choices(first):
        if len(words) == 1 and is_plain(words[0]):
            singles.append(words[0])
        else:
            others.append((phrase, words))
    if not others:
        return [pattern]
    rest = slots[1:]
    parts = [" ".join(["|".join(singles), *rest])] if singles else []
    for phrase, words in others:
        # A phrase of plain words becomes one slot a word: its second word then screens starts.
        plain = all(is_plain(w) for w in words)
        parts.append(" ".join([phrase if plain else f"({phrase})", *rest]))
    return parts if len(parts) > 1 or parts[0] != pattern else [pattern]


def _next_words(slots: tuple[Slot, ...]) -> frozenset[str] | None:
    """The words a match of these slots can begin with, or None when that is not a word list
    (a gap, a test, or nothing required at all)."""
    words: frozenset[str] = frozenset()
    for slot in slots:
        starts = slot.starts
        if slot.gap or starts.beyond_lists or starts.exact:
            return None
        words |= starts.words
        if not slot.optional:
            return words
    return None


def _may_match(compiled: _Compiled, norms: frozenset[str], texts: frozenset[str]) -> bool:
    """False when a word the pattern cannot do without is nowhere in the text."""
    for words in compiled.needs:
        if norms.isdisjoint(words):
            return False
    return not compiled.needs_text or all(not texts.isdisjoint(e) for e in compiled.needs_text)


# Words and marks in nearly every text (the commonest English words, and punctuation):
# a pattern is armed by a word it needs that is not one of these where it has the choice.
_COMMON = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "him",
        "his",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "they",
        "this",
        "to",
        "too",
        "was",
        "we",
        "were",
        "what",
        "when",
        "which",
        "who",
        "will",
        "with",
        "would",
        "you",
        "your",
        "'s",
        ",",
        ".",
        "?",
        "!",
        "-",
        "(",
        ")",
        ":",
    }
)


# Words in about one narrative in ten or more, counted over the project's own labelled sets:
# a pattern needing one of these is better armed by a rarer word it also needs.
_FREQUENT = frozenset(
    {
        "says",
        "last",
        "out",
        "since",
        "up",
        "now",
        "use",
        "after",
        "just",
        "got",
        "day",
        "off",
        "about",
        "back",
        "wants",
        "going",
        "night",
        "never",
        "week",
        "days",
        "can",
        "used",
        "get",
        "years",
        "took",
        "ago",
        "lives",
        "narcan",
        "fent",
        "dope",
        "denies",
        "smokes",
        "drinks",
        "+",
        "/",
        "m",
        "2",
        "3",
    }
)


def _commonness(words: frozenset[str]) -> int:
    return sum(100 if word in _COMMON else 10 if word in _FREQUENT else 1 for word in words)


def _starts_of(slots: tuple[Slot, ...]) -> Starts:
    """What a match's first token can be (an optional slot lets the next one start)."""
    starts = Starts()
    for slot in slots:
        if slot.gap:
            return Starts(anything=True)
        starts |= slot.starts
        if not slot.optional:
            return starts
    return Starts(anything=True)


@dataclass
class _Arming:
    """Which patterns a text arms, by the words and exact texts in it."""

    by_norm: dict[str, list[_Compiled]] = field(default_factory=dict)
    by_text: dict[str, list[_Compiled]] = field(default_factory=dict)
    always: list[_Compiled] = field(default_factory=list)
    # The keys of by_norm and by_text as sets, made on first use after the last add.
    words: tuple[frozenset[str], frozenset[str]] | None = None

    def add(self, compiled: _Compiled) -> None:
        trigger = compiled.arm()
        if trigger is None:
            self.always.append(compiled)
            return
        kind, words = trigger
        index = self.by_norm if kind == "norm" else self.by_text
        for word in words:
            index.setdefault(word, []).append(compiled)
        self.words = None

    def armed_by(self, t: Tokens) -> set[_Compiled]:
        if self.words is None:
            self.words = frozenset(self.by_norm), frozenset(self.by_text)
        norms, texts = self.words
        armed = set(self.always)
        for word in t.norm_set & norms:
            armed.update(self.by_norm[word])
        if texts:
            for text in t.text_set & texts:
                armed.update(self.by_text[text])
        return armed


@dataclass
class RuleSet:
    """Patterns under keys. Calling it returns every (key, start, end) match, longest per start.

    Plain phrases are walked along a trie from each word; every other pattern waits until the
    text holds the rarest word it cannot do without, and is then tried only where its first
    word is: most texts arm a few dozen of the hundreds of patterns.
    """

    norm: Callable[[str], str]
    _trie: dict[str, Any] = field(default_factory=dict)
    _arming: _Arming = field(default_factory=_Arming)

    def add(self, key: str, patterns: Iterable[str]) -> None:
        for pattern in patterns:
            check_choices(pattern)
            phrases = phrases_of(pattern, self.norm)
            if phrases is not None:
                for phrase in phrases:
                    self._insert(phrase, key)
                continue
            parts = _first_slot_apart(pattern)
            if len(parts) > 1:
                self.add(key, parts)
                continue
            slots = tuple(compile_slot(s, self.norm) for s in slots_of(pattern))
            self._arming.add(_Compiled(key, slots))

    def _insert(self, phrase: tuple[str, ...], key: str) -> None:
        node = self._trie
        for word in phrase:
            node = node.setdefault(word, {})
        keys: set[str] = node.setdefault(KEYS, set())
        keys.add(key)

    def __call__(self, t: Tokens) -> list[tuple[str, int, int]]:
        found: dict[tuple[str, int], int] = {}
        norms = t.norms
        n = len(norms)
        trie = self._trie
        for start, norm in enumerate(norms):
            node = trie.get(norm)
            if node is None:  # most words start no phrase: one dict lookup turns them away
                continue
            end = start + 1
            while True:
                for key in node.get(KEYS, ()):
                    if found.get((key, start), 0) < end:
                        found[(key, start)] = end
                if end >= n:
                    break
                node = node.get(norms[end])
                if node is None:
                    break
                end += 1
        present, present_text = t.norm_set, t.text_set
        for compiled in self._arming.armed_by(t):
            if not _may_match(compiled, present, present_text):
                continue
            second = compiled.second
            for start in compiled.start_positions(t):
                if second is not None and (start + 1 >= n or norms[start + 1] not in second):
                    continue
                end = compiled.longest(t, start)
                if end > start and found.get((compiled.key, start), 0) < end:
                    found[(compiled.key, start)] = end
        # In text order, then by key: the same answer in every process, whatever the order
        # of the sets and snapshots the patterns came through.
        return sorted((key, start, end) for (key, start), end in found.items())
