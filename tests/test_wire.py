"""Unit tests for modserver.wire, the line codec between clients and the server.

The fast ``quote_plus``/``unquote_plus`` must agree with urllib byte for byte
on any input, MATLAB clients (Java's ``URLEncoder``) must be understood, and
replies must be single lines that decode back to
``{"response": R, "error": E, "traceback": T}``.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import urllib.parse

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from modserver.wire import codec as wire

# --------------------------------------------------------------------------
# references


def urllib_quote_plus(data: bytes) -> bytes:
    return urllib.parse.quote_plus(data).encode("ascii")


def urllib_unquote_plus(data: bytes) -> str:
    raw = urllib.parse.unquote_to_bytes(data.replace(b"+", b" "))
    return raw.decode("utf-8", "replace")


JAVA_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-*_")


def java_urlencode(text: str) -> str:
    """``java.net.URLEncoder.encode(text, "UTF-8")``, which MATLAB's urlencode uses.

    A-Z a-z 0-9 and ``.-*_`` stay, the space becomes ``+``, and every other
    byte of the UTF-8 encoding becomes ``%XX`` with upper-case hex.
    """
    out = []
    for byte in text.encode("utf-8"):
        if byte in JAVA_UNRESERVED:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def decode_reply(line: bytes, plain: bool = False):
    """Decode a reply line the way an independent (urllib) client would."""
    assert line.endswith(b"\n")
    body = line[:-1]
    assert b"\n" not in body
    text = body.decode("ascii") if plain else urllib.parse.unquote_plus(body.decode())
    return json.loads(text)


# --------------------------------------------------------------------------
# strategies

# Pieces that stress the escape handling: lone and malformed escapes, both
# hex cases, "=" (quoted-printable's escape), "+", blanks, line breaks, NUL
# and raw non-ASCII bytes (valid and invalid UTF-8).
TRICKY_PIECES = [
    b"%", b"=", b"+", b" ", b"\t", b"\r", b"\n", b"\x00", b"\x0b", b"\x0c",
    b"0", b"1", b"2", b"3", b"9", b"a", b"c", b"f", b"A", b"C", b"D", b"F",
    b"g", b"G", b"z", b"_", b"~", b"*", b".", b"-", b"{", b"}", b'"', b":",
    b"%2c", b"%2C", b"%3D", b"%3d", b"=3D", b"=41", b"%C3%A9", b"%c3%a9",
    b"%e2%82", b"%ac", b"%FF", b"%G1", b"%4", b"%%", b"=%", b"%=",
    b"\xc3", b"\xa9", b"\xff", b"\x80", "é".encode(), "€".encode(),
    "😀".encode(),
]  # fmt: skip

tricky_bytes = st.lists(st.sampled_from(TRICKY_PIECES), max_size=40).map(b"".join)

TRICKY_CHARS = '%=+ \t\r\n0123456789abcdefABCDEFgGxX{}":,~*._-é€😀\x00\x7f\u2028'
tricky_text = st.text(
    alphabet=st.one_of(st.sampled_from(TRICKY_CHARS), st.characters(codec="utf-8")),
    max_size=60,
)

utf8_text = st.text().map(lambda t: t.encode("utf-8"))

any_line = st.one_of(st.binary(), utf8_text, tricky_bytes, tricky_text.map(str.encode))


# --------------------------------------------------------------------------
# quote_plus


@settings(max_examples=500)
@given(st.binary())
def test_quote_plus_matches_urllib_for_any_bytes(data):
    assert wire.quote_plus(data) == urllib_quote_plus(data)


@settings(max_examples=500)
@given(utf8_text)
def test_quote_plus_matches_urllib_for_utf8_text(data):
    assert wire.quote_plus(data) == urllib_quote_plus(data)


@settings(max_examples=500)
@given(tricky_bytes)
def test_quote_plus_matches_urllib_for_escape_heavy_bytes(data):
    assert wire.quote_plus(data) == urllib_quote_plus(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (b"abcXYZ019_.-~", b"abcXYZ019_.-~"),
        (b" ", b"+"),
        (b"+", b"%2B"),
        (b"%", b"%25"),
        (b"%25", b"%2525"),
        (b"a b+c%d", b"a+b%2Bc%25d"),
        (b"*", b"%2A"),
        (b"=", b"%3D"),
        (b"\n\r\t", b"%0A%0D%09"),
        (b"\x00\xff", b"%00%FF"),
        ('{"name": "é"}'.encode(), b"%7B%22name%22%3A+%22%C3%A9%22%7D"),
    ],
)
def test_quote_plus_known_vectors(data, expected):
    assert wire.quote_plus(data) == expected
    assert wire.quote_plus(data) == urllib_quote_plus(data)


def test_quote_plus_with_every_byte_value_matches_urllib():
    # More distinct unsafe bytes than the replace-pass budget: the urllib path.
    data = bytes(range(256)) * 3
    assert wire.quote_plus(data) == urllib_quote_plus(data)


def test_quote_plus_just_under_and_over_the_replace_pass_budget():
    unsafe = bytes(b for b in range(256) if b not in wire.SAFE)
    for count in (1, 47, 48, 49, 50):
        data = b"x" + b"y".join(bytes([b]) for b in unsafe[:count]) + b"%"
        assert wire.quote_plus(data) == urllib_quote_plus(data), count


@settings(max_examples=500)
@given(st.text())
def test_unquote_plus_inverts_quote_plus_for_any_text(text):
    assert wire.unquote_plus(wire.quote_plus(text.encode("utf-8"))) == text


@settings(max_examples=300)
@given(tricky_text)
def test_unquote_plus_inverts_quote_plus_for_escape_heavy_text(text):
    assert wire.unquote_plus(wire.quote_plus(text.encode("utf-8"))) == text


# --------------------------------------------------------------------------
# unquote_plus


@settings(max_examples=500)
@given(st.binary())
def test_unquote_plus_matches_urllib_for_any_bytes(data):
    assert wire.unquote_plus(data) == urllib_unquote_plus(data)


@settings(max_examples=500)
@given(utf8_text)
def test_unquote_plus_matches_urllib_for_utf8_text(data):
    assert wire.unquote_plus(data) == urllib_unquote_plus(data)


@settings(max_examples=1000)
@given(tricky_bytes)
def test_unquote_plus_matches_urllib_for_escape_heavy_bytes(data):
    assert wire.unquote_plus(data) == urllib_unquote_plus(data)


@settings(max_examples=500)
@given(tricky_text)
def test_unquote_plus_matches_urllib_for_escape_heavy_text(text):
    data = text.encode("utf-8")
    assert wire.unquote_plus(data) == urllib_unquote_plus(data)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=3), max_size=20))
def test_unquote_plus_matches_urllib_for_quoted_bytes_mixed_with_raw_bytes(parts):
    # Alternate well-formed escapes (the quoted-printable fast path) with raw
    # bytes so both paths see valid escapes next to odd neighbours.
    data = b"".join(urllib_quote_plus(part) if i % 2 else part for i, part in enumerate(parts))
    assert wire.unquote_plus(data) == urllib_unquote_plus(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", ""),
        (b"plain", "plain"),
        (b"a+b", "a b"),
        (b"%2B", "+"),
        (b"%2b", "+"),
        (b"%2c", ","),
        (b"%2C", ","),
        (b"%", "%"),
        (b"%%", "%%"),
        (b"%4", "%4"),
        (b"%G1", "%G1"),
        (b"%41%", "A%"),
        (b"%41%4", "A%4"),
        (b"%41%G1", "A%G1"),
        (b"=", "="),
        (b"a=b", "a=b"),
        (b"=41", "=41"),
        (b"=3D", "=3D"),
        (b"%41=42", "A=42"),
        (b"%41=", "A="),
        (b"%3D41", "=41"),
        (b"%41==", "A=="),
        (b"%41=\n", "A=\n"),
        (b"%41=\r\n", "A=\r\n"),
        (b"%41\n", "A\n"),
        (b"%41\r", "A\r"),
        (b"%41\t", "A\t"),
        (b"%41 ", "A "),
        (b"%41   ", "A   "),
        (b"%41+", "A "),
        (b"%41\t \n", "A\t \n"),
        (b"%41\x00B", "A\x00B"),
        (b"%41_B", "A_B"),
        (b"%C3%A9", "é"),
        (b"%c3%a9", "é"),
        (b"caf\xc3\xa9", "café"),
        (b"caf\xc3\xa9%21", "café!"),
        (b"%E9", "\ufffd"),
        (b"\xff%41", "\ufffdA"),
        (b"%E2%82", "\ufffd"),
        (b"%7B%22name%22%3A%22a%2Bb%22%7D", '{"name":"a+b"}'),
    ],
)
def test_unquote_plus_edge_cases(data, expected):
    assert urllib_unquote_plus(data) == expected  # the reference agrees
    assert wire.unquote_plus(data) == expected


# --------------------------------------------------------------------------
# MATLAB / Java URLEncoder


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name":"laser 1"}', "%7B%22name%22%3A%22laser+1%22%7D"),
        ("a b", "a+b"),
        ("a+b", "a%2Bb"),
        ("~", "%7E"),
        ("*", "*"),
        (".-_", ".-_"),
        ("é", "%C3%A9"),
        ("€", "%E2%82%AC"),
        ("😀", "%F0%9F%98%80"),
        ("%", "%25"),
        ("\n", "%0A"),
    ],
)
def test_java_urlencode_reference_known_vectors(text, expected):
    assert java_urlencode(text) == expected


def test_java_urlencode_differs_from_python_on_tilde_and_star():
    # The point of testing Java input at all: the two encoders disagree.
    assert java_urlencode("~*") == "%7E*"
    assert urllib.parse.quote_plus("~*") == "~%2A"
    assert wire.unquote_plus(b"%7E*") == "~*"
    assert wire.unquote_plus(b"~%2A") == "~*"


@settings(max_examples=500)
@given(st.text())
def test_unquote_plus_decodes_java_urlencode_for_any_text(text):
    assert wire.unquote_plus(java_urlencode(text).encode("ascii")) == text


@settings(max_examples=300)
@given(tricky_text)
def test_unquote_plus_decodes_java_urlencode_for_escape_heavy_text(text):
    assert wire.unquote_plus(java_urlencode(text).encode("ascii")) == text


def test_decode_line_reads_java_encoded_hello():
    line = java_urlencode('{"name":"x"}').encode("ascii")
    assert line == b"%7B%22name%22%3A%22x%22%7D"
    assert wire.decode_line(line) == ({"name": "x"}, False)


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.text(max_size=10),
        st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.none()),
        max_size=5,
    )
)
def test_decode_line_reads_any_java_encoded_json_object(obj):
    # MATLAB's jsonencode writes no spaces and keeps non-ASCII characters.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    assert wire.decode_line(java_urlencode(text).encode("ascii")) == (obj, False)


JAVA_SAMPLES = [
    "",
    "plain",
    "laser 1",
    '{"name":"laser 1"}',
    '{"name":"x","args":[1,2.5,"a b"]}',
    "~tilde~ *star* .dot. -dash- _under_",
    "a+b=c&d%e/f?g#h",
    "quotes \"double\" 'single' `back`",
    "braces {} [] () <> \\ |",
    "tab\there, cr\rand lf\n",
    "café naïve Ærø",
    "€ ₿ Ω ß ü",
    "日本語のテキスト",
    "emoji 😀 and 🎉",
    "\x00\x01\x1f\x7f",
    "!$&'(),;:@^",
]


def test_java_urlencode_reference_matches_real_java(tmp_path):
    java = shutil.which("java")
    javac = shutil.which("javac")
    if not java or not javac:
        pytest.skip("java and javac are needed to check the Java reference")
    # Samples go to Java as hex of their UTF-8 bytes, one per line, so line
    # breaks and non-ASCII survive unchanged.
    (tmp_path / "samples.txt").write_text(
        "".join(sample.encode("utf-8").hex() + "\n" for sample in JAVA_SAMPLES),
        encoding="ascii",
    )
    (tmp_path / "Enc.java").write_text(
        """
