"""The people search's words: what a value is indexed under, and what a typed query asks
for. Properties: whatever a person types of a value's start or of one of its parts finds
it, and no text makes a query expression that is anything but quoted terms."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.profiles.search_terms import (
    MAX_PARTS,
    MIN_QUERY_CHARS,
    Terms,
    fold,
    fts5_prefix,
    joined,
    parse_query,
    parts,
    phone_digits,
    tsquery_prefix,
    word_prefixes,
)
from tests.examples import examples


def _terms(*emails: str, names: tuple[str, ...] = (), phones: tuple[str, ...] = ()) -> set[str]:
    terms = Terms()
    terms.identifiers(emails, personal=True)
    terms.words(names, personal=True)
    terms.phones(phones)
    return terms.terms


def _finds(terms: set[str], typed: str) -> bool:
    """Whether `typed` finds a profile with `terms`, as the index answers it: each word
    starts some personal or open term."""
    query = parse_query(typed)
    assert query is not None
    starts = [tuple(word_prefixes(word, "p") + word_prefixes(word, "o")) for word in query.words]
    return all(any(term.startswith(start) for term in terms) for start in starts)


def test_an_email_is_found_by_the_start_of_the_whole_and_of_each_part() -> None:
    terms = _terms("jo.smith@example.com")
    for typed in ("jo", "jo.smith", "smi", "smith@exa", "example.com", "JO.SMITH@EXAMPLE.COM"):
        assert _finds(terms, typed), typed
    assert not _finds(terms, "mith")  # a prefix, not a substring
    assert "px:josmithexamplecom" in terms  # the whole value ranks an exact match first


def test_names_are_found_with_or_without_their_punctuation_and_accents() -> None:
    terms = _terms(names=("Siobhán O'Brien-Kelly",))
    for typed in ("siobhan", "Siobhán", "obrien", "o'brien", "brien", "kelly", "obrienk"):
        assert _finds(terms, typed), typed


def test_a_phone_is_found_as_it_is_typed_at_home_and_abroad() -> None:
    terms = _terms(phones=("+447911123456",))
    for typed in ("+4479", "447911", "07911 123", "7911123456", "+44 (0)7911 123456"):
        assert _finds(terms, typed), typed
    assert phone_digits("+12015550123") == {"12015550123", "2015550123"}  # no trunk prefix
    assert phone_digits("+390612345678") == {"390612345678", "0612345678"}


def test_queries_with_too_little_or_only_operators_find_nothing() -> None:
    for typed in ("", " ", "a", '"', "*", "-", "( )", "^", '"*"', "+", "..."):
        assert parse_query(typed) is None, typed
    near = parse_query('NEAR "jo*" -smith')
    assert near is not None and near.words == ("near", "jo", "smith") and near.exact is None


def test_one_chunk_is_also_an_exact_identifier() -> None:
    query = parse_query("u-1")
    assert query is not None and query.words == ("u1",) and query.exact == "u1"
    assert fts5_prefix(query, personal=False) == '(("o:u1"* OR "or1:u1"*)) NOT ("ox:u1")'
    assert tsquery_prefix(query, personal=True) == (
        "(('o:u1':* | 'or1:u1':* | 'p:u1':* | 'pr1:u1':*)) & !('ox:u1' | 'px:u1')"
    )


def test_a_word_looks_at_runs_only_past_their_first_part() -> None:
    terms = _terms("amelia.jones@example.com")
    assert "pr6:ameliajonesexamplecom" in terms and "p:amelia" in terms
    # "amelia" is found by its part; a run starting with it is never a "p:amelia..." term,
    # so a prefix of a common first name does not read every such run in the store.
    assert not [term for term in terms if term.startswith("p:amelia") and term != "p:amelia"]
    assert _finds(terms, "ameliaj") and _finds(terms, "amelia.jones@ex")
    assert not _finds(terms, "ameliax")


_SAFE_FTS5 = re.compile(r'^[()"*: \w]+$')
_SAFE_TSQUERY = re.compile(r"^[()'*:|&! \w]+$")


@given(st.text(max_size=300))
@settings(max_examples=examples(300))
def test_any_text_parses_to_quoted_words_or_nothing(text: str) -> None:
    query = parse_query(text)
    if query is None:
        return
    assert sum(len(word) for word in query.words) >= MIN_QUERY_CHARS
    for word in query.words:
        assert word and all(ch.isalnum() for ch in word)
    for personal in (True, False):
        assert _SAFE_FTS5.match(fts5_prefix(query, personal=personal))
        assert _SAFE_TSQUERY.match(tsquery_prefix(query, personal=personal))


# Values of up to MAX_PARTS parts (a longer one is indexed by its first ones).
values = st.text(
    alphabet=st.characters(categories=["L", "M", "N", "P", "S", "Zs"]), min_size=1, max_size=60
).filter(lambda text: 1 <= len(parts(text)) <= MAX_PARTS)


@given(value=values, cut=st.integers(1, 64), data=st.data())
@settings(max_examples=examples(300))
def test_a_value_is_found_by_any_start_of_it_or_of_a_part(
    value: str, cut: int, data: st.DataObject
) -> None:
    terms = _terms(names=(value,))
    typed = value[:cut]
    if len(joined(typed)) >= MIN_QUERY_CHARS:
        assert _finds(terms, typed)
    part = data.draw(st.sampled_from(parts(value)))
    if len(part) >= MIN_QUERY_CHARS:
        assert _finds(terms, part[: data.draw(st.integers(MIN_QUERY_CHARS, len(part)))])


@given(st.text(max_size=40))
def test_folding_is_stable(text: str) -> None:
    assert fold(fold(text)) == fold(text)
