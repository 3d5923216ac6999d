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
from functools import cache, partial
from itertools import compress
from typing import Any

NEGATIONS = frozenset({"not", "no", "never", "nobody", "nothing", "none", "without"})
KEYS = "\0keys"  # where a trie node keeps the keys of the phrases that end there
CLAUSE_ENDS = frozenset({".", "!", "?", ";", ":", "(", ")", "...", "…"})
MAX_PHRASES = 50_000


class PatternError(ValueError):
    """A pattern in a rule file that cannot be read."""


class Tokens:
    """What the matcher needs of a document: one entry per token.

    (A plain class with slots, not a frozen dataclass: one is made per text, and setting a
    frozen dataclass's fields one by one costs more than some of the matching.)
    """

    __slots__ = (
        "_places",
        "boundaries",
        "is_title",
        "last",
        "like_num",
        "norm_set",
        "norms",
        "offsets",
        "quoted",
        "skippable",
        "spaces",
        "stops",
        "text",
        "text_set",
        "texts",
    )

    def __init__(
        self,
        norms: Sequence[str],
        texts: Sequence[str],
        like_num: Sequence[bool],
        is_title: Sequence[bool],
        offsets: Sequence[int] = (),
        spaces: Sequence[bool] = (),
        stops: Sequence[bool] = (),
        skippable: Sequence[bool] = (),
        text: str = "",
        quoted: Sequence[bool] = (),
        boundaries: Sequence[bool] = (),
    ) -> None:
        self.norms = norms
        self.texts = texts
        self.like_num = like_num
        self.is_title = is_title
        # Where each token starts in the text, and whether a space follows it: the reader's,
        # to quote a span's words without building spaCy Spans.
        self.offsets = offsets
        self.spaces = spaces
        # Per token: a clause end, and a word a gap (..N) may pass over. Worked out here when
        # not given; the reader gives them, having worked them out once per distinct word.
        if len(stops) != len(norms):
            kinds = [token_kind(n, t) for n, t in zip(norms, texts, strict=True)]
            stops = [stop for stop, _ in kinds]
            skippable = [skip for _, skip in kinds]
        self.stops = stops
        self.skippable = skippable
        # The text the tokens came from, when they do not cover all of it (the reader leaves
        # out quote marks): quotes are cut from it.
        self.text = text
        # Per token, whether it was inside quote marks (empty when the text held none).
        self.quoted = quoted
        # Per token, whether the reader's clause rules should look at it (empty: every token).
        self.boundaries = boundaries
        # Where each word last is (in C, one dict from zip: the words' places are asked only
        # for the few words a pattern can start with, see places()).
        self.last = dict(zip(norms, range(len(norms)), strict=True))
        # What the whole text holds, which each rule set asks before it matches anything.
        self.norm_set = frozenset(self.last)
        self._places: dict[str, list[int]] = {}
        self.text_set = frozenset(texts)

    def places(self, norm: str) -> list[int]:
        """Where in the text a word (present in it) is."""
        known = self._places.get(norm)
        if known is not None:
            return known
        norms = self.norms
        if len(norms) > _LONG_TEXT:
            # A long text asks for many words, and a search per word would cost its length
            # each time: one pass finds every word's places.
            self._places = _places_of_all(norms)
            return self._places[norm]
        first, last = norms.index(norm), self.last[norm]
        found = [i for i in range(first, last + 1) if norms[i] == norm] if first < last else [last]
        self._places[norm] = found
        return found

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
_LONG_TEXT = 200  # tokens: beyond this, all words' places are found at once


def _places_of_all(norms: Sequence[str]) -> dict[str, list[int]]:
    places: dict[str, list[int]] = {}
    for i, norm in enumerate(norms):
        found = places.get(norm)
        if found is None:
            places[norm] = [i]
        else:
            found.append(i)
    return places


def token_kind(norm: str, text: str) -> tuple[bool, bool]:
    """Whether a token ends a clause, and whether a gap (..N) may pass over it: a gap stops at
    a clause end and at a negation, which must stay visible ("won't do anything tonight")."""
    stop = norm in CLAUSE_ENDS or "\n" in text
    return stop, not stop and norm not in NEGATIONS


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Slot:
    """One position of a pattern: alternatives (each a sequence of tests), or a gap."""

    # Choices that need a test of their own (a number, a capital, a prefix, a regex...).
    choices: tuple[tuple[Test, ...], ...] = ()
    optional: bool = False
    gap: int = 0  # >0: up to this many words
    starts: Starts = Starts(anything=True)
    # When every choice is one plain word: the words, tested without calling anything.
    words: frozenset[str] | None = None
    # The choices of plain words, as a trie of their words (KEYS marks where one ends): a
    # slot of many phrases is walked word by word, not tried phrase by phrase.
    phrases: dict[str, Any] | None = None
    # Whether every choice takes exactly one token.
    one_token: bool = False


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