import java.io.BufferedReader;
import java.io.FileReader;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;

public class Enc {
    public static void main(String[] args) throws Exception {
        try (BufferedReader in = new BufferedReader(new FileReader(args[0]))) {
            String hex;
            while ((hex = in.readLine()) != null) {
                byte[] raw = new byte[hex.length() / 2];
                for (int i = 0; i < raw.length; i++) {
                    raw[i] = (byte) Integer.parseInt(hex.substring(2 * i, 2 * i + 2), 16);
                }
                String text = new String(raw, StandardCharsets.UTF_8);
                System.out.println("<" + URLEncoder.encode(text, "UTF-8") + ">");
            }
        }
    }
}
""",
        encoding="ascii",
    )
    subprocess.run([javac, "Enc.java"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    result = subprocess.run(
        [java, "-cp", str(tmp_path), "Enc", str(tmp_path / "samples.txt")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    lines = result.stdout.decode("ascii").splitlines()
    assert len(lines) == len(JAVA_SAMPLES)
    for sample, line in zip(JAVA_SAMPLES, lines, strict=True):
        assert line.startswith("<") and line.endswith(">")
        java_encoded = line[1:-1]
        assert java_urlencode(sample) == java_encoded, sample
        assert wire.unquote_plus(java_encoded.encode("ascii")) == sample


# --------------------------------------------------------------------------
# is_plain / decode_line


@pytest.mark.parametrize(
    ("line", "plain"),
    [
        (b"{}", True),
        (b'{"name": "a"}', True),
        (b'   {"name": "a"}', True),
        (b'\t {"name": "a"}', True),
        (b"{", True),
        (b"%7B%7D", False),
        (b"", False),
        (b"   ", False),
        (b"[1, 2]", False),
        (b"+{}", False),
        (b"x{}", False),
    ],
)
def test_is_plain_is_true_when_first_non_blank_character_is_a_brace(line, plain):
    assert wire.is_plain(line) is plain


def test_decode_line_does_not_url_decode_plain_json():
    assert wire.decode_line(b'{"name": "a+b"}') == ({"name": "a+b"}, True)
    assert wire.decode_line(b'{"name": "%41"}') == ({"name": "%41"}, True)


def test_decode_line_accepts_leading_blanks_before_plain_json():
    assert wire.decode_line(b' \t {"name": "a+b"}') == ({"name": "a+b"}, True)


def test_decode_line_reads_plain_json_with_raw_utf8():
    assert wire.decode_line('{"name": "café"}'.encode()) == ({"name": "café"}, True)


def test_decode_line_url_decodes_non_plain_lines():
    line = urllib.parse.quote_plus('{"name": "a+b c"}').encode()
    assert wire.decode_line(line) == ({"name": "a+b c"}, False)


def test_decode_line_of_url_encoded_non_object_json():
    assert wire.decode_line(b"%5B1%2C+2%5D") == ([1, 2], False)
    assert wire.decode_line(b"42") == (42, False)


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=5))
def test_decode_line_round_trips_quote_plus_and_plain(obj):
    text = json.dumps(obj)
    assert wire.decode_line(wire.quote_plus(text.encode())) == (obj, False)
    assert wire.decode_line(text.encode()) == (obj, True)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"   ",
        b"hello",
        b"{",
        b'{"name": }',
        b"{'name': 'single quotes'}",
        b"%7B",
        b"%7B%22name%22",
        b"%",
        b"%ZZ",
        b"\xff\xfe",
    ],
)
def test_decode_line_raises_decode_error_for_invalid_json(line):
    with pytest.raises(wire.DecodeError, match="not valid JSON"):
        wire.decode_line(line)


@settings(max_examples=500)
@given(any_line)
def test_decode_line_either_decodes_or_raises_decode_error(line):
    try:
        message, plain = wire.decode_line(line)
    except wire.DecodeError as exc:
        assert "not valid JSON" in str(exc)
    else:
        assert plain is wire.is_plain(line)
        expected = line if plain else urllib_unquote_plus(line)
        assert message == json.loads(expected) or message != message


def test_decode_error_is_a_value_error():
    assert issubclass(wire.DecodeError, ValueError)
    with pytest.raises(ValueError):
        wire.decode_line(b"nope")


# --------------------------------------------------------------------------
# encode_reply


def keys_in_order(text: str) -> list[str]:
    return json.loads(text, object_pairs_hook=lambda pairs: [k for k, _ in pairs])


def test_encode_reply_is_one_url_encoded_line_in_key_order():
    line = wire.encode_reply({"a": "b c+d"}, traceback="")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b" " not in line
    body = urllib.parse.unquote_plus(line[:-1].decode())
    assert keys_in_order(body) == ["response", "error", "traceback"]
    assert json.loads(body) == {
        "response": {"a": "b c+d"},
        "error": False,
        "traceback": "",
    }
    assert line[:-1] == urllib_quote_plus(body.encode())


def test_encode_reply_plain_is_one_json_line_in_key_order():
    line = wire.encode_reply([1, "two"], plain=True)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert keys_in_order(line[:-1].decode()) == ["response", "error", "traceback"]
    assert json.loads(line) == {"response": [1, "two"], "error": False, "traceback": ""}


@pytest.mark.parametrize("plain", [False, True])
def test_encode_reply_keeps_error_and_multiline_traceback_on_one_line(plain):
    traceback = "Traceback (most recent call last):\n  File x\nValueError: bad\n"
    line = wire.encode_reply("ValueError: bad", True, traceback, plain)
    assert decode_reply(line, plain) == {
        "response": "ValueError: bad",
        "error": True,
        "traceback": traceback,
    }


def test_reply_body_is_encode_reply_without_the_newline():
    for plain in (False, True):
        assert wire.reply_body("x", plain=plain) + b"\n" == wire.encode_reply("x", plain=plain)


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(json_values, st.booleans(), st.text(), st.booleans())
def test_encode_reply_decodes_back_with_urllib_and_json(response, error, tb, plain):
    line = wire.encode_reply(response, error, tb, plain)
    assert decode_reply(line, plain) == {
        "response": response,
        "error": error,
        "traceback": tb,
    }
    if not plain:
        assert wire.decode_line(line[:-1])[0]["response"] == response


def test_encode_reply_turns_tuples_into_lists():
    line = wire.encode_reply((1, (2, "three")))
    assert decode_reply(line)["response"] == [1, [2, "three"]]


def _strict_loads(text):
    """Standard JSON only, as MATLAB's jsondecode takes it: no NaN or Infinity tokens."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_encode_reply_sends_nan_and_infinity_as_null():
    line = wire.encode_reply([float("nan"), float("inf"), float("-inf"), 1.5], plain=True)
    assert _strict_loads(line)["response"] == [None, None, None, 1.5]
    nested = wire.encode_reply({"a": (float("nan"), [float("inf")])})
    assert _strict_loads(urllib.parse.unquote_plus(nested[:-1].decode()))["response"] == {
        "a": [None, [None]]
    }


