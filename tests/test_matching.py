"""The rule pattern language: what each piece of syntax matches."""

from __future__ import annotations

import pytest

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