@cache  # many patterns share slots ("her|his|my", "..3"): one object each, a smaller snapshot
def compile_slot(slot: str, norm: Callable[[str], str]) -> Slot:
    optional = slot.endswith("?") and slot != "\\?"
    body = slot[:-1] if optional else slot
    if body.startswith("..") and body[2:].isdigit():
        return Slot(gap=int(body[2:]), optional=True)
    plain: list[tuple[str, ...]] = []
    choices: list[tuple[Test, ...]] = []
    starts = Starts()
    for _, words in _choices(body):
        if all(is_plain(word) for word in words):
            plain.append(tuple(norm(w) for w in words))
            continue
        tests = [_test(w, norm) for w in words]
        choices.append(tuple(t for t, _ in tests))
        starts |= tests[0][1]
    one_token = all(len(phrase) == 1 for phrase in plain) and all(len(c) == 1 for c in choices)
    phrases: dict[str, Any] | None = None
    if plain:
        starts |= Starts(words=frozenset(phrase[0] for phrase in plain))
        phrases = {}
        for phrase in plain:
            node = phrases
            for word in phrase:
                node = node.setdefault(word, {})
            node[KEYS] = True
    only_words = starts.words if plain and one_token and not choices else None
    return Slot(
        choices=tuple(choices),
        optional=optional,
        starts=starts,
        words=only_words,
        phrases=phrases,
        one_token=one_token,
    )


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


@dataclass(eq=False, slots=True)  # hashed by identity: a set of armed patterns holds them
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
    # Whether a match can only start with a word of starts.words.
    word_starts: bool = False
    # The slots after the first skip, as longest() matches them.
    steps: tuple[tuple[Slot, Slot | None], ...] = ()

    def __post_init__(self) -> None:
        anchors = [_anchor(slot) for slot in self.slots if not slot.optional and not slot.gap]
        self.needs = tuple(sorted((a[1] for a in anchors if a and a[0] == "norm"), key=len))
        self.needs_text = tuple(a[1] for a in anchors if a and a[0] == "text")
        self.starts = _starts_of(self.slots)
        self.word_starts = not (self.starts.beyond_lists or self.starts.exact)
        self.skip, self.second = self._first_words_known()
        self.steps = _steps(self.slots[self.skip :])

    def _first_words_known(self) -> tuple[int, frozenset[str] | None]:
        """How many first slots a start's place already satisfies, and the words the token
        after a start can be (None: any)."""
        first = self.slots[0]
        if first.optional or first.gap or not first.one_token:
            return 0, None
        # The first slot takes one word, so the word after a start must be one the rest of the
        # pattern can begin with: a set test that turns most starts away.
        second = _next_words(self.slots[1:])
        if first.words is None:
            return 0, second
        # A start is only ever tried where one of the first slot's words is, so matching
        # begins at the second slot (or the third, once the second word has been checked).
        if len(self.slots) > 1 and not self.slots[1].optional and self.slots[1].words is not None:
            return 2, second
        return 1, second

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
            at += t.places(word)
        if starts.exact and not t.text_set.isdisjoint(starts.exact):
            at += (i for i, text in enumerate(t.texts) if text in starts.exact)
        if starts.prefixes:
            at += (i for i, norm in enumerate(t.norms) if norm.startswith(tuple(starts.prefixes)))
        if starts.number:
            at += compress(range(len(t)), t.like_num)
        if starts.title:
            at += compress(range(len(t)), t.is_title)
        for rx in starts.regexes:
            at += (i for norm in t.last if rx.search(norm) for i in t.places(norm))
        kinds = bool(starts.words) + bool(starts.exact) + bool(starts.prefixes)
        kinds += len(starts.regexes)
        return set(at) if kinds + starts.number + starts.title > 1 else at

    def longest(self, t: Tokens, start: int) -> int:
        """The end of the longest match starting at start, or -1."""
        norms = t.norms
        n = len(norms)
        pos = start + self.skip
        # While there is one place to go on from (nearly always), no sets are built.
        for k, (slot, then) in enumerate(self.steps):
            words = slot.words
            if words is not None and not slot.optional:
                if pos < n and norms[pos] in words:
                    pos += 1
                    continue
                return -1
            ends: list[int] = []
            if then is not None:
                _ends_after_gap(t, pos, slot.gap, then, ends)
            elif slot.gap:
                return self._longest_from(t, {pos}, k)
            else:
                if slot.optional:
                    ends.append(pos)
                _slot_ends(t, pos, slot, ends)
            if len(ends) != 1:
                return self._longest_from(t, set(ends), k + 1) if ends else -1
            pos = ends[0]
        return pos

    def _longest_from(self, t: Tokens, frontier: set[int], k: int) -> int:
        """The end of the longest match of steps k... from any of several places, or -1."""
        for slot, then in self.steps[k:]:
            frontier = _advance(t, frontier, slot)
            if then is not None:
                frontier = _advance(t, frontier, then)
            if not frontier:
                return -1
        return max(frontier)