@settings(max_examples=200)
@given(
    st.recursive(
        st.floats() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
        max_leaves=15,
    )
)
def test_every_reply_is_standard_json(value):
    _strict_loads(wire.encode_reply(value, plain=True))


def test_encode_reply_of_non_ascii_text_is_ascii_and_round_trips():
    line = wire.encode_reply("café 😀 日本", plain=True)
    line.decode("ascii")
    assert decode_reply(line, plain=True)["response"] == "café 😀 日本"
    assert decode_reply(wire.encode_reply("café 😀 日本"))["response"] == "café 😀 日本"


@pytest.mark.parametrize(
    ("value", "type_name"), [({1, 2}, "set"), (object(), "object"), (b"x", "bytes")]
)
@pytest.mark.parametrize("plain", [False, True])
def test_encode_reply_of_unencodable_value_raises_type_error_naming_type(value, type_name, plain):
    with pytest.raises(TypeError, match=repr(type_name)):
        wire.encode_reply({"nested": [value]}, plain=plain)


def test_encode_reply_of_numpy_integer_array_is_a_list():
    np = pytest.importorskip("numpy")
    assert decode_reply(wire.encode_reply(np.arange(5)))["response"] == [0, 1, 2, 3, 4]


def test_encode_reply_of_2d_float_array_is_nested_lists():
    np = pytest.importorskip("numpy")
    array = np.array([[0.5, 1.25, -2.0], [3.0, 1e-300, 6.02e23]])
    line = wire.encode_reply(array)
    assert decode_reply(line)["response"] == array.tolist()
    assert decode_reply(wire.encode_reply(array, plain=True), plain=True)["response"] == [
        [0.5, 1.25, -2.0],
        [3.0, 1e-300, 6.02e23],
    ]


