"""Summarise nvidia-smi samples by phase (dev/session58_round.sh clocks).

    python3 dev/smi_phases.py smi.csv marks.txt

smi.csv: `nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader,nounits -lms 50` lines
("2026/12/01 23:11:18.123, 1980, 650.2"); marks.txt: "<unix seconds> <phase name>" lines, each phase running to the
next mark. Prints, a phase, the median and 10th-90th percentiles of the SM clock and the power over the samples
drawn above 100 W (the GPU busy), and how many samples that was."""
import datetime
import sys


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def main(smi_path, marks_path):
    samples = []
    for line in open(smi_path):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            continue
        try:
            t = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((t, float(parts[1]), float(parts[2])))
        except ValueError:
            continue
    marks = [(float(a), b) for a, b in (line.split(None, 1) for line in open(marks_path) if line.strip())]
    for (t0, name), (t1, _) in zip(marks, marks[1:]):
        busy = [(c, p) for t, c, p in samples if t0 <= t < t1 and p > 100]
        clk, pw = [c for c, _ in busy], [p for _, p in busy]
        print(f"  {name.strip():8s} SM {pct(clk, 0.5):6.0f} MHz ({pct(clk, 0.1):.0f}-{pct(clk, 0.9):.0f}), "
              f"power {pct(pw, 0.5):5.0f} W ({pct(pw, 0.1):.0f}-{pct(pw, 0.9):.0f}), {len(busy)} samples")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
