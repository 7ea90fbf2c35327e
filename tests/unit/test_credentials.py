"""Unit tests of bridge.core.credentials: canonical user names and password+code splitting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.credentials import (
    MAX_USERNAME_LENGTH,
    Split,
    is_code,
    normalize_username,
    split_appended,
)

# --- normalize_username ----------------------------------------------------------------


@pytest.mark.parametrize("raw", ["alice", "Alice", "ALICE", "aLiCe"])
def test_normalize_folds_case(raw: str) -> None:
    """Every capitalisation of a name maps to the same lower-case record key."""
    assert normalize_username(raw) == "alice"


def test_normalize_casefolds_beyond_lower() -> None:
    """Case folding is full casefold, not lower(): 'Straße' and 'STRASSE' share a key."""
    assert normalize_username("Straße") == normalize_username("STRASSE") == "strasse"


@pytest.mark.parametrize("raw", ["ａｌｉｃｅ", "ＡＬＩＣＥ", "ａlice"])  # noqa: RUF001
def test_normalize_nfkc_folds_full_width(raw: str) -> None:
    """Full-width forms are NFKC-folded onto ASCII, so they share alice's record and lockout."""
    assert normalize_username(raw) == "alice"


def test_normalize_nfkc_folds_compatibility_ligature() -> None:
    """Compatibility characters such as the 'ﬁ' ligature fold to their plain letters."""
    assert normalize_username("ﬁona") == "fiona"


@pytest.mark.parametrize("raw", [" alice", "alice ", "  alice  ", "\u00a0alice\u3000"])
def test_normalize_strips_surrounding_blanks(raw: str) -> None:
    """Leading and trailing blanks (including no-break and ideographic spaces) are dropped."""
    assert normalize_username(raw) == "alice"


def test_normalize_strips_surrounding_tab_and_newline() -> None:
    """A trailing newline or leading tab (a paste artefact) is dropped like a space."""
    assert normalize_username("\talice\n") == "alice"


def test_normalize_keeps_inner_spaces() -> None:
    """An inner space is part of the name: 'Mary Ann' becomes 'mary ann'."""
    assert normalize_username("Mary Ann") == "mary ann"
    assert normalize_username(" mary ann ") == "mary ann"


def test_normalize_folds_inner_no_break_space_to_a_space() -> None:
    """A no-break space inside a name is NFKC-folded to a plain space."""
    assert normalize_username("mary\u00a0ann") == "mary ann"


@pytest.mark.parametrize(("raw", "expected"), [("José", "josé"), ("ÉLODIE", "élodie")])
def test_normalize_keeps_non_ascii_letters(raw: str, expected: str) -> None:
    """Non-ASCII letters are kept (lower-cased), not stripped or transliterated."""
    assert normalize_username(raw) == expected


def test_normalize_composes_decomposed_accents() -> None:
    """'e' + combining acute and the precomposed 'é' give one key (NFKC composes)."""
    assert normalize_username("Jose\u0301") == normalize_username("José") == "jos\u00e9"


def test_normalize_keeps_domain_style_names() -> None:
    """Names with '@', '.', '\\' and '-' (UPNs, DOMAIN\\user) are kept as they are."""
    assert normalize_username("Alice.Smith@Example.ORG") == "alice.smith@example.org"
    assert normalize_username("CORP\\Bob-1") == "corp\\bob-1"


@pytest.mark.parametrize("raw", ["", " ", "   ", "\t\n", "\u3000"])
def test_normalize_rejects_empty(raw: str) -> None:
    """An empty or all-blank name is unusable: None."""
    assert normalize_username(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        "ali\x00ce",  # NUL
        "ali\tce",  # inner tab
        "ali\nce",  # inner newline
        "ali\x1bce",  # escape
        "ali\x7fce",  # DEL
        "ali\x85ce",  # C1 control
        "ali\u200bce",  # zero-width space (format)
        "ali\u200dce",  # zero-width joiner (format)
        "\u202ealice",  # right-to-left override (format)
        "ali\ue000ce",  # private use
        "ali\ud800ce",  # lone surrogate
    ],
)
def test_normalize_rejects_control_and_invisible_characters(raw: str) -> None:
    """Control, format, private-use and surrogate characters make a name unusable."""
    assert normalize_username(raw) is None


def test_normalize_accepts_the_maximum_length() -> None:
    """A name of exactly MAX_USERNAME_LENGTH characters is kept."""
    name = "a" * MAX_USERNAME_LENGTH
    assert normalize_username(name) == name


def test_normalize_rejects_over_long() -> None:
    """A name longer than MAX_USERNAME_LENGTH characters is refused."""
    assert normalize_username("a" * (MAX_USERNAME_LENGTH + 1)) is None
    assert normalize_username("a" * 100_000) is None


