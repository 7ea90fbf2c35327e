"""Unit tests of bridge.core.totp: RFC 6238 codes, the step window, secrets and the URI."""

from __future__ import annotations

from base64 import b32encode
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.totp import (
    MIN_SECRET_BYTES,
    SECRET_BYTES,
    TotpParams,
    code_at_step,
    decode_secret,
    encode_secret,
    match_step,
    new_secret,
    provisioning_uri,
    time_step,
)

RFC_SECRET = b"12345678901234567890"  # RFC 6238 Appendix B, SHA-1 seed
RFC_PARAMS = TotpParams(digits=8, step=30, window=1)
SECRET = bytes(range(1, 21))  # a fixed 160-bit key for window tests
NOW = 1_700_000_025  # 15 s into step 56_666_667: far from both step edges
PARAMS = TotpParams()
STEP = time_step(NOW, PARAMS)


def _codes_around(secret: bytes, step: int, reach: int, digits: int = 6) -> dict[int, str]:
    """Codes of the steps step-reach..step+reach, checked to be pairwise distinct."""
    codes = {s: code_at_step(secret, s, digits) for s in range(step - reach, step + reach + 1)}
    assert len(set(codes.values())) == len(codes), "fixture secret gives colliding codes"
    return codes


# --- RFC 6238 Appendix B -------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ],
)
def test_rfc6238_sha1_vectors(now: int, expected: str) -> None:
    """code_at_step(time_step(T)) reproduces the RFC 6238 Appendix B SHA-1 test vectors."""
    assert code_at_step(RFC_SECRET, time_step(now, RFC_PARAMS), digits=8) == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_234_567_890, "89005924"),
        (20_000_000_000, "65353130"),
    ],
)
def test_rfc6238_vectors_match_their_own_step(now: int, expected: str) -> None:
    """match_step finds each RFC 6238 vector at exactly the step covering its time."""
    assert match_step(RFC_SECRET, expected, now, RFC_PARAMS) == time_step(now, RFC_PARAMS)


@pytest.mark.parametrize(
    ("now", "step"),
    [(0, 0), (29, 0), (30, 1), (59, 1), (60, 2), (1_111_111_109, 37_037_036)],
)
def test_time_step_is_floor_division_by_the_period(now: int, step: int) -> None:
    """time_step is now // period, so the step changes exactly on multiples of 30 s."""
    assert time_step(now, PARAMS) == step


def test_time_step_honours_a_custom_period() -> None:
    """A 60-second period halves the step number."""
    assert time_step(119, TotpParams(step=60)) == 1
    assert time_step(120, TotpParams(step=60)) == 2


def test_code_at_step_defaults_to_six_digits() -> None:
    """Without a digits argument a code is the 6 low digits (RFC 4226 truncation)."""
    assert code_at_step(RFC_SECRET, 1) == "287082"


def test_code_at_step_keeps_leading_zeros() -> None:
    """A code with leading zeros keeps them (it is a fixed-width string, not a number)."""
    code = code_at_step(RFC_SECRET, time_step(1_111_111_109, RFC_PARAMS), digits=8)
    assert code == "07081804"
    assert len(code) == 8


# --- the window ------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_window_one_accepts_neighbouring_steps(offset: int) -> None:
    """With window 1, codes of step-1, step and step+1 match and return their own step."""
    codes = _codes_around(SECRET, STEP, 2)
    assert match_step(SECRET, codes[STEP + offset], NOW, PARAMS) == STEP + offset


@pytest.mark.parametrize("offset", [-2, 2])
def test_window_one_rejects_two_steps_away(offset: int) -> None:
    """With window 1, codes of step-2 and step+2 do not match."""
    codes = _codes_around(SECRET, STEP, 2)
    assert match_step(SECRET, codes[STEP + offset], NOW, PARAMS) is None


def test_window_zero_accepts_only_the_current_step() -> None:
    """With window 0 only the current step's code matches."""
    params = TotpParams(window=0)
    codes = _codes_around(SECRET, STEP, 1)
    assert match_step(SECRET, codes[STEP], NOW, params) == STEP
    assert match_step(SECRET, codes[STEP - 1], NOW, params) is None
    assert match_step(SECRET, codes[STEP + 1], NOW, params) is None


