"""Data filters: JSON, JSONL, CSV, base64, gzip, digests, HMACs and RSA signatures (pure
functions).

Every filter takes the piped value first and raises `ValueError` (or `TypeError`) with a short
message on bad input; the renderer names the filter and the line.
"""

from __future__ import annotations

import base64 as b64
import binascii
import datetime as dt
import decimal
import gzip as gziplib
import hashlib
import hmac
import io
import json as jsonlib
import math
import zlib
from collections.abc import Mapping
from typing import Any

from runnerd.liquid.filters import sizes


def plain(value: Any) -> Any:
    """`value` as plain JSON data: dicts with str keys, lists, str, int, float, bool, None.

    Objects with `__liquid__` (Liquid's undefined, regex matches) become what it returns,
    other mappings dicts, other iterables lists, dates ISO 8601 text. Always returns new
    containers, so the result never aliases the input.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise ValueError(f"{value} is not a JSON number")
    if hasattr(value, "__liquid__"):
        return plain(value.__liquid__())
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else _key(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, range, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _key(key: Any) -> str:
    if key is None:
        return ""
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def dumps(value: Any) -> str:
    """Compact JSON of `plain(value)`, as Ruby's `to_json` writes it."""
    return jsonlib.dumps(plain(value), separators=(",", ":"), ensure_ascii=False)


def json(value: Any) -> str:
    """`json`: the value as JSON text."""
    return dumps(value)


def parse_json(value: Any, silent: Any = False) -> Any:
    """`parse_json`: JSON text to a value; invalid JSON raises unless `silent: true` (then nil)."""
    try:
        if not isinstance(value, str):
            raise ValueError(f"expected JSON text, got {kind(value)}")
        return jsonlib.loads(value)
    except ValueError as exc:
        if silent is True:
            return None
        raise ValueError(f"invalid JSON: {exc}") from None


def jsonl(value: Any) -> str:
    """`jsonl`: an array as JSON lines (one compact JSON value per line)."""
    if not isinstance(value, (list, tuple, range)):
        raise ValueError(f"expected an array, got {kind(value)}")
    return "\n".join(dumps(item) for item in value)


def parse_jsonl(value: Any) -> list[Any]:
    """`parse_jsonl`: JSON lines to an array (blank lines are skipped)."""
    if not isinstance(value, str):
        raise ValueError(f"expected JSON lines text, got {kind(value)}")
    out = []
    for number, line in enumerate(value.splitlines(), start=1):
        if line.strip():
            try:
                out.append(jsonlib.loads(line))
            except ValueError as exc:
                raise ValueError(f"invalid JSON on line {number}: {exc}") from None
    return out