def _steps(slots: tuple[Slot, ...]) -> tuple[tuple[Slot, Slot | None], ...]:
    """Slots to match one after another, a gap together with the required slot after it
    ("took ..3 fent"): the commonest shape of pattern, matched by looking along the gap."""
    steps: list[tuple[Slot, Slot | None]] = []
    rest = list(slots)
    while rest:
        slot = rest.pop(0)
        after = rest[0] if rest else None
        if slot.gap and after is not None and not (after.gap or after.optional):
            steps.append((slot, after))
            rest.pop(0)
        else:
            steps.append((slot, None))
    return tuple(steps)


def _ends_after_gap(t: Tokens, pos: int, gap: int, then: Slot, ends: list[int]) -> None:
    """Add to ends where a match goes on after up to gap words from pos and then the slot."""
    skippable = t.skippable
    n = len(skippable)
    at = pos
    while at < n:
        _slot_ends(t, at, then, ends)
        if at - pos >= gap or not skippable[at]:
            break
        at += 1


def _slot_ends(t: Tokens, pos: int, slot: Slot, ends: list[int] | set[int]) -> None:
    """Add to ends where each choice of a slot of words, phrases or tests ends from pos."""
    norms = t.norms
    n = len(norms)
    if pos >= n:
        return
    add = ends.append if isinstance(ends, list) else ends.add
    if slot.words is not None:
        if norms[pos] in slot.words:
            add(pos + 1)
        return
    if slot.phrases is not None:
        node = slot.phrases
        for at in range(pos, n):
            child = node.get(norms[at])
            if child is None:
                break
            node = child
            if KEYS in node:
                add(at + 1)
    for tests in slot.choices:
        end = pos
        for test in tests:
            if end >= n or not test(t, end):
                break
            end += 1
        else:
            add(end)


def _advance(t: Tokens, frontier: set[int], slot: Slot) -> set[int]:
    """Where matches go on after one more slot, from each place in frontier."""
    reached: set[int] = set(frontier) if slot.optional else set()
    if slot.gap:
        skippable = t.skippable
        n = len(skippable)
        for pos in frontier:
            stop = pos
            while stop < n and stop - pos < slot.gap and skippable[stop]:
                stop += 1
                reached.add(stop)
        return reached
    for pos in frontier:
        _slot_ends(t, pos, slot, reached)
    return reached


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


def _texts_present(compiled: _Compiled, t: Tokens) -> bool:
    """Whether the text holds one of each list of exact texts the pattern cannot do without."""
    return all(not t.text_set.isdisjoint(texts) for texts in compiled.needs_text)


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
        # (A tuple, not a set: tens of thousands of phrases end somewhere, nearly all under
        # one key, and a start-up snapshot loads tuples faster.)
        keys: tuple[str, ...] = node.get(KEYS, ())
        if key not in keys:
            node[KEYS] = (*keys, key)

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
        present = t.norm_set
        places = t.places
        for compiled in self._arming.armed_by(t):
            # (The common cases inline: this loop runs for dozens of patterns a text.)
            for words in compiled.needs:
                if present.isdisjoint(words):
                    break
            else:
                if compiled.needs_text and not _texts_present(compiled, t):
                    continue
                if compiled.word_starts:
                    starting = present.intersection(compiled.starts.words)
                    at: Iterable[int] = [i for word in starting for i in places(word)]
                else:
                    at = compiled.start_positions(t)
                key = compiled.key
                second = compiled.second
                for start in at:
                    if second is not None and (start + 1 >= n or norms[start + 1] not in second):
                        continue
                    end = compiled.longest(t, start)
                    if end > start and found.get((key, start), 0) < end:
                        found[(key, start)] = end
        # In text order, then by key: the same answer in every process, whatever the order
        # of the sets and snapshots the patterns came through.
        return sorted((key, start, end) for (key, start), end in found.items())