def test_encode_reply_of_numpy_scalars_are_json_numbers_and_booleans():
    np = pytest.importorskip("numpy")
    response = {
        "f32": np.float32(1.5),
        "f64": np.float64(2.25),
        "i64": np.int64(-7),
        "u8": np.uint8(200),
        "yes": np.bool_(True),
        "no": np.bool_(False),
    }
    line = wire.encode_reply(response, plain=True)
    assert b'"yes": true' in line and b'"no": false' in line
    assert decode_reply(line, plain=True)["response"] == {
        "f32": 1.5,
        "f64": 2.25,
        "i64": -7,
        "u8": 200,
        "yes": True,
        "no": False,
    }


def test_encode_reply_of_zero_dimensional_arrays_are_scalars():
    np = pytest.importorskip("numpy")
    response = [np.array(3.5), np.array(4), np.array(True)]
    assert decode_reply(wire.encode_reply(response))["response"] == [3.5, 4, True]


def test_encode_reply_of_numpy_nan_is_null():
    np = pytest.importorskip("numpy")
    line = wire.encode_reply(np.array([np.nan, 1.0]), plain=True)
    assert b"[null, 1.0]" in line
    line = wire.encode_reply(np.float32("inf"), plain=True)
    assert b'"response": null' in line


def test_encode_reply_of_numpy_object_inside_array_names_the_type():
    np = pytest.importorskip("numpy")
    array = np.array([{1}], dtype=object)
    with pytest.raises(TypeError, match="set"):
        wire.encode_reply(array)