@pytest.mark.parametrize("offset", [-2, -1, 0, 1, 2])
def test_window_two_accepts_two_steps_either_side(offset: int) -> None:
    """With window 2, codes of step-2 .. step+2 all match and return their step."""
    codes = _codes_around(SECRET, STEP, 3)
    assert match_step(SECRET, codes[STEP + offset], NOW, TotpParams(window=2)) == STEP + offset


@pytest.mark.parametrize("offset", [-3, 3])
def test_window_two_rejects_three_steps_away(offset: int) -> None:
    """With window 2, codes three steps away do not match."""
    codes = _codes_around(SECRET, STEP, 3)
    assert match_step(SECRET, codes[STEP + offset], NOW, TotpParams(window=2)) is None


def test_step_boundary_at_29_and_30_seconds() -> None:
    """At t=29 the step-0 code is current, at t=30 the step-1 code is (window 0)."""
    params = TotpParams(window=0)
    code0, code1 = code_at_step(SECRET, 0), code_at_step(SECRET, 1)
    assert code0 != code1
    assert match_step(SECRET, code0, 29, params) == 0
    assert match_step(SECRET, code1, 29, params) is None
    assert match_step(SECRET, code1, 30, params) == 1
    assert match_step(SECRET, code0, 30, params) is None


def test_step_boundary_with_window_one_near_the_epoch() -> None:
    """At t=29 with window 1 the step-0 code matches (no step below 0 breaks the lookup)."""
    code0 = code_at_step(SECRET, 0)
    assert match_step(SECRET, code0, 29, PARAMS) == 0
    assert match_step(SECRET, code_at_step(SECRET, 1), 29, PARAMS) == 1


def test_step_boundary_at_a_realistic_time() -> None:
    """Just before a step edge the window centres on the old step, at the edge on the new one."""
    edge = (STEP + 1) * 30
    codes = _codes_around(SECRET, STEP, 3)
    params = TotpParams(window=0)
    assert match_step(SECRET, codes[STEP], edge - 1, params) == STEP
    assert match_step(SECRET, codes[STEP], edge, params) is None
    assert match_step(SECRET, codes[STEP + 1], edge, params) == STEP + 1
    # window 1: step-1 slides out of the window exactly at the edge
    assert match_step(SECRET, codes[STEP - 1], edge - 1, PARAMS) == STEP - 1
    assert match_step(SECRET, codes[STEP - 1], edge, PARAMS) is None


def test_custom_period_and_digits() -> None:
    """A 60-second, 8-digit configuration matches codes of its own step and length."""
    params = TotpParams(digits=8, step=60, window=0)
    step = time_step(NOW, params)
    code = code_at_step(SECRET, step, 8)
    assert match_step(SECRET, code, NOW, params) == step
    assert match_step(SECRET, code[-6:], NOW, params) is None


def test_match_returns_the_newest_matching_step() -> None:
    """match_step returns the matched step itself, not the current one or a bool."""
    codes = _codes_around(SECRET, STEP, 1)
    found = match_step(SECRET, codes[STEP + 1], NOW, PARAMS)
    assert found == STEP + 1
    assert found is not True


@pytest.mark.parametrize(
    "code",
    [
        "",
        "12345",
        "1234567",
        "abcdef",
        "12345a",
        " 12345",
        "123 456",
        "１２３４５６",  # full-width digits  # noqa: RUF001
        "12345é",
        "٣٤٥٦٧٨",  # Arabic-Indic digits
        "\x00" * 6,
        "x" * 10_000,
    ],
)
def test_malformed_code_returns_none_without_error(code: str) -> None:
    """Non-digit, non-ASCII or wrong-length codes match nothing and raise nothing."""
    assert match_step(SECRET, code, NOW, PARAMS) is None


def test_current_code_with_surrounding_space_is_not_accepted() -> None:
    """match_step compares exactly: trimming is the caller's job, not a loose match."""
    code = code_at_step(SECRET, STEP)
    assert match_step(SECRET, f" {code}", NOW, PARAMS) is None
    assert match_step(SECRET, f"{code}\n", NOW, PARAMS) is None


def test_code_of_another_secret_does_not_match() -> None:
    """A code made with a different key does not match this key (in a 3-step window)."""
    other = bytes(range(100, 120))
    own = set(_codes_around(SECRET, STEP, 1).values())
    code = code_at_step(other, STEP)
    assert code not in own
    assert match_step(SECRET, code, NOW, PARAMS) is None


