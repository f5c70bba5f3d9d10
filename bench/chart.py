#!/usr/bin/env python3
"""Draw docs/benchmarks.svg from the tables in docs/benchmarks.md: for each benchmark,
mailspool's figure as a multiple of Postfix's in the same run (Postfix = 1).

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
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            yield [c.strip() for c in line.strip("|").split("|")]


# (label, mailspool value, Postfix value, higher is better)
bars = []
table = list(rows())
for i, r in enumerate(table):
    if r[0].startswith("`mailspool send -t -i`"):
        postfix = next(x for x in table[i:] if x[0].startswith("Postfix `sendmail"))
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

if not bars:
    sys.exit("no benchmark rows found in docs/benchmarks.md")
# A benchmark rerun later in the page replaces the earlier figures.
latest = {}
for bar in bars:
    latest[bar[0]] = bar
bars = list(latest.values())

width, left, row_h, top = 900, 330, 34, 60
scale_max = max(max(m / p if up else p / m for _, m, p, up in bars), 1.0) * 1.1
height = top + row_h * len(bars) + 50
x_of = lambda v: left + (width - left - 40) * v / scale_max
out = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
    '<rect width="100%" height="100%" fill="white"/>',
    f'<text x="{width / 2}" y="28" text-anchor="middle" font-size="16" font-weight="bold">mailspool vs Postfix, same run, same machine (Postfix = 1)</text>',
]
for i, (label, m, p, up) in enumerate(bars):
    y = top + i * row_h
    ratio = m / p if up else p / m
    out.append(f'<text x="{left - 10}" y="{y + 18}" text-anchor="end">{label}</text>')
    out.append(f'<rect x="{left}" y="{y + 4}" width="{x_of(ratio) - left:.1f}" height="20" fill="#2b7bb9"/>')
    out.append(f'<text x="{x_of(ratio) + 6:.1f}" y="{y + 18}">{ratio:.2f}×</text>')
one = x_of(1.0)
out.append(f'<line x1="{one:.1f}" y1="{top - 5}" x2="{one:.1f}" y2="{top + row_h * len(bars)}" stroke="#c0392b" stroke-dasharray="4 3"/>')
out.append(f'<text x="{one:.1f}" y="{top + row_h * len(bars) + 18}" text-anchor="middle" fill="#c0392b">Postfix</text>')
out.append("</svg>")
(root / "docs" / "benchmarks.svg").write_text("\n".join(out) + "\n")
print(f"wrote docs/benchmarks.svg with {len(bars)} bars")
