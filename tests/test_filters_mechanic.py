"""The filters of Mechanic's documentation that runnerd added for issue 18: parse_xml,
graphql_arguments, url_param_escape, currency, rsa_sha256/512 and browser."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from runnerd import errors
from runnerd.liquid import render
from runnerd.liquid.filters import browser, formats, money, text


@pytest.fixture(scope="module")
def renderer() -> render.Renderer:
    return render.Renderer(timezone="UTC", clock=lambda: 1_700_000_000.0)


def out(renderer: render.Renderer, source: str, **variables: Any) -> str:
    return renderer.render_text(source, variables, name="t")


# --- parse_xml -------------------------------------------------------------------------------

def test_parse_xml_reads_as_rails_does() -> None:
    xml = ('<order id="7"><line><sku>A</sku></line><line><sku>B</sku></line>'
           '<note>  </note><total currency="EUR">12.5</total></order>')
    assert formats.parse_xml(xml) == {"order": {
        "id": "7", "line": [{"sku": "A"}, {"sku": "B"}], "note": None,
        "total": {"currency": "EUR", "__content__": "12.5"}}}


@pytest.mark.parametrize(("xml", "why"), [
    ('<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>', "document type declaration"),
    ("<a><b></a>", r"invalid XML: mismatched tag \(line 1\)"),
    (["<a/>"], "expected XML text, got an array"),
])
def test_parse_xml_refuses(xml: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        formats.parse_xml(xml)


# --- graphql_arguments -----------------------------------------------------------------------

def test_graphql_arguments() -> None:
    value = {"s": 'say "hi"', "n": 1.5, "b": False, "z": None, "o": {"id": 1, "in": {}},
             "l": ["x", 2]}
    assert formats.graphql_arguments(value) == (
        's: "say \\"hi\\"", n: 1.5, b: false, z: null, o: { id: 1, in: {} }, l: ["x", 2]')
    with pytest.raises(ValueError, match="is not a GraphQL argument name"):
        formats.graphql_arguments({"bad-name": 1})
    with pytest.raises(ValueError, match="expected a hash, got a string"):
        formats.graphql_arguments("x")


# --- url_param_escape ------------------------------------------------------------------------

def test_url_param_escape() -> None:
    # Shopify's example
    assert text.url_param_escape("<p>Health & Love potions</p>") == (
        "%3Cp%3EHealth%20%26%20Love%20potions%3C/p%3E")
    assert text.url_param_escape("a=1?b/é") == "a=1?b/%C3%A9"


# --- currency --------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "expected"), [
    ((1234.5,), "$1,234.50"),
    (("-3", "GBP"), "£-3.00"),
    ((1234.5, "JPY"), "¥1,234"),  # half to even, as the money gem rounds
    ((1235.5, "JPY"), "¥1,236"),
    ((1234.5, "EUR", "de"), "€1.234,50"),
    ((0.005, "USD"), "$0.00"),
])
def test_currency(args: tuple[Any, ...], expected: str) -> None:
    assert money.currency(*args) == expected


@pytest.mark.parametrize(("args", "why"), [
    (("x",), "expected a number"), ((1, "ZZZ"), "unknown currency 'ZZZ'"),
    ((1, "USD", "xx_nowhere"), "unknown locale"), ((None,), "expected a number"),
])
def test_currency_refuses(args: tuple[Any, ...], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        money.currency(*args)


# --- rsa_sha256 / rsa_sha512 -----------------------------------------------------------------

@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(("name", "algorithm"), [("rsa_sha256", hashes.SHA256()),
                                                 ("rsa_sha512", hashes.SHA512())])
def test_rsa_signatures_verify(renderer: render.Renderer, key: rsa.RSAPrivateKey, name: str,
                               algorithm: hashes.HashAlgorithm) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    hexed = out(renderer, f"{{{{ input | {name}: pem }}}}", input="header.payload", pem=pem)
    signed = out(renderer, f"{{{{ input | {name}: pem, binary: true | base64_encode }}}}",
                 input="header.payload", pem=pem)
    assert base64.b64decode(signed).hex() == hexed
    key.public_key().verify(bytes.fromhex(hexed), b"header.payload", padding.PKCS1v15(),
                            algorithm)  # raises when the signature is wrong


def test_rsa_refuses_a_key_that_is_not_one(renderer: render.Renderer) -> None:
    with pytest.raises(errors.RenderError,
                       match="filter 'rsa_sha256': the key is not an RSA private key"):
        out(renderer, '{{ "x" | rsa_sha256: "not a key" }}')


# --- browser ---------------------------------------------------------------------------------

def test_browser_of_a_desktop_agent(renderer: render.Renderer) -> None:
    agent = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/120.0.6099.71 Safari/537.36")
    source = ("{% assign b = ua | browser %}{{ b }}|{{ b.name }}|{{ b.version.major }}|{{ b.os }}|"
              "{{ b.os.name }}|{{ b.device }}|{{ b | json }}")
    assert out(renderer, source, ua=agent) == (
        'Chrome 120.0.6099|Chrome|120|Windows 10|Windows||"Chrome 120.0.6099"')


def test_browser_of_nil_and_of_too_long(renderer: render.Renderer) -> None:
    assert out(renderer, "{{ nothing | browser }}") == ""
    assert browser.browser("") is not None
    with pytest.raises(ValueError, match="user agent longer than"):
        browser.browser("x" * (browser.MAX_USER_AGENT + 1))


# --- digests of arrays and hashes; keys and values of nil (Ruby Liquid; the docs are silent) ---

@pytest.mark.parametrize("name", ["md5", "sha1", "sha256"])
def test_digest_of_an_array_or_hash_is_that_of_its_ruby_text(renderer: render.Renderer,
                                                               name: str) -> None:
    # Ruby's Digest reads `input.to_s`: an array or hash as Ruby Liquid's inspect writes it
    items = ["a\"b", None, 1, 2.5, True, {"k": [1e20]}, "#{x}\n"]
    ruby = '["a\\"b", nil, 1, 2.5, true, {"k"=>[1.0e+20]}, "\\#{x}\\n"]'
    assert out(renderer, f"{{{{ items | {name} }}}}", items=items) == (
        hashlib.new(name, ruby.encode()).hexdigest())
    assert out(renderer, f'{{{{ h | {name} }}}}', h={"a": None}) == (
        hashlib.new(name, b'{"a"=>nil}').hexdigest())


def test_hmac_of_an_array_signs_its_ruby_text(renderer: render.Renderer) -> None:
    assert out(renderer, '{{ items | hmac_sha256: "key" }}', items=["x", 1]) == (
        hmac.new(b"key", b'["x", 1]', "sha256").hexdigest())


def test_keys_and_values_of_nil_are_empty(renderer: render.Renderer) -> None:
    assert out(renderer, "{{ nothing | keys | size }}/{{ nothing | values | join: ',' }}/"
                         "{{ options.unset | keys | size }}", options={}) == "0//0"
    with pytest.raises(errors.RenderError, match="filter 'keys': expected a hash, got an array"):
        out(renderer, "{{ items | keys }}", items=[1])