@settings(database=None, max_examples=200)
@given(
    now=st.integers(min_value=10**6, max_value=10**11),
    code=st.text(max_size=12),
)
def test_match_step_never_raises_and_stays_in_window(now: int, code: str) -> None:
    """For any time and any text, match_step returns None or a step within the window."""
    found = match_step(SECRET, code, now, PARAMS)
    current = time_step(now, PARAMS)
    assert found is None or current - PARAMS.window <= found <= current + PARAMS.window
    if found is not None:
        assert code == code_at_step(SECRET, found)


# --- secrets ---------------------------------------------------------------------------


def test_new_secret_is_160_bits() -> None:
    """new_secret returns 20 bytes (160 bits, as SPEC section 2 requires)."""
    secret = new_secret()
    assert isinstance(secret, bytes)
    assert len(secret) == SECRET_BYTES == 20


def test_new_secret_differs_each_call() -> None:
    """Successive new_secret calls return distinct keys."""
    secrets = {new_secret() for _ in range(20)}
    assert len(secrets) == 20


def test_encode_secret_is_unpadded_uppercase_base32() -> None:
    """encode_secret gives upper-case RFC 4648 base32 without '=' padding."""
    assert encode_secret(RFC_SECRET) == "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    text = encode_secret(bytes(16))
    assert "=" not in text
    assert text == b32encode(bytes(16)).decode().rstrip("=")


@pytest.mark.parametrize("size", [16, 17, 20, 32, 64])
def test_encode_decode_round_trip(size: int) -> None:
    """decode_secret(encode_secret(k)) == k for keys of 128 bits and more, padded or not."""
    key = bytes((i * 37 + 11) % 256 for i in range(size))
    assert decode_secret(encode_secret(key)) == key


def test_round_trip_of_a_new_secret() -> None:
    """A freshly generated secret survives the base32 round trip."""
    key = new_secret()
    assert decode_secret(encode_secret(key)) == key


def test_decode_accepts_lowercase() -> None:
    """A lower-case key (as some apps show it) decodes to the same bytes."""
    assert decode_secret(encode_secret(RFC_SECRET).lower()) == RFC_SECRET


def test_decode_accepts_spaces_and_dashes() -> None:
    """Groups separated by spaces, tabs, newlines or dashes decode to the same key."""
    text = encode_secret(RFC_SECRET)
    grouped = " ".join(text[i : i + 4] for i in range(0, len(text), 4))
    dashed = "-".join(text[i : i + 4] for i in range(0, len(text), 4))
    assert decode_secret(grouped) == RFC_SECRET
    assert decode_secret(dashed) == RFC_SECRET
    assert decode_secret(f"  {grouped.lower()}\n") == RFC_SECRET
    assert decode_secret(text[:8] + "\t" + text[8:]) == RFC_SECRET


def test_decode_accepts_missing_and_present_padding() -> None:
    """A key whose length needs padding decodes with or without the '=' signs."""
    key = bytes(range(200, 216))  # 16 bytes: 26 base32 chars + 6 '='
    unpadded = encode_secret(key)
    assert len(unpadded) == 26
    assert decode_secret(unpadded) == key
    assert decode_secret(unpadded + "======") == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "----",
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ0",  # '0' is not base32
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ1",  # nor '1'
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ8",  # nor '8'
        "GEZDGNBVGY3TQOJQ!EZDGNBVGY3TQOJQ",
        "GEZDGNBV=GY3TQOJQGEZDGNBVGY3TQOJQ",  # padding inside
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQé",
        "A",  # impossible base32 length
    ],
)
def test_decode_rejects_non_base32(text: str) -> None:
    """Anything that is not base32 raises ValueError."""
    with pytest.raises(ValueError, match="not a base32 key"):
        decode_secret(text)


@pytest.mark.parametrize("size", [1, 5, 10, 15])
def test_decode_rejects_keys_under_128_bits(size: int) -> None:
    """Well-formed base32 of fewer than 16 bytes is refused as too short."""
    with pytest.raises(ValueError, match="short"):
        decode_secret(encode_secret(bytes(range(size))))