def test_encode_reply_of_large_json_payload_matches_urllib():
    rng = random.Random(1234)
    response = {
        "values": [rng.uniform(-1e6, 1e6) for _ in range(100_000)],
        "label": "spectrum ~ é +/- 1%",
    }
    line = wire.encode_reply(response)
    text = json.dumps({"response": response, "error": False, "traceback": ""})
    assert len(line) > 2_000_000
    assert line == urllib_quote_plus(text.encode("ascii")) + b"\n"
    assert wire.unquote_plus(line[:-1]) == text
    assert wire.decode_line(line[:-1]) == (
        {"response": response, "error": False, "traceback": ""},
        False,
    )


# --------------------------------------------------------------------------
# reasons and errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("one line", "one line"),
        ("first\nsecond", "first second"),
        ("first\r\nsecond\rthird", "first second third"),
        ("  padded \n", "padded"),
        ("\n\n", ""),
    ],
)
def test_one_line_folds_text_onto_one_line(text, expected):
    assert wire.one_line(text) == expected


@settings(max_examples=300)
@given(st.text())
def test_one_line_never_contains_line_breaks(text):
    folded = wire.one_line(text)
    assert len(folded.splitlines()) <= 1
    assert folded == folded.strip()


def test_error_reason_is_kind_colon_message():
    assert wire.error_reason("ValueError", "bad") == "ValueError: bad"


