#!/usr/bin/env python3
"""Draw docs/benchmarks.svg from the tables in docs/benchmarks.md: for each benchmark,
mailspool's figure as a multiple of the peer's in the same run (peer = 1): Postfix, and
for bench/peers' rows Exim, OpenSMTPD, nullmailer or dma.

    python3 bench/chart.py            # reads docs/benchmarks.md, writes docs/benchmarks.svg
"""
import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
text = (root / "docs" / "benchmarks.md").read_text()


def number(cell):
    m = re.search(r"[\d.]+", cell.replace(",", ""))
    return float(m.group()) if m else None


def rows():
    """Table rows, each with the file system its section names ("### file system: X",
    bench/filesystems' runs) or "" for the earlier runs on the root disk."""
    fs = ""
    for line in text.splitlines():
        if line.startswith("## "):
            fs = ""
        elif line.startswith("### file system: "):
            fs = line[len("### file system: "):].strip()
        elif line.startswith("|") and not line.startswith("| ---"):
            yield fs, [c.strip() for c in line.strip("|").split("|")]


PEERS = ("exim", "opensmtpd", "nullmailer", "dma")
PEER_MEASURES = {
    "`sendmail -t -i`": ("sendmail -t -i (msgs/s)", True),
    "SMTP, 20 connections": ("SMTP x20, end to end (msgs/s)", True),
    "peak PSS": ("memory under SMTP load (PSS, less is better)", False),
    "SMTP, one client": ("SMTP x1, end to end (msgs/s)", True),
}

# (label, mailspool value, peer value, higher is better); the peer is Postfix unless
# the label names another.
bars = []
table = list(rows())
for i, (fs, r) in enumerate(table):
    start = len(bars)
    if r[0].startswith("`mailspool send -t -i`"):
        postfix = next(x for _, x in table[i:] if x[0].startswith("Postfix `sendmail"))
        bars.append(("intake: send vs sendmail (msgs/s)", number(r[1]), number(postfix[1]), True))
    elif r[0].startswith("end to end,") and len(r) >= 3 and number(r[2]):
        bars.append(("deliver: end to end (msgs/s)", number(r[1]), number(r[2]), True))
    elif r[0].startswith("draining") and len(r) >= 3:
        bars.append(("deliver: draining deferred (msgs/s)", number(r[1]), number(r[2]), True))
    elif r[0].startswith("smtp-source -s 20"):
        bars.append(("serve: smtp-source -s 20 (msgs/s)", number(r[1]), number(r[2]), True))
    elif r[0].startswith("smtp-source -s 1,"):
        bars.append(("serve: smtp-source -s 1 (msgs/s)", number(r[1]), number(r[2]), True))
    elif r[0].startswith("`smtp-source -s 20 -m") and "accept while delivering" in r[0] and len(r) >= 3:
        bars.append(("load: -s 20, serve + daemon end to end (msgs/s)", number(r[1]), number(r[2]), True))
    elif r[0].startswith("`smtp-source -s 1 -m") and len(r) >= 3:
        bars.append(("load: -s 1, serve + daemon end to end (msgs/s)", number(r[1]), number(r[2]), True))
    elif r[0].startswith("`smtp-source -s 20 -m") and "-r 10" in r[0] and len(r) >= 3:
        bars.append(("load: -r 10, serve + daemon end to end (msgs/s)", number(r[1]), number(r[2]), True))
    elif r[0].startswith("TLS both hops") and len(r) >= 3:
        bars.append(("load: TLS both hops, end to end (msgs/s)", number(r[1]), number(r[2]), True))
    elif r[0].startswith("peak PSS under"):
        bars.append(("serve: memory under load (PSS, less is better)", number(r[1]), number(r[2]), False))
    elif r[0] in PEERS and len(r) >= 5:
        # bench/peers: mailspool's figures before and after the peer, then the peer's.
        before_after = [float(x) for x in re.findall(r"[\d.]+", r[2])[:2]]
        kind = next((k for k in PEER_MEASURES if r[1].startswith(k)), None)
        if kind and before_after:
            label, up = PEER_MEASURES[kind]
            mean = sum(before_after) / len(before_after)
            bars.append((f"{r[0]}: {label}", mean, number(r[3]), up))
    elif r[0].startswith("user's `sendmail -t -i` through") and len(r) >= 3:
        peer = next(x for _, x in table[i:] if x[0].startswith("user's Postfix"))
        bars.append(("drop: user's sendmail -t -i (msgs/s)", number(r[1]), number(peer[1]), True))
    elif r[0].startswith("root's `sendmail -t -i` through") and len(r) >= 3:
        peer = next(x for _, x in table[i:] if x[0].startswith("root's Postfix"))
        bars.append(("drop: root's sendmail -t -i (msgs/s)", number(r[1]), number(peer[1]), True))
    elif r[0].startswith("peak PSS while draining") and len(r) >= 3:
        bars.append(("backlog: peak PSS draining (less is better)", number(r[1]), number(r[2]), False))
    if fs:
        bars[start:] = [(f"{b[0]} [{fs}]",) + b[1:] for b in bars[start:]]

if not bars:
    sys.exit("no benchmark rows found in docs/benchmarks.md")
# A benchmark rerun later in the page replaces the earlier figures.
latest = {}
for bar in bars:
    latest[bar[0]] = bar
bars = list(latest.values())

width, left, row_h, top = 900, 330, 34, 60
# A log scale: the ratios run from about 1 to over 100 (Exim and OpenSMTPD wait).
import math

scale_min = 0.5
scale_max = max(max(m / p if up else p / m for _, m, p, up in bars), 1.0) * 1.5
height = top + row_h * len(bars) + 50
span = math.log(scale_max) - math.log(scale_min)
x_of = lambda v: left + (width - left - 60) * (math.log(max(v, scale_min)) - math.log(scale_min)) / span
out = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
    '<rect width="100%" height="100%" fill="white"/>',
    f'<text x="{width / 2}" y="28" text-anchor="middle" font-size="16" font-weight="bold">mailspool vs Postfix and the other Debian MTAs, same run, same machine (peer = 1, log scale)</text>',
]
for i, (label, m, p, up) in enumerate(bars):
    y = top + i * row_h
    ratio = m / p if up else p / m
    out.append(f'<text x="{left - 10}" y="{y + 18}" text-anchor="end">{label}</text>')
    out.append(f'<rect x="{left}" y="{y + 4}" width="{x_of(ratio) - left:.1f}" height="20" fill="#2b7bb9"/>')
    out.append(f'<text x="{x_of(ratio) + 6:.1f}" y="{y + 18}">{ratio:.2f}×</text>')
one = x_of(1.0)
out.append(f'<line x1="{one:.1f}" y1="{top - 5}" x2="{one:.1f}" y2="{top + row_h * len(bars)}" stroke="#c0392b" stroke-dasharray="4 3"/>')
out.append(f'<text x="{one:.1f}" y="{top + row_h * len(bars) + 18}" text-anchor="middle" fill="#c0392b">peer</text>')
out.append("</svg>")
(root / "docs" / "benchmarks.svg").write_text("\n".join(out) + "\n")
print(f"wrote docs/benchmarks.svg with {len(bars)} bars")
