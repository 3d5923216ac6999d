"""The rule pattern language: what each piece of syntax matches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskset.matching import PatternError, RuleSet, Tokens, phrases_of, retokenise


def tokens(text: str) -> Tokens:
    words = text.split()
    return Tokens(
        norms=[w.lower() for w in words],
        texts=words,
        like_num=[w.isdigit() for w in words],
        is_title=[w.istitle() for w in words],
    )


def matches(pattern: str, text: str) -> list[str]:
    rules = RuleSet(str.lower)
    rules.add("k", [pattern])
    t = tokens(text)
    return sorted(" ".join(t.texts[s:e]) for _, s, e in rules(t))


@pytest.mark.parametrize(
    ("pattern", "text", "found"),
    [
        ("no narcan", "she has no narcan today", ["no narcan"]),
        ("a|two bag|bags", "bought two bags", ["two bags"]),
        ("(in a hurry|rushed)", "did it in a hurry", ["in a hurry"]),
        ("the? shelter", "at the shelter", ["shelter", "the shelter"]),
        ("lost ..2 narcan", "lost my kit , narcan too", []),
        ("lost ..3 narcan", "lost his meds , narcan", ["lost his meds , narcan"]),
        ("lost ..3 narcan", "lost it . narcan", []),
        ("# days straight", "up 4 days straight", ["4 days straight"]),
        ("=K", "did some K and k", ["K"]),
        ("inject*", "injecting daily", ["injecting"]),
        ("his Title? died", "his friend Jimmy died", []),
        ("friend Title? died", "his friend Jimmy died", ["friend Jimmy died"]),
        ("/^g[0-9]p[0-9]/", "G2P1 pt", ["G2P1"]),
        ("friend's couch", "friend 's couch", ["friend 's couch"]),
    ],
)
def test_syntax(pattern: str, text: str, found: list[str]) -> None:
    assert matches(pattern, text) == found


def test_plain_patterns_expand_to_phrases() -> None:
    assert phrases_of("a|b (c d|e)", str.lower) == [
        ("a", "c", "d"),
        ("a", "e"),
        ("b", "c", "d"),
        ("b", "e"),
    ]
    assert phrases_of("a ..2 b", str.lower) is None


def test_longest_match_per_start() -> None:
    assert matches("fent dope?", "fent dope") == ["fent dope"]


def test_broken_pattern_is_refused() -> None:
    with pytest.raises(PatternError):
        RuleSet(str.lower).add("k", ["(a b"])


@pytest.mark.parametrize(
    "pattern",
    [
        "can not|could not|cannot stop",
        "lives|stays|moved in|moved back in with",
        "day|days off|of no|into no|sober",
    ],
)
def test_phrase_choices_without_parentheses_are_refused(pattern: str) -> None:
    # Each loads as slots of single words and would never match the phrase it was meant for.
    with pytest.raises(PatternError, match="needs parentheses"):
        RuleSet(str.lower).add("k", [pattern])


def test_choices_meant_as_written_load_in_parentheses() -> None:
    # "half" as an amount and as what was shot: the same word in two slots, on purpose.
    assert matches("shot (a|half) bag|half", "shot a half") == ["shot a half"]
    assert matches("(can not|cannot) stop|quit", "i cannot stop") == ["cannot stop"]


def test_rule_words_are_rewritten_as_the_tokenizer_reads_them() -> None:
    split = {"gonna": ["going", "to"], "dont": ["do", "not"], "w/d": ["w", "/", "d"]}.get
    # As a slot's choice a split word stays one choice; inside a phrase its tokens follow on.
    assert retokenise("plan|gonna ..2 use", split) == "plan|(going to) ..2 use"
    assert retokenise("(dont know what|no idea what)", split) == "(do not know what|no idea what)"
    assert retokenise("w/d? sick", split) == "(w / d)? sick"
    # Special words are left alone.
    assert retokenise("=Gonna pre* /gonna/", split) == "=Gonna pre* /gonna/"
    # A regex keeps its own | and ( ), even where they hold words the tokenizer would split.
    regex = "used ..3 /^(?:[89]|gonna|[1-9][0-9]+)$/ hrs"
    assert retokenise(regex, split) == regex
    rules = RuleSet(str.lower)
    rules.add("wd", [retokenise("bad w/d", split)])
    assert [key for key, _, _ in rules(tokens("bad w / d today"))] == ["wd"]


# A reference matcher, written for clarity rather than speed: every pattern is tried at every
# token, slot by slot, following each way a slot can match. The rule set's indexes and short
# cuts (phrase tries, arming by rare words, gaps matched with the slot after them, word places
# found on demand) must find exactly what it finds.

_WORDS = ["a", "b", "c", "no", ",", ".", "3", "bx", "A", "B"]


def _atom(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(st.sampled_from(["word", "word", "word", "number", "title", "prefix"]))
    if kind == "word":
        return ("word", draw(st.sampled_from(["a", "b", "c", "no", ","])))
    return (kind, "b")


@st.composite
def _patterns(draw: st.DrawFn) -> list[tuple[str, object, bool]]:
    slots: list[tuple[str, object, bool]] = []
    for _ in range(draw(st.integers(1, 4))):
        if slots and draw(st.integers(0, 3)) == 0:
            slots.append(("gap", draw(st.integers(1, 3)), True))
            continue
        alternatives = [
            [_atom(draw) for _ in range(draw(st.integers(1, 2)))]
            for _ in range(draw(st.integers(1, 3)))
        ]
        slots.append(("choices", alternatives, draw(st.booleans())))
    return slots


def _written(slots: list[tuple[str, object, bool]]) -> str:
    def atom(kind: str, word: str) -> str:
        return {"word": word, "number": "#", "title": "Title", "prefix": f"{word}*"}[kind]

    parts = []
    for kind, body, optional in slots:
        if kind == "gap":
            parts.append(f"..{body}")
            continue
        choices = "|".join(" ".join(atom(*a) for a in alt) for alt in body)
        parts.append(f"({choices})" + ("?" if optional else ""))
    return " ".join(parts)


def _reference(slots: list[tuple[str, object, bool]], t: Tokens) -> list[tuple[int, int]]:
    n = len(t)

    def fits(kind: str, word: str, i: int) -> bool:
        if kind == "word":
            return t.norms[i] == word
        if kind == "number":
            return t.like_num[i]
        if kind == "title":
            return t.is_title[i]
        return t.norms[i].startswith(word)

    def ends(k: int, i: int) -> set[int]:
        if k == len(slots):
            return {i}
        kind, body, optional = slots[k]
        found: set[int] = set()
        if kind == "gap":
            j = i
            found |= ends(k + 1, j)
            while j < n and j - i < body and t.skippable[j]:
                j += 1
                found |= ends(k + 1, j)
            return found
        if optional:
            found |= ends(k + 1, i)
        for alt in body:
            j = i
            if all(j + m < n and fits(*atom, j + m) for m, atom in enumerate(alt)):
                found |= ends(k + 1, j + len(alt))
        return found

    matched = []
    for start in range(n):
        end = max(ends(0, start), default=-1)
        if end > start:
            matched.append((start, end))
    return matched


@settings(max_examples=400, deadline=None)
@given(
    patterns=st.lists(_patterns(), min_size=1, max_size=3),
    words=st.one_of(
        st.lists(st.sampled_from(_WORDS), max_size=30),
        st.lists(st.sampled_from(_WORDS), min_size=201, max_size=260),  # a long text
    ),
)
def test_the_rule_set_finds_what_trying_every_pattern_everywhere_finds(
    patterns: list[list[tuple[str, object, bool]]], words: list[str]
) -> None:
    rules = RuleSet(str.lower)
    for i, slots in enumerate(patterns):
        rules.add(f"k{i}", [_written(slots)])
    t = tokens(" ".join(words))
    found = rules(t)
    for i, slots in enumerate(patterns):
        mine = [(s, e) for key, s, e in found if key == f"k{i}"]
        assert mine == _reference(slots, t), _written(slots)
