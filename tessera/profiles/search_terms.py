"""The words of the people search: a profile's searchable values broken into index terms,
and what a person typed turned into match expressions (SQLite FTS5 and PostgreSQL tsquery)
that no input can make the database reject.

A value is folded (accents off, case folded) and split into its alphanumeric parts; the
index holds each part and each run of parts to the value's end, joined, so a prefix of the
whole value or of any of its parts matches: `jo.smith@example.com` gives `jo`, `smith`,
`example`, `com`, and the runs `josmithexamplecom`, `smithexamplecom` and `examplecom`; a
query chunk is joined the same way (`smith@exa` looks for terms starting `smithexa`).
Phones are indexed as digits in international, national and national-significant form, so
`+4479`, `07911` and `7911` all find +447911123456.

Every term carries a namespace: `o:` for values any reader may match (user ids, other
identifiers, the company), `p:` for personal data (names, emails, phones), which only roles
with `pii:read` match, and `ox:`/`px:` for a whole identifier value, which ranks an exact
identifier match first. A run is kept apart from the parts, under the length of its first
part (`pr2:josmithexamplecom`): a word no longer than a part finds it by the part, so only
a longer one looks at runs, and then only at those whose first part it spans whole
(`josmi` looks for `pr2:josmi...`, `pr1:josmi...`, ... `pr4:josmi...`). Otherwise `amelia`
would also start every `ameliajones123examplecom` in the store, each a term of its own,
which an index without prefix entries (PostgreSQL's GIN) reads one by one.

Terms are only letters, digits and one colon, so the index's tokenizer needs no rules of
its own, and quoting them in a query is always safe.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers

OPEN, PERSONAL = "o", "p"
OPEN_EXACT, PERSONAL_EXACT = "ox", "px"

# Each value's terms grow with the square of its parts (the runs to the end); a value of
# more parts is indexed by its first ones, which is what a person types the start of.
MAX_PARTS = 12
# Longer terms (and query words) are cut here: a prefix of 64 characters finds a value.
MAX_TERM = 64
MAX_VALUE = 255
# A query is at most this many words; each must match. Fewer characters than
# MIN_QUERY_CHARS in all find nothing (a single letter matches half the store).
MAX_WORDS = 8
MIN_QUERY_CHARS = 2
MAX_QUERY = 256

_PARTS = re.compile(r"[^\W_]+")
_PHONE_QUERY = re.compile(r"\+?[0-9\s().\-/]*[0-9][0-9\s().\-/]*")
_DIGITS = re.compile(r"[0-9]+")


def fold(text: str) -> str:
    """`text` decomposed (NFKD), without accents, case folded. Character by character, so
    the fold of a value's start is the start of the value's fold: a Hangul syllable typed
    half-way still finds the name (it is indexed as its letters)."""
    if text.isascii():
        return text.lower()  # the same, for most values, at a fraction of the cost
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def parts(text: str) -> list[str]:
    """The alphanumeric runs of the folded `text`."""
    return _PARTS.findall(fold(text[:MAX_VALUE]))


def joined(text: str) -> str:
    """The folded `text` as one word: its parts run together, cut to MAX_TERM."""
    return "".join(parts(text))[:MAX_TERM]


def value_terms(text: str, namespace: str) -> set[str]:
    """The terms of one value: each part, and each run of two or more parts to its end,
    joined, under the length of its first part."""
    found = [part[:MAX_TERM] for part in parts(text)[:MAX_PARTS]]
    terms = {f"{namespace}:{part}" for part in found}
    terms.update(
        f"{namespace}r{len(found[start])}:{''.join(found[start:])[:MAX_TERM]}"
        for start in range(len(found) - 1)
        if len(found[start]) < MAX_TERM  # a run that is all first part is the part
    )
    return terms


def word_prefixes(word: str, namespace: str) -> list[str]:
    """The term starts a query word looks for: a part starting with it, or a run whose
    first part it spans whole (one of each length it can have)."""
    return [f"{namespace}:{word}"] + [f"{namespace}r{k}:{word}" for k in range(1, len(word))]


@functools.lru_cache(maxsize=1024)
def _trunk_prefix(country_code: int) -> str:
    """The digit a national number is dialled with inside the country ("0" in the UK and
    France, none in Italy or where the plan has none, as for North America's numbers)."""
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    prefix = metadata.national_prefix if metadata is not None else None
    return "" if country_code == 1 or not prefix else prefix


def phone_digits(text: str) -> set[str]:
    """The digit strings a phone is typed as: as stored, and for an international number
    (+447911123456, as identifiers hold phones) its national significant number
    (7911123456) and that with the trunk prefix (07911123456).

    The country code is found by the E.164 rule (codes are prefix-free), not by parsing
    the number: indexing a million phones would spend a minute in the parser."""
    digits = "".join(_DIGITS.findall(text))
    found = {digits}
    if text.startswith("+"):
        for length in (1, 2, 3):
            code = int(digits[:length] or 0)
            if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE and len(digits) > length:
                national = digits[length:]
                found |= {national, _trunk_prefix(code) + national}
                break
    return {number[:MAX_TERM] for number in found if number}


class Terms:
    """A profile's terms as they are gathered, value by value."""

    def __init__(self) -> None:
        self.terms: set[str] = set()

    def words(self, values: Iterable[str], *, personal: bool) -> None:
        for value in values:
            self.terms |= value_terms(value, PERSONAL if personal else OPEN)

    def identifiers(self, values: Iterable[str], *, personal: bool) -> None:
        """Values a person may type whole: words, and an exact key that ranks first."""
        for value in values:
            self.terms |= value_terms(value, PERSONAL if personal else OPEN)
            key = joined(value)
            if key:
                self.terms.add(f"{PERSONAL_EXACT if personal else OPEN_EXACT}:{key}")

    def phones(self, values: Iterable[str]) -> None:
        for value in values:
            for digits in phone_digits(value[:MAX_VALUE]):
                self.terms |= {f"{PERSONAL}:{digits}", f"{PERSONAL_EXACT}:{digits}"}

    def text(self) -> str:
        """Space-separated and sorted, so an unchanged profile gives the same text."""
        return " ".join(sorted(self.terms))


# -- queries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchQuery:
    """A typed query: word prefixes that must all match, and the whole of it as an exact
    identifier key when it is one chunk (an email, a phone, a user id)."""

    words: tuple[str, ...]
    exact: str | None


def parse_query(text: str) -> SearchQuery | None:
    """The query in `text`, or None when it has too little to search for."""
    text = text[:MAX_QUERY].strip()
    if _PHONE_QUERY.fullmatch(text):
        # Digits with a phone's punctuation are one number however it is spaced; the
        # optional trunk prefix of "+44 (0)7911" is not part of the international form.
        digits = "".join(_DIGITS.findall(text.replace("(0)", "")))[:MAX_TERM]
        return SearchQuery((digits,), digits) if len(digits) >= MIN_QUERY_CHARS else None
    words = [word for word in (joined(chunk) for chunk in text.split()) if word][:MAX_WORDS]
    if sum(len(word) for word in words) < MIN_QUERY_CHARS:
        return None
    return SearchQuery(tuple(words), words[0] if len(words) == 1 else None)


def _namespaces(personal: bool, *, exact: bool) -> tuple[str, ...]:
    if exact:
        return (OPEN_EXACT, PERSONAL_EXACT) if personal else (OPEN_EXACT,)
    return (OPEN, PERSONAL) if personal else (OPEN,)


def fts5_exact(query: SearchQuery, *, personal: bool) -> str | None:
    """The FTS5 expression of an exact identifier match, or None (no single chunk)."""
    if query.exact is None:
        return None
    spaces = _namespaces(personal, exact=True)
    return "(" + " OR ".join(f'"{space}:{query.exact}"' for space in spaces) + ")"


def _prefixes(word: str, personal: bool) -> list[str]:
    return [
        start
        for space in _namespaces(personal, exact=False)
        for start in word_prefixes(word, space)
    ]


def fts5_prefix(query: SearchQuery, *, personal: bool) -> str:
    """The FTS5 expression of every word matching a term's start, exact matches left out
    (they come first, from `fts5_exact`)."""
    words = " AND ".join(
        "(" + " OR ".join(f'"{start}"*' for start in _prefixes(word, personal)) + ")"
        for word in query.words
    )
    exact = fts5_exact(query, personal=personal)
    return f"({words}) NOT {exact}" if exact else words


def tsquery_exact(query: SearchQuery, *, personal: bool) -> str | None:
    """`fts5_exact` as PostgreSQL tsquery text."""
    if query.exact is None:
        return None
    spaces = _namespaces(personal, exact=True)
    return "(" + " | ".join(f"'{space}:{query.exact}'" for space in spaces) + ")"


def tsquery_prefix(query: SearchQuery, *, personal: bool) -> str:
    """`fts5_prefix` as PostgreSQL tsquery text."""
    words = " & ".join(
        "(" + " | ".join(f"'{start}':*" for start in _prefixes(word, personal)) + ")"
        for word in query.words
    )
    exact = tsquery_exact(query, personal=personal)
    return f"({words}) & !{exact}" if exact else words