def csv(value: Any, delimiter: Any = ",", include_bom: Any = False) -> str:
    """`csv`: an array of arrays as CSV text (Ruby's quoting; each row ends with a newline)."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected an array of arrays, got {kind(value)}")
    sep = _delimiter(delimiter)
    lines = []
    for row in value:
        if not isinstance(row, (list, tuple)):
            raise ValueError(f"expected an array of arrays, found a row that is {kind(row)}")
        lines.append(sep.join(_csv_field(field, sep) for field in row) + "\n")
    return ("\ufeff" if include_bom is True else "") + "".join(lines)


def _csv_field(field: Any, sep: str) -> str:
    if field is None or hasattr(field, "__liquid__") and field.__liquid__() is None:
        return ""
    if isinstance(field, bool):
        text = "true" if field else "false"
    elif isinstance(field, (dict, list)):
        text = dumps(field)
    else:
        text = str(field)
    if text == "" or any(c in text for c in (sep, '"', "\r", "\n")):
        return '"' + text.replace('"', '""') + '"'
    return text


def parse_csv(value: Any, headers: Any = False, delimiter: Any = ",") -> list[Any]:
    """`parse_csv`: CSV text to an array of arrays, or of hashes with `headers: true`."""
    if not isinstance(value, str):
        raise ValueError(f"expected CSV text, got {kind(value)}")
    import csv as csvlib  # noqa: PLC0415 - imported on first use: idle RSS

    reader = csvlib.reader(io.StringIO(value.removeprefix("\ufeff"), newline=""),
                           delimiter=_delimiter(delimiter), strict=True)
    try:
        rows = [row for row in reader if row]
    except csvlib.Error as exc:
        raise ValueError(f"invalid CSV: {exc}") from None
    if headers is not True:
        return rows
    if not rows:
        return []
    names = rows[0]
    return [{name: (row[i] if i < len(row) else None) for i, name in enumerate(names)}
            for row in rows[1:]]


def _delimiter(delimiter: Any) -> str:
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"delimiter must be one character, got {delimiter!r}")
    return delimiter


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise ValueError(f"expected text, got {kind(value)}")
    return str(value)


class Binary(str):
    """Bytes carried as text, one character per byte (Latin-1): Ruby's binary strings, as
    `gzip` and `decode_base64: force_utf8: false` make them. The byte filters (`base64_encode`,
    `gunzip`, digests, HMACs) read the bytes back; anything else sees the characters."""

    __slots__ = ()

    @classmethod
    def of(cls, raw: bytes) -> Binary:
        """The binary string of `raw`."""
        return cls(raw.decode("latin-1"))


def to_bytes(value: Any) -> bytes:
    """The bytes a byte filter reads: a `Binary`'s own, else the text's UTF-8."""
    if isinstance(value, Binary):
        return value.encode("latin-1")
    return _text(value).encode()


def _b64decode(value: Any, *, urlsafe: bool) -> bytes:
    text = "".join(_text(value).split())
    text += "=" * (-len(text) % 4)
    try:
        if urlsafe:
            return b64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        return b64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64 text") from None


def base64_encode(value: Any) -> str:
    """`base64_encode` (alias `base64`): the text's UTF-8 (a `Binary`'s bytes) as base64."""
    return b64.b64encode(to_bytes(value)).decode("ascii")


def _decoded(raw: bytes, force_utf8: Any) -> str:
    """Decoded bytes as text (invalid UTF-8 replaced), or with `force_utf8: false` as they are:
    text when they are UTF-8, else a `Binary`."""
    if force_utf8 is False:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return Binary.of(raw)
    return raw.decode("utf-8", "replace")


def base64_decode(value: Any, force_utf8: Any = True) -> str:
    """`base64_decode` (alias `decode_base64`): base64 to text (`_decoded`)."""
    return _decoded(_b64decode(value, urlsafe=False), force_utf8)


def base64_url_safe_encode(value: Any) -> str:
    """`base64_url_safe_encode` (alias `base64url`): URL-safe base64, padded."""
    return b64.urlsafe_b64encode(to_bytes(value)).decode("ascii")


def base64_url_safe_decode(value: Any, force_utf8: Any = True) -> str:
    """`base64_url_safe_decode` (alias `decode_base64url`): URL-safe base64 to text."""
    return _decoded(_b64decode(value, urlsafe=True), force_utf8)


def gzip(value: Any, *, mtime: int) -> Binary:
    """`gzip`: the text compressed with gzip, binary (`Binary`), as Ruby's `Zlib::GzipWriter`
    writes it: modification time `mtime` (epoch seconds), default level, Unix."""
    packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = to_bytes(value)
    body = packer.compress(raw) + packer.flush()
    header = b"\x1f\x8b\x08\x00" + (mtime & 0xFFFFFFFF).to_bytes(4, "little") + b"\x00\x03"
    trailer = zlib.crc32(raw).to_bytes(4, "little") + (len(raw) & 0xFFFFFFFF).to_bytes(4, "little")
    return Binary.of(header + body + trailer)


def gunzip(value: Any, force_utf8: Any = True, *, limit: int) -> str:
    """`gunzip`: gzip data to text (`_decoded`). The data is binary (`gzip`,
    `decode_base64: force_utf8: false`); other text is read as base64 of the data.

    Inflates at most `limit` bytes (TooLarge past that), so a small bomb never fills memory."""
    raw = to_bytes(value) if isinstance(value, Binary) else _b64decode(value, urlsafe=False)
    out = bytearray()
    try:
        while raw:  # one gzip member after another, as gzip.decompress reads them
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += inflater.decompress(raw, limit + 1 - len(out))
            if len(out) > limit:
                raise sizes.TooLarge
            if not inflater.eof:
                raise zlib.error("truncated")
            raw = inflater.unused_data
    except zlib.error:
        raise ValueError("not gzip data") from None
    return _decoded(bytes(out), force_utf8)


#: Ruby's `String#inspect` escapes (other control characters as `\uXXXX`; `#` before `{`, `$`, `@` too).
_RUBY_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\f": "\\f",
                 "\v": "\\v", "\b": "\\b", "\a": "\\a", "\x1b": "\\e", "\x7f": "\\x7F"}


def _inspect_text(text: str) -> str:
    out = ['"']
    for i, char in enumerate(text):
        if char in _RUBY_ESCAPES:
            out.append(_RUBY_ESCAPES[char])
        elif char < " ":
            out.append(f"\\u{ord(char):04X}")
        elif char == "#" and text[i + 1:i + 2] in ("{", "$", "@"):
            out.append("\\#")
        else:
            out.append(char)
    return "".join(out) + '"'


def inspect(value: Any) -> str:
    """Ruby Liquid's text of a value (`Liquid::Utils.inspect`): arrays and hashes as Ruby's
    `inspect` writes them (`["a", nil, 1]`, `{"k"=>1.0}`), the way a text filter given one
    sees it."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _inspect_text(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        return (mantissa if "." in mantissa or not e else mantissa + ".0") + e + exponent
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{inspect(k)}=>{inspect(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(inspect, value)) + "]"
    return str(value)


def _digest_input(value: Any) -> bytes:
    """What a digest or HMAC reads: the text, or an array's or hash's Ruby text (`inspect`),
    as Ruby's `Digest` given `input.to_s` would."""
    return to_bytes(inspect(value) if isinstance(value, (list, tuple, Mapping)) else value)


def _digest(name: str) -> Any:
    def digest(value: Any) -> str:
        return hashlib.new(name, _digest_input(value)).hexdigest()

    digest.__name__ = name
    digest.__doc__ = (f"`{name}`: the hex {name.upper()} digest of the text (of an array or "
                      "hash: of its Ruby text).")
    return digest


def _hmac(name: str) -> Any:
    def sign(value: Any, key: Any) -> str:
        if key is None:
            raise ValueError("missing key")
        return hmac.new(to_bytes(key), _digest_input(value), name).hexdigest()

    sign.__name__ = f"hmac_{name}"
    sign.__doc__ = f"`hmac_{name}: key`: the hex HMAC-{name.upper()} of the text."
    return sign


def _rsa(name: str) -> Any:
    def sign(value: Any, key: Any, binary: Any = False) -> str:
        # on first use: cryptography costs ~7 MiB that an idle daemon need not hold
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        try:
            private = serialization.load_pem_private_key(to_bytes(key), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("the key is not an RSA private key in PEM form") from None
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError("the key is not an RSA private key in PEM form")
        algorithm = hashes.SHA256() if name == "sha256" else hashes.SHA512()
        signature = private.sign(to_bytes(value), padding.PKCS1v15(), algorithm)
        return Binary.of(signature) if binary is True else signature.hex()

    sign.__name__ = f"rsa_{name}"
    sign.__doc__ = (f"`rsa_{name}: key_pem[, binary: true]`: the RSASSA-PKCS1-v1_5 SHA-"
                    f"{name[3:]} signature of the text, hex (binary with `binary: true`).")
    return sign


md5 = _digest("md5")
sha1 = _digest("sha1")
sha256 = _digest("sha256")
sha512 = _digest("sha512")
hmac_sha1 = _hmac("sha1")
hmac_sha256 = _hmac("sha256")
hmac_sha512 = _hmac("sha512")
rsa_sha256 = _rsa("sha256")
rsa_sha512 = _rsa("sha512")


def kind(value: Any) -> str:
    """How a value is named in filter error messages."""
    if value is None:
        return "nil"
    if isinstance(value, Mapping):
        return "a hash"
    if isinstance(value, (list, tuple, range)):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, decimal.Decimal)):
        return "a number"
    return type(value).__name__
