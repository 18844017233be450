"""Summarize a py-spy collapsed-stack profile: where the samples are, by own and total time.

python bench/summarize_profile.py results/transport-node.txt [--top 25]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f.split(" (")[0] + " " + f.split("/")[-1].rstrip(")") for f in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    print(f"{samples} samples")
    print("\nown time:")
    for f, n in own.most_common(args.top):
        print(f"{100 * n / samples:5.1f}%  {f}")
    print("\ntotal time:")
    for f, n in total.most_common(args.top):
        print(f"{100 * n / samples:5.1f}%  {f}")


if __name__ == "__main__":
    main()