def test_normalize_length_counts_after_stripping() -> None:
    """Surrounding blanks do not count towards the length limit."""
    name = "b" * MAX_USERNAME_LENGTH
    assert normalize_username(f"  {name}  ") == name


def test_normalize_is_idempotent_on_examples() -> None:
    """Normalising a normalised name changes nothing."""
    for raw in ["ＡＬＩＣＥ", " Mary Ann ", "José", "Straße"]:  # noqa: RUF001
        once = normalize_username(raw)
        assert once is not None
        assert normalize_username(once) == once


@pytest.mark.parametrize(
    ("raw", "same_as"),
    [
        ("\u00df\u0301", "S\u015a"),  # sharp s + combining acute  /  S + S-acute
        ("\u03aa\u0301", "\u0390"),  # I-diaeresis + acute  /  precomposed iota
    ],
)
def test_normalize_is_canonical_after_case_folding(raw: str, same_as: str) -> None:
    """Folding that creates a composable pair still yields one key: idempotent, one record."""
    name = normalize_username(raw)
    assert name is not None
    assert normalize_username(name) == name
    assert name == normalize_username(same_as)


@settings(database=None, max_examples=300)
@given(st.text(max_size=40))
def test_normalize_property(raw: str) -> None:
    """For any text the result is None or a non-empty, stripped, bounded key without controls."""
    name = normalize_username(raw)
    if name is None:
        return
    assert name
    assert name == name.strip()
    assert len(name) <= MAX_USERNAME_LENGTH
    assert not any(ch < " " or ch == "\x7f" for ch in name)


# --- is_code ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["123456", "000000", "999999"])
def test_is_code_accepts_six_ascii_digits(text: str) -> None:
    """Exactly six ASCII digits are a code."""
    assert is_code(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "12345",
        "1234567",
        "12345a",
        " 12345",
        "123456 ",
        "12 456",
        "-12345",
        "+12345",
        "１２３４５６",  # full-width digits  # noqa: RUF001
        "٣٤٥٦٧٨",  # Arabic-Indic digits
        "¹²³⁴⁵⁶",  # superscripts (str.isdigit() says True)
    ],
)
def test_is_code_rejects_everything_else(text: str) -> None:
    """Wrong length, signs, blanks or non-ASCII digits are no code at all."""
    assert not is_code(text)


def test_is_code_honours_digits() -> None:
    """With digits=8 exactly eight ASCII digits are a code, six are not."""
    assert is_code("12345678", digits=8)
    assert not is_code("123456", digits=8)
    assert not is_code("12345678")


# --- split_appended --------------------------------------------------------------------


def test_split_password_and_code() -> None:
    """'pw123456' reads as password 'pw' and code '123456'."""
    assert split_appended("pw123456") == Split("pw", "123456")


def test_split_takes_the_last_six_digits_only() -> None:
    """A password ending in digits keeps all but the last six: 'pw12123456' -> 'pw12'."""
    assert split_appended("pw12123456") == Split("pw12", "123456")
    assert split_appended("1234567") == Split("1", "234567")


def test_split_keeps_a_space_in_the_password() -> None:
    """'pass 123456' splits to password 'pass ' (with its space) and code '123456'."""
    assert split_appended("pass 123456") == Split("pass ", "123456")


def test_split_does_not_split_a_field_of_only_six_digits() -> None:
    """A field that is just six digits is not split: the password may not be empty."""
    assert split_appended("123456") is None


@pytest.mark.parametrize("field", ["pw12345", "pw1", "pw", "", "12345", "pw12345x"])
def test_split_needs_six_trailing_digits(field: str) -> None:
    """Fewer than six trailing digits means no code: None."""
    assert split_appended(field) is None


@pytest.mark.parametrize("field", ["pw１２３４５６", "pw12345６", "pw٣٤٥٦٧٨"])  # noqa: RUF001
def test_split_ignores_non_ascii_digits(field: str) -> None:
    """Full-width or other non-ASCII digits are not a code, so the field is not split."""
    assert split_appended(field) is None


def test_split_does_not_trim_the_code() -> None:
    """A trailing space after the digits means the field does not end in a code."""
    assert split_appended("pw123456 ") is None


def test_split_honours_digits() -> None:
    """With digits=8 the last eight digits are the code."""
    assert split_appended("pw12345678", digits=8) == Split("pw", "12345678")
    assert split_appended("12345678", digits=8) is None


@settings(database=None, max_examples=300)
@given(password=st.text(min_size=1, max_size=30), code=st.from_regex(r"\A[0-9]{6}\Z"))
def test_split_property(password: str, code: str) -> None:
    """Any non-empty password followed by six ASCII digits splits back into exactly the last six."""
    split = split_appended(password + code)
    assert split is not None
    assert split.password + split.code == password + code
    assert split.code == (password + code)[-6:]
    assert split.password
