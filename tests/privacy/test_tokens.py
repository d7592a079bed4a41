"""Tokenising personal values, piece by piece: the kinds and their checks, the in-memory token map (numbering,
TTL, bound, principals), restoring, and output that streams in pieces."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from conduit.config.schema import Config, PrivacyConfig
from conduit.errors import UpstreamError
from conduit.privacy.stream import HOLD, LONG, TokenizingStream
from conduit.privacy.token_map import MemoryTokenMap
from conduit.privacy.tokens import Privacy, Tally
from conduit.security.callers import Caller
from conduit.security.personal import BUILT_IN, Finder
from support import CONDUIT

pytestmark = pytest.mark.anyio

ALL = Finder(BUILT_IN.values())


def found(text: str, finder: Finder = ALL) -> list[tuple[str, str]]:
    return [(item.kind.name, item.value) for item in finder.find(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail ann.lee+crm@mail.example.co.uk.", [("email", "ann.lee+crm@mail.example.co.uk")]),
        ("user @home, a@b, x@y.z1", []),
        ("call +1 (415) 555-0100 or +44 20 7946 0958", [("phone", "+1 (415) 555-0100"), ("phone", "+44 20 7946 0958")]),
        ("(212) 555-0147 and 212.555.0147", [("phone", "(212) 555-0147"), ("phone", "212.555.0147")]),
        (
            "card 4111-1111-1111-1111 amex 3782 822463 10005",
            [("credit_card", "4111-1111-1111-1111"), ("credit_card", "3782 822463 10005")],
        ),
        ("4111 1111 1111 1112 fails Luhn", []),
        ("1733616000000 is a timestamp that passes Luhn: 1733616000000", []),
        (
            "iban GB82 WEST 1234 5698 7654 32 then GB82WEST12345698765432",
            [("iban", "GB82 WEST 1234 5698 7654 32"), ("iban", "GB82WEST12345698765432")],
        ),
        ("GB83 WEST 1234 5698 7654 32 fails mod 97", []),
        ("from 10.1.2.3:8080 not 256.1.2.3 nor 1.2.3.4.5", [("ipv4", "10.1.2.3")]),
        (
            "v6 2001:db8::8a2e:370:7334 and fe80::1, not 12:30:45 or a::b or std::vector",
            [("ipv6", "2001:db8::8a2e:370:7334"), ("ipv6", "fe80::1")],
        ),
        ("ssn 123-45-6789, never 000-45-6789, 666-45-6789, 900-45-6789, 123-00-6789", [("us_ssn", "123-45-6789")]),
        ("dated 2026-12-07 12:30:45, port 8080, version 1.2.3, took 12.5 ms", []),
    ],
)
def test_each_kind_finds_its_values_and_its_check_keeps_look_alikes_out(
    text: str, expected: list[tuple[str, str]]
) -> None:
    assert found(text) == expected


def test_custom_kinds_are_searched_on_their_own_and_overlaps_keep_the_earliest() -> None:
    config = PrivacyConfig.model_validate(
        {
            "tokenize": [
                "email",
                {"name": "employee_id", "pattern": r"\bE(\d{6})\b"},
                {"name": "ticket", "pattern": r"T-\d+"},
            ]
        }
    )
    finder = Privacy(config, MemoryTokenMap(60, 100)).finder
    text = "E123456 filed T-42 for E1234567 (ann@example.com)"
    assert found(text, finder) == [("employee_id", "E123456"), ("ticket", "T-42"), ("email", "ann@example.com")]


def test_config_refuses_unknown_kinds_empty_matches_and_built_in_names() -> None:
    for bad in (
        {"tokenize": ["mail"]},
        {"tokenize": [{"name": "x", "pattern": "a*"}]},
        {"tokenize": [{"name": "email", "pattern": "e"}]},
        {"tokenize": [{"name": "Bad-Name", "pattern": "e"}]},
        {"tokenize": [{"name": "x", "pattern": "("}]},
        {"tokenize": ["email", "email"]},
        {"tokenize": ["email"], "ttlMs": 10},
        {"tokenize": ["email"], "exempt": ["not a pattern!"]},
    ):
        with pytest.raises(ValueError):
            Config.model_validate({"privacy": bad})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def privacy(clock: Clock | None = None, max_values: int = 1000, **config: Any) -> Privacy:
    settings = PrivacyConfig.model_validate({"tokenize": ["email", "phone", "credit_card"], **config})
    return Privacy(settings, MemoryTokenMap(60, max_values, clock=clock or Clock()))


def caller(name: str) -> Caller:
    return Caller(name, "principal")


async def test_the_same_value_keeps_its_token_numbered_per_kind_and_per_principal() -> None:
    p = privacy()
    tally = Tally()
    alice, bob = caller("alice"), caller("bob")
    first = await p.text(alice, "ann@example.com, bo@example.org, +1 415 555 0100, ann@example.com", tally)
    assert first == "[EMAIL_1], [EMAIL_2], [PHONE_1], [EMAIL_1]"
    assert await p.text(alice, "again: bo@example.org", tally) == "again: [EMAIL_2]"
    assert await p.text(bob, "bo@example.org", Tally()) == "[EMAIL_1]"  # bob's own numbering
    assert tally.record() == {"tokenized": {"EMAIL": 2, "PHONE": 1}, "restored": {}, "unrestored": 0}
    value = await p.value(alice, {"ann@example.com": ["x", {"to": "bo@example.org"}], "n": 4}, tally)
    assert value == {"[EMAIL_1]": ["x", {"to": "[EMAIL_2]"}], "n": 4}


async def test_restoring_gives_back_only_the_callers_own_remembered_tokens() -> None:
    clock = Clock()
    p = privacy(clock)
    alice, bob = caller("alice"), caller("bob")
    await p.text(alice, "ann@example.com 4111 1111 1111 1111", Tally())
    await p.text(bob, "bob@example.net", Tally())
    tally = Tally()
    arguments = {
        "to": "[EMAIL_1]",
        "cc": ["[EMAIL_2]", "[EMAIL_1] and [CREDIT_CARD_1]"],
        "x": "[PHONE_9]",
        "[EMAIL_1]": 1,
    }
    restored = await p.restore(alice, arguments, tally)
    assert restored == {
        "to": "ann@example.com",
        "cc": ["[EMAIL_2]", "ann@example.com and 4111 1111 1111 1111"],
        "x": "[PHONE_9]",
        "ann@example.com": 1,
    }
    assert tally.restored == {"EMAIL": 1, "CREDIT_CARD": 1} and tally.unrestored == 2
    assert (await p.restore(bob, {"to": "[EMAIL_1]"}, Tally())) == {"to": "bob@example.net"}  # bob's own first
    assert (await p.restore(caller("carol"), {"to": "[EMAIL_1]"}, Tally())) == {"to": "[EMAIL_1]"}
    assert (await p.restore(alice, {"to": "[IBAN_1] [EMAIL_01] [email_1]"}, Tally())) == {
        "to": "[IBAN_1] [EMAIL_01] [email_1]"
    }
    clock.now += 61  # past the TTL: forgotten
    expired = Tally()
    assert (await p.restore(alice, {"to": "[EMAIL_1]"}, expired)) == {"to": "[EMAIL_1]"}
    assert expired.unrestored == 1
    assert await p.text(alice, "ann@example.com", Tally()) == "[EMAIL_2]"  # a new token: the old one is gone


async def test_seeing_a_value_again_keeps_it_for_another_ttl() -> None:
    clock = Clock()
    p = privacy(clock)
    alice = caller("alice")
    await p.text(alice, "ann@example.com", Tally())
    clock.now += 50
    await p.text(alice, "ann@example.com", Tally())
    clock.now += 50
    assert (await p.restore(alice, {"to": "[EMAIL_1]"}, Tally())) == {"to": "ann@example.com"}


async def test_a_flood_of_distinct_values_evicts_the_oldest_and_logs_the_bound_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = privacy(max_values=100)
    alice = caller("alice")
    flood = " ".join(f"user{n}@example.com" for n in range(250))
    with caplog.at_level(logging.WARNING, logger="conduit.privacy.token_map"):
        out = await p.text(alice, flood, Tally())
        await p.text(alice, "one@more.example", Tally())
    assert out.split()[-1] == "[EMAIL_250]"
    warnings = [r for r in caplog.records if "privacy.maxValues" in r.getMessage()]
    assert len(warnings) == 1 and "ann" not in warnings[0].getMessage()
    restored = await p.restore(alice, {"old": "[EMAIL_1]", "new": "[EMAIL_250]"}, Tally())
    assert restored == {"old": "[EMAIL_1]", "new": "user249@example.com"}


async def test_principals_exempt_tools_and_failures() -> None:
    p = privacy(principals=["alice"], exempt=["crm.note"])
    assert p.applies(caller("alice")) and not p.applies(caller("bob"))

    class Entry:
        upstream, name = "crm", "note"

    assert p.exempt(Entry())  # type: ignore[arg-type]
    failure = UpstreamError("no mailbox ann@example.com")
    failure.data = {"detail": ["ann@example.com"]}
    await p.failure(caller("alice"), failure, Tally())
    assert failure.message == "no mailbox [EMAIL_1]" and str(failure) == failure.message
    assert failure.data == {"detail": ["[EMAIL_1]"]}


async def test_output_cut_anywhere_in_pieces_comes_out_tokenised_in_order() -> None:
    p = privacy()
    alice = caller("alice")
    heard: list[tuple[str, str]] = []
    text = "to ann@example.com\nfrom +1 415 555 0100 with 4111 1111 1111 1111\n"

    async def tokenize(piece: str) -> str:
        return await p.text(alice, piece, Tally())

    for size in (1, 2, 3, 5, 8):
        heard.clear()
        async with TokenizingStream.open(tokenize, p.finder, lambda name, t: heard.append((name, t))) as feed:
            for start in range(0, len(text), size):
                feed("stdout", text[start : start + size])
                if start == 0:
                    feed("stderr", "ann@exa")
                    await anyio.lowlevel.checkpoint()
            feed("stderr", "mple.com\n")
        out = "".join(t for name, t in heard if name == "stdout")
        assert out == "to [EMAIL_1]\nfrom [PHONE_1] with [CREDIT_CARD_1]\n"
        err = "".join(t for name, t in heard if name == "stderr")
        assert "ann" not in err and err.endswith("[EMAIL_1]\n")


async def test_a_long_line_is_passed_on_in_pieces_never_cutting_a_value() -> None:
    p = privacy(max_values=10_000)
    alice = caller("alice")
    heard: list[str] = []

    async def tokenize(piece: str) -> str:
        return await p.text(alice, piece, Tally())

    line = "".join(f"record {n} user{n}@example.com; " for n in range(2000))  # ~60 KB, no newline
    async with TokenizingStream.open(tokenize, p.finder, lambda name, t: heard.append(t)) as feed:
        for start in range(0, len(line), 1000):
            feed("stdout", line[start : start + 1000])
            await anyio.lowlevel.checkpoint()
        assert len(heard) > 3  # passed on while the line goes on
        assert max(len(piece) for piece in heard) < LONG + 2 * HOLD + 1000
    out = "".join(heard)
    assert "@" not in out and out == await p.text(alice, line, Tally())


async def test_a_json_values_strings_are_numbered_in_document_order_and_changed_in_place_when_owned() -> None:
    p = privacy()
    alice = caller("alice")
    records = [{"email": f"u{n}@example.com", "tags": ["x", (f"t{n}@example.com",)], "n": n} for n in range(3)]
    owned = [dict(record, tags=list(record["tags"])) for record in records]
    copied = await p.value(alice, records, Tally())
    assert [record["email"] for record in copied] == ["[EMAIL_1]", "[EMAIL_3]", "[EMAIL_5]"]
    assert records[0]["email"] == "u0@example.com"  # not owned: the caller's value is left as it was
    changed = await p.value(alice, owned, Tally(), owned=True)
    assert changed is owned and changed == copied
    keyed = await p.value(alice, {"a": 1, "u1@example.com": {"b": "u2@example.com"}, "z": None}, Tally(), owned=True)
    assert list(keyed) == ["a", "[EMAIL_3]", "z"] and keyed["[EMAIL_3]"] == {"b": "[EMAIL_5]"}


def test_doctor_says_what_is_tokenised_for_whom_and_where(tmp_path: Path) -> None:
    (tmp_path / "conduit.yaml").write_text(
        'privacy:\n  tokenize: [email, {name: employee_id, pattern: "E\\\\d{6}"}]\n  principals: [alice]\n'
    )
    done = subprocess.run([CONDUIT, "doctor"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "ok    privacy: tokenising email, employee_id for alice; tokens kept in memory" in done.stdout, done


async def test_a_failure_inside_the_stream_reaches_the_caller_as_itself_after_the_output_so_far() -> None:
    p = privacy()
    heard: list[str] = []

    async def tokenize(piece: str) -> str:
        return await p.text(caller("alice"), piece, Tally())

    with pytest.raises(UpstreamError, match="the sandbox failed"):
        async with TokenizingStream.open(tokenize, p.finder, lambda _, t: heard.append(t)) as feed:
            feed("stdout", "to ann@example.com\nand bo@exa")
            raise UpstreamError("the sandbox failed")
    assert heard == ["to [EMAIL_1]\n", "and bo@exa"]  # what was held back is passed on too, as it is
