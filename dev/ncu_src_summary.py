"""Summarise an Nsight Compute source page (CSV) by source line: stall samples per line and reason.
    ncu -i report.ncu-rep --page source --csv --print-source sass > src.csv
    python3 dev/ncu_src_summary.py src.csv [top]
Prints the columns found (the CSV layout differs between ncu versions), the stall reasons summed over the
kernel, and the `top` lines (default 30) with the most samples, each with its three largest reasons."""
import csv
import sys


def num(s):
    try:
        return float(str(s).replace(",", ""))
    except ValueError:
        return 0.0


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    hi = next((i for i, r in enumerate(rows) if any("Source" in c for c in r)), None)
    if hi is None:
        sys.exit(f"{path}: no header with a 'Source' column; first lines: {rows[:3]}")
    head, body = rows[hi], [r for r in rows[hi + 1:] if len(r) == len(rows[hi])]
    print("columns:", " | ".join(head))
    src = next(i for i, c in enumerate(head) if "Source" in c)
    line = next((i for i, c in enumerate(head) if c.strip() in ("#", "Line", "Address")), None)
    total = next((i for i, c in enumerate(head) if "Warp Stall Sampling (All" in c), None)
    reasons = [i for i, c in enumerate(head) if c.lower().startswith("stall_") or "stall_" in c.lower()]
    if total is None:
        sys.exit("no 'Warp Stall Sampling (All Samples)' column")
    tot = sum(num(r[total]) for r in body)
    print(f"lines {len(body)}, stall samples {tot:.0f}")
    if reasons:
        sums = sorted(((sum(num(r[i]) for r in body), head[i]) for i in reasons), reverse=True)
        print("by reason: " + ", ".join(f"{n} {100 * v / max(tot, 1):.1f}%" for v, n in sums if v > 0))
    body.sort(key=lambda r: -num(r[total]))
    for r in body[:top]:
        s = num(r[total])
        if s <= 0:
            break
        why = sorted(((num(r[i]), head[i]) for i in reasons), reverse=True)[:3]
        tag = r[line] if line is not None else ""
        print(f"{100 * s / max(tot, 1):5.1f}% {tag:>6} {r[src].strip()[:110]}")
        if why and why[0][0] > 0:
            print("        " + ", ".join(f"{n} {100 * v / s:.0f}%" for v, n in why if v > 0))


if __name__ == "__main__":
    main()
