"""The kinds of personal value Conduit recognises in text, and the one finder of them.

A kind is a pattern and, for the kinds that carry one, a check that keeps look-alikes out: a card number
passes Luhn (and starts as card numbers do), an IBAN its mod-97 checksum, an IPv6 address parses, a US SSN is
not one of the numbers never issued. Built-in kinds are one combined expression (one pass over the text);
an operator's own kinds (``privacy.tokenize: [{name, pattern}]``) are searched each on its own, so their
groups and back-references mean what their author wrote, and the earliest match wins where two overlap.
The same patterns scrub PII from logs (:mod:`conduit.security.redact`).
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Final, NamedTuple


@dataclass(frozen=True)
class Kind:
    """One kind of personal value: its name (``email``), the expression that finds candidates, and the check
    a candidate must pass (None: every match is one)."""

    name: str
    pattern: str
    check: Callable[[str], bool] | None = None
    label: str = field(init=False, compare=False)
    """The name in a token: ``[EMAIL_7]``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", self.name.upper())

    def accepts(self, candidate: str) -> bool:
        return self.check is None or self.check(candidate)


_SEPARATORS: Final = str.maketrans("", "", " -")
_DOUBLED_DIGIT: Final = str.maketrans("0123456789", "0246813579")
"""A digit doubled, its digits summed (Luhn's every second digit from the right)."""


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum card numbers carry, over a string of digits.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    return sum(map(int, digits[-1::-2] + digits[-2::-2].translate(_DOUBLED_DIGIT))) % 10 == 0


def card_number(candidate: str) -> bool:
    """13 to 19 digits that pass Luhn and start as issued card numbers do (2-6: Mastercard, Amex, Visa,
    Discover...), so that a millisecond timestamp or an order number is left alone.

    >>> card_number("4111 1111 1111 1111"), card_number("4111 1111 1111 1112"), card_number("1733616000000")
    (True, False, False)
    """
    compact = candidate.translate(_SEPARATORS)
    if not 13 <= len(compact) <= 19 or compact[0] not in "23456":
        return False
    return luhn_valid(compact)


def iban_valid(candidate: str) -> bool:
    """An IBAN's mod-97 checksum (ISO 13616), spaces ignored.

    >>> iban_valid("DE89 3704 0044 0532 0130 00"), iban_valid("DE88 3704 0044 0532 0130 00")
    (True, False)
    """
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ipv6_address(candidate: str) -> bool:
    """A real IPv6 address (not a clock time, a MAC address or a C++ scope).

    >>> ipv6_address("2001:db8::1"), ipv6_address("fe80::1"), ipv6_address("12:30:45"), ipv6_address("a::b")
    (True, True, False, False)
    """
    groups = [group for group in candidate.split(":") if group]
    if not groups or (len(groups) < 3 and max(len(group) for group in groups) < 3):
        return False  # a::b, std::io-like scopes: too short to be an address someone owns
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


_OCTET: Final = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

BUILT_IN: Final[dict[str, Kind]] = {
    kind.name: kind
    for kind in (
        Kind("iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", iban_valid),
        Kind("credit_card", r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\d-])", card_number),
        Kind("us_ssn", r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"),
        Kind("email", r"(?<![\w.%+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        Kind(
            "ipv6",
            r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:)(?::|[0-9A-Fa-f]{1,4}:){1,6}[0-9A-Fa-f]{0,4}(?![\w:])",
            ipv6_address,
        ),
        Kind("ipv4", rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\.?\d)"),
        Kind(
            "phone",
            r"(?<![\w+])(?:\+\d{1,3}[ \t.-]?(?:\(\d{1,4}\)[ \t.-]?)?\d{2,4}(?:[ \t.-]\d{2,4}){1,4}"
            r"|\(\d{3}\) ?\d{3}[ \t.-]\d{4}|\b\d{3}[.-]\d{3}[.-]\d{4})\b",
        ),
    )
}
"""The kinds Conduit knows, most specific first (at one position, the first that matches is taken)."""

CUSTOM_NAME: Final = r"^[a-z][a-z0-9_]{0,31}$"


class Found(NamedTuple):
    """A value of a kind at ``text[start:end]`` (a tuple: outputs can hold thousands)."""

    start: int
    end: int
    kind: Kind
    value: str


_GATE: Final = r"(?<!\w)(?=[\d+(:A-Za-f])"
"""Where a built-in value other than an e-mail address can start: not inside a word, at a digit, ``+``, ``(``,
``:``, an upper-case letter or a hex digit. Checked first at every position, it lets the one pass skip most
positions of ordinary text at once (about five times faster than trying each kind everywhere)."""
JOINED_BELOW: Final = 4096
"""Texts shorter than this are searched together (:meth:`Finder.find_each`)."""
_EMAIL_LOCAL: Final = frozenset("._%+-")
_EMAIL_DOMAIN: Final = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")