def test_error_reason_with_empty_message_is_just_the_kind():
    assert wire.error_reason("KeyError") == "KeyError"
    assert wire.error_reason("KeyError", "") == "KeyError"
    assert wire.error_reason("KeyError", " \n ") == "KeyError"


def test_error_reason_folds_multiline_message():
    reason = wire.error_reason("RuntimeError", "line one\nline two\n")
    assert reason == "RuntimeError: line one line two"


def test_exception_reason_uses_type_name_and_message():
    assert wire.exception_reason(ValueError("bad")) == "ValueError: bad"
    assert wire.exception_reason(ValueError()) == "ValueError"
    assert wire.exception_reason(OSError("disk\nfull")) == "OSError: disk full"


def test_exception_reason_of_custom_exception_uses_class_name():
    class LaserNotReady(Exception):
        pass

    assert wire.exception_reason(LaserNotReady("cold")) == "LaserNotReady: cold"


@pytest.mark.parametrize("plain", [False, True])
def test_encode_error_has_error_true_and_non_empty_traceback(plain):
    line = wire.encode_error("ValueError: bad", "", plain)
    reply = decode_reply(line, plain)
    assert reply["response"] == "ValueError: bad"
    assert reply["error"] is True
    assert reply["traceback"].strip()


@pytest.mark.parametrize("plain", [False, True])
def test_encode_error_keeps_given_traceback(plain):
    traceback = "Traceback (most recent call last):\nValueError: bad\n"
    reply = decode_reply(wire.encode_error("ValueError: bad", traceback, plain), plain)
    assert reply == {"response": "ValueError: bad", "error": True, "traceback": traceback}