def test_decode_accepts_exactly_128_bits() -> None:
    """A key of exactly 16 bytes (the minimum) is accepted."""
    key = bytes(range(MIN_SECRET_BYTES))
    assert MIN_SECRET_BYTES == 16
    assert decode_secret(encode_secret(key)) == key


@settings(database=None, max_examples=100)
@given(st.binary(min_size=16, max_size=64))
def test_round_trip_property(key: bytes) -> None:
    """Every key of 128 bits or more round-trips, even lower-cased and dash-grouped."""
    text = encode_secret(key)
    assert decode_secret(text) == key
    assert decode_secret("-".join(text.lower()[i : i + 4] for i in range(0, len(text), 4))) == key


# --- provisioning URI ------------------------------------------------------------------


def _parse(uri: str) -> tuple[str, str, str, dict[str, list[str]]]:
    """Scheme, type, decoded label and query of an otpauth URI."""
    parts = urlsplit(uri)
    return parts.scheme, parts.netloc, unquote(parts.path.lstrip("/")), parse_qs(parts.query)


def test_provisioning_uri_form() -> None:
    """The URI is otpauth://totp/ISSUER:USER?secret=...&issuer=ISSUER."""
    uri = provisioning_uri(RFC_SECRET, "alice", "Example", PARAMS)
    assert uri.startswith("otpauth://totp/Example:alice?")
    scheme, kind, label, query = _parse(uri)
    assert (scheme, kind, label) == ("otpauth", "totp", "Example:alice")
    assert query["secret"] == [encode_secret(RFC_SECRET)]
    assert query["issuer"] == ["Example"]


def test_provisioning_uri_secret_decodes_back_to_the_key() -> None:
    """The secret parameter of the URI decodes to the very key it was made from."""
    key = new_secret()
    _, _, _, query = _parse(provisioning_uri(key, "alice", "Example Corp", PARAMS))
    assert decode_secret(query["secret"][0]) == key


def test_provisioning_uri_encodes_spaces_in_issuer() -> None:
    """Spaces in the issuer are percent-encoded as %20 in label and query (never '+' or raw)."""
    uri = provisioning_uri(RFC_SECRET, "alice", "Example Corp", PARAMS)
    assert " " not in uri
    assert "+" not in uri
    assert uri.startswith("otpauth://totp/Example%20Corp:alice?")
    assert "issuer=Example%20Corp" in urlsplit(uri).query
    _, _, label, query = _parse(uri)
    assert label == "Example Corp:alice"
    assert query["issuer"] == ["Example Corp"]


def test_provisioning_uri_encodes_non_ascii_user() -> None:
    """A non-ASCII user name is UTF-8 percent-encoded and decodes back unchanged."""
    uri = provisioning_uri(RFC_SECRET, "josé", "Example Corp", PARAMS)
    assert uri.isascii()
    assert "jos%C3%A9" in uri
    _, _, label, _ = _parse(uri)
    assert label == "Example Corp:josé"


def test_provisioning_uri_encodes_spaces_in_user() -> None:
    """A user name with an inner space appears as %20 in the label."""
    uri = provisioning_uri(RFC_SECRET, "mary ann", "Example", PARAMS)
    assert "mary%20ann" in uri
    assert _parse(uri)[2] == "Example:mary ann"


def test_provisioning_uri_defaults_are_implicit_and_custom_values_explicit() -> None:
    """Default 6 digits / 30 s need no parameters; other values are stated in the URI."""
    _, _, _, default = _parse(provisioning_uri(RFC_SECRET, "alice", "Example", PARAMS))
    assert default.get("digits", ["6"]) == ["6"]
    assert default.get("period", ["30"]) == ["30"]
    assert default.get("algorithm", ["SHA1"]) == ["SHA1"]
    _, _, _, custom = _parse(
        provisioning_uri(RFC_SECRET, "alice", "Example", TotpParams(digits=8, step=60))
    )
    assert custom["digits"] == ["8"]
    assert custom["period"] == ["60"]


def test_code_at_step_agrees_with_pyotp() -> None:
    """Our HOTP matches pyotp's (the apps' reference behaviour) for many keys and steps."""
    import pyotp  # noqa: PLC0415

    for key in (new_secret() for _ in range(20)):
        reference = pyotp.HOTP(encode_secret(key))
        for step in (0, 1, 59_000_000, 2**31, 2**40):
            assert code_at_step(key, step) == reference.at(step)
