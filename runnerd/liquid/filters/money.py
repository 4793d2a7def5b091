"""`currency`: a number as money, as Mechanic writes it (Ruby's money gem with rails-i18n).

The currency gives the symbol, written before the number, and the digits after the decimal
point (`JPY` has none); the locale gives the separators. Both come from CLDR through Babel
(already installed with python-liquid): symbols as in English, where the money gem's are
(`€`, `$`, `£`); a locale's grouping space is written as a plain space, as rails-i18n does
(`€100 000,00` for `fr`). Amounts round half to even, as the money gem does. runnerd has no
shop: its primary currency is `USD` and its locale `en`, unless the filter is given others.
"""

from __future__ import annotations

import decimal
from typing import Any

DEFAULT_CURRENCY = "USD"
DEFAULT_LOCALE = "en"
_SPACES = {"\u202f": " ", "\u00a0": " "}


def _amount(value: Any) -> decimal.Decimal:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected a number, got {value!r}")
    try:
        amount = decimal.Decimal(str(value).strip())
    except decimal.InvalidOperation:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"expected a number, got {value!r}")
    return amount


def currency(value: Any, code: Any = None, locale: Any = None) -> str:
    """`currency[: "EUR"][, locale: "fr"]`: `value` as an amount of money (`$100,000.00`)."""
    from babel import numbers  # on first use: CLDR's tables stay out of an idle daemon
    from babel.core import Locale, UnknownLocaleError

    code = str(code or DEFAULT_CURRENCY).upper()
    if len(code) != 3 or not code.isalpha() or code not in numbers.list_currencies():
        raise ValueError(f"unknown currency {code!r}")
    try:
        where = Locale.parse(str(locale or DEFAULT_LOCALE).replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        raise ValueError(f"unknown locale {locale!r}") from None
    digits = numbers.get_currency_precision(code)
    pattern = "#,##0" + ("." + "0" * digits if digits else "")
    text = numbers.format_decimal(_amount(value), format=pattern, locale=where,
                                  decimal_quantization=True)
    symbol = numbers.get_currency_symbol(code, "en")
    return symbol + "".join(_SPACES.get(c, c) for c in text)