def test_encode_error_is_url_encoded_unless_plain():
    assert not wire.is_plain(wire.encode_error("E: x", "tb"))
    assert wire.is_plain(wire.encode_error("E: x", "tb", plain=True))


@example("")
@example("%")
@example("=3D")
@given(tricky_text)
def test_decode_line_of_encoded_error_round_trips(reason):
    line = wire.encode_error(reason, "")
    message, plain = wire.decode_line(line[:-1])
    assert plain is False
    assert message["response"] == reason and message["error"] is True
    assert message["traceback"]


@settings(max_examples=300)
@given(
    st.binary(max_size=40),
    st.integers(min_value=0, max_value=5000),
    st.integers(min_value=0, max_value=5000),
)
def test_unquote_plus_matches_urllib_on_long_lines_with_few_escapes(middle, before, after):
    """Long text with a few escapes takes the sparse path; it must agree too."""
    data = b"x" * before + wire.quote_plus(middle) + middle + b"+y" * after
    expected = urllib.parse.unquote_to_bytes(data.replace(b"+", b" ")).decode("utf-8", "replace")
    assert wire.unquote_plus(data) == expected


def test_both_unquote_paths_are_taken_and_agree():
    sparse = b"a" * 10_000 + b"%41%2c%e9" + b"b+" * 5000
    dense = b"%41%42%43+" * 1000
    for data in (sparse, dense):
        expected = urllib.parse.unquote_to_bytes(data.replace(b"+", b" ")).decode(
            "utf-8", "replace"
        )
        assert wire.unquote_plus(data) == expected
    assert wire._unquote_sparse(b"%4") is None and wire._unquote_dense(b"%4g", 1) is None
