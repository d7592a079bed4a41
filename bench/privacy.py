"""What tokenising personal values costs, as a client sees it through MCP (Streamable HTTP): two servers in the
same run, ``privacy`` off and on (every built-in kind), each running the same TypeScript programs that print
mixed customer records (names, e-mail addresses, phone numbers, card numbers, free text; every record's
values distinct) of 64 KB and of 1 MB, beside the trivial program (the floor). Then the scrubber alone, in
this process: the one pass over a whole text, and the streaming scrubber fed the same output in 4 KB pieces
(as a sandbox's output arrives), in MB/s.

Every figure is a median and p95 in ms over ``--runs`` rounds, the two servers measured in turn within each
round.

Usage: ``.venv/bin/python bench/privacy.py [--runs N]``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
import served as through
from report import summarize, table

from conduit.config.schema import PrivacyConfig
from conduit.privacy.stream import TokenizingStream
from conduit.privacy.token_map import MemoryTokenMap
from conduit.privacy.tokens import Privacy, Tally
from conduit.security.callers import Caller

SHAPES = (
    ("trivial program", 0),
    ("64 KB JSON records returned as the result", 64 * 1024),
    ("64 KB dense records printed", 64 * 1024),
    ("1 MB dense records printed", 1_000_000),
)
"""What is measured: the floor; API-style records (three personal values in ~420 bytes) as a program's result;
dense ones (three in ~120 bytes: a worst case) printed."""
KINDS = ["email", "phone", "credit_card", "iban", "ipv4", "ipv6", "us_ssn"]
LIMITS = {"resourceLimits": {"maxOutputBytes": 4 << 20, "maxLogEntries": 200_000, "timeoutMs": 60_000}}
CARDS = ["4111 1111 1111 1111", "5555 5555 5555 4444", "3782 822463 10005", "6011 1111 1111 1117"]
RECORD_JS = (
    "const cards = " + repr(CARDS) + ";\n"
    "const line = (i) => `${i},Customer ${i},user${i}@example.com,+1 415 555 ${String(i % 10000).padStart(4, '0')},"
    "${cards[i % 4]},ordered ${i % 7} items on 2026-12-0${1 + (i % 9)}, shipped from warehouse ${i % 13}`;\n"
)


def records_program(size: int) -> str:
    """A program that prints ``size`` bytes of records (about 120 bytes each) and returns how many."""
    count = size // 120
    return (
        RECORD_JS
        + f"const out = [];\nfor (let i = 0; i < {count}; i++) out.push(line(i));\n"
        + (f'console.log(out.join("\\n"));\nreturn {count};')
    )


JSON_RECORDS_JS = (
    "const cards = " + repr(CARDS) + ";\n"
    "const record = (i) => ({ id: `C-${100000 + i}`, name: `Customer ${i}`, email: `user${i}@example.com`,\n"
    "  phone: `+1 415 555 ${String(i % 10000).padStart(4, '0')}`, status: i % 3 ? 'active' : 'paused',\n"
    "  created: `2026-0${1 + (i % 9)}-1${i % 10}T10:2${i % 10}:00Z`, plan: ['free', 'team', 'enterprise'][i % 3],\n"
    "  address: { street: `${i} Market Street`, city: 'San Francisco', zip: `94${String(100 + (i % 900))}` },\n"
    "  orders: [{ id: `O-${i}1`, total: 12.5 + i, items: i % 5 }, { id: `O-${i}2`, total: 3 + i, items: 1 }],\n"
    "  payment: { card: cards[i % 4], expires: `0${1 + (i % 9)}/2${7 + (i % 3)}` } });\n"
)


def json_program(size: int) -> str:
    """A program that returns about ``size`` bytes of API-style JSON records (about 420 bytes and three
    personal values each: an e-mail address, a phone number, a card number)."""
    count = size // 420
    return JSON_RECORDS_JS + f"return Array.from({{ length: {count} }}, (_, i) => record(i));"


def records_text(size: int) -> str:
    """The same records, made here (for the scrubber alone)."""
    lines = [
        f"{i},Customer {i},user{i}@example.com,+1 415 555 {i % 10000:04d},{CARDS[i % 4]},ordered {i % 7} items "
        f"on 2026-12-0{1 + i % 9}, shipped from warehouse {i % 13}"
        for i in range(size // 120)
    ]
    return "\n".join(lines) + "\n"


async def through_mcp(runs: int) -> list[list[object]]:
    rows: list[list[object]] = []
    on_config = {**LIMITS, "privacy": {"tokenize": KINDS}}
    async with through.served("http", extra=LIMITS) as off, through.served("http", extra=on_config) as on:
        actions: dict[str, Any] = {}
        for label, size in SHAPES:
            code, expected = through.TRIVIAL["typescript"], 2
            if label.endswith("result"):
                code, expected = json_program(size), None
            elif size:
                code, expected = records_program(size), size // 120
            for name, server in (("off", off), ("on", on)):
                actions[f"{label} {name}"] = lambda s=server, c=code, e=expected: through.execute(
                    s.client, "typescript", c, e
                )
        samples = await through.interleaved(actions, runs, 0.05)
    for label, size in SHAPES:
        off_median, off_p95, _ = summarize(samples[f"{label} off"])
        on_median, on_p95, _ = summarize(samples[f"{label} on"])
        added = on_median - off_median
        rows.append([f"{label}, privacy off", off_median, off_p95, None, None])
        rate = size / 1e6 / (added / 1000) if size and added > 0 else None
        share = f"{100 * added / off_median:+.1f} %"
        rows.append([f"{label}, privacy on", on_median, on_p95, f"{added:+.2f} ({share})", rate])
    return rows


async def scrubber_alone(runs: int) -> list[list[object]]:
    rows: list[list[object]] = []
    alice = Caller("alice", "principal")
    for label, size in (("64 KB", 64 * 1024), ("1 MB", 1_000_000)):
        text = records_text(size)
        whole: list[float] = []
        streamed: list[float] = []
        for _ in range(runs):
            privacy = Privacy(PrivacyConfig(tokenize=KINDS), MemoryTokenMap(3600, 1_000_000))  # type: ignore[arg-type]
            started = time.perf_counter()
            await privacy.text(alice, text, Tally())
            whole.append((time.perf_counter() - started) * 1000)

            async def tokenize(piece: str, p: Privacy = privacy) -> str:
                return await p.text(alice, piece, Tally())

            out: list[str] = []
            started = time.perf_counter()
            async with TokenizingStream.open(tokenize, privacy.finder, lambda _, t, o=out: o.append(t)) as feed:
                for start in range(0, len(text), 4096):
                    feed("stdout", text[start : start + 4096])
            streamed.append((time.perf_counter() - started) * 1000)
        for name, samples in (("one pass", whole), ("streamed in 4 KB pieces", streamed)):
            median, p95, _ = summarize(samples)
            rows.append([f"scrubber alone, {label}, {name}", median, p95, None, len(text) / 1e6 / (median / 1000)])
    return rows


async def main(runs: int) -> None:
    print(f"# Tokenising personal values (privacy), TypeScript through MCP (Streamable HTTP), {runs} runs each")
    print("Columns: median and p95 in ms; 'added' is the median with privacy on less the one with it off;")
    print("MB/s is the output's size over that added time (through MCP) or over the median (scrubber alone).\n")
    started = time.perf_counter()
    rows = await through_mcp(runs)
    rows.extend(await scrubber_alone(max(5, runs // 2)))
    print(table(["measure", "median", "p95", "added", "MB/s"], rows, first_width=58))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    anyio.run(main, parser.parse_args().runs)