class Finder:
    """Finds values of some kinds in text.

    >>> finder = Finder([BUILT_IN["email"], BUILT_IN["credit_card"], Kind("employee_id", r"\\bE\\d{6}\\b")])
    >>> [(f.kind.label, f.value) for f in finder.find("E123456 paid 4111 1111 1111 1111 to ann@example.com")]
    [('EMPLOYEE_ID', 'E123456'), ('CREDIT_CARD', '4111 1111 1111 1111'), ('EMAIL', 'ann@example.com')]
    >>> finder.find("order 4111 1111 1111 1112 at 2026-12-07, mail @home")
    []
    """

    def __init__(self, kinds: Iterable[Kind]) -> None:
        self.kinds: tuple[Kind, ...] = tuple(kinds)
        built_in = [kind for kind in self.kinds if BUILT_IN.get(kind.name) is kind]
        self._email = BUILT_IN["email"] if BUILT_IN["email"] in built_in else None
        self._groups = {f"k{index}": kind for index, kind in enumerate(built_in) if kind is not self._email}
        alternatives = "|".join(f"(?P<{group}>{kind.pattern})" for group, kind in self._groups.items())
        self._combined = re.compile(f"{_GATE}(?:{alternatives})") if self._groups else None
        self._custom = [(re.compile(kind.pattern), kind) for kind in self.kinds if kind not in built_in]

    def find(self, text: str) -> list[Found]:
        """Every value in ``text``, in order, none overlapping (where two overlap, the earlier, then the longer)."""
        found: list[Found] = []
        if self._combined is not None:
            groups = self._groups
            for match in self._combined.finditer(text):
                kind = groups[match.lastgroup]  # type: ignore[index]
                value = match.group()
                if kind.check is None or kind.check(value):
                    found.append(Found(*match.span(), kind, value))
        if self._email is not None:
            emails = self._emails(text)
            found = _merged(found, emails) if found and emails else found or emails
        if not self._custom:
            return found
        for pattern, kind in self._custom:
            found.extend(
                Found(match.start(), match.end(), kind, match.group())
                for match in pattern.finditer(text)
                if match.end() > match.start()
            )
        return _merged(found, []) if found else found

    def find_each(self, texts: Sequence[str]) -> list[list[Found]]:
        """The values of each text, its offsets its own. Short texts (a JSON value's strings: thousands of them)
        are searched as one, joined by NUL (which no built-in value contains; a custom kind's match across one is
        dropped): one search instead of one per string.

        >>> finder = Finder([BUILT_IN["email"]])
        >>> [[(f.start, f.value) for f in each] for each in finder.find_each(["x a@b.io", "", "c@d.io y"])]
        [[(2, 'a@b.io')], [], [(0, 'c@d.io')]]
        """
        each: list[list[Found]] = [[] for _ in texts]
        short = [index for index, text in enumerate(texts) if len(text) < JOINED_BELOW]
        for index, text in enumerate(texts):
            if len(text) >= JOINED_BELOW:
                each[index] = self.find(text)
        if not short:
            return each
        starts = []
        offset = 0
        for index in short:
            starts.append(offset)
            offset += len(texts[index]) + 1
        for item in self.find("\0".join(texts[index] for index in short)):
            slot = bisect.bisect_right(starts, item.start) - 1
            start = starts[slot]
            if item.end <= start + len(texts[short[slot]]):
                each[short[slot]].append(item._replace(start=item.start - start, end=item.end - start))
        return each

    def _emails(self, text: str) -> list[Found]:
        """E-mail addresses, found from their ``@`` (a scan in C) rather than from every word that might start
        one: the local part back from it (at most 64 characters), the domain forward."""
        assert self._email is not None
        found = []
        at = text.find("@")
        while at >= 0:
            start = at
            while start > 0 and at - start < 64 and (text[start - 1].isalnum() or text[start - 1] in _EMAIL_LOCAL):
                start -= 1
            while start < at and text[start] == ".":
                start += 1
            domain = _EMAIL_DOMAIN.match(text, at + 1)
            if start < at and domain is not None:
                found.append(Found(start, domain.end(), self._email, text[start : domain.end()]))
                at = text.find("@", domain.end())
            else:
                at = text.find("@", at + 1)
        return found


def _merged(first: list[Found], second: list[Found]) -> list[Found]:
    """Two ordered lists of values as one; where two overlap, the earlier is kept."""
    merged = sorted(first + second, key=itemgetter(0))  # stable: at one start, the first list's value
    kept = [merged[0]]
    for item in merged[1:]:
        if item.start >= kept[-1].end:
            kept.append(item)
    return kept
