#!/usr/bin/env python3
"""Per-kernel time of a training step from an Nsight Compute CSV, largest first.

How the per-kernel tables of docs/perf_train.md are made, on a GPU host:

    ncu --clock-control none --csv \\
        --metrics gpu__time_duration.sum,launch__grid_size,launch__block_size \\
        --launch-skip 5000 --launch-count 1250 \\
        build/ssmtrain-bench train --only "mamba 24x768 (129M)" > step.csv
    python3 tools/ncu_summary.py step.csv [--per STEPS] [--top N]

Nsight Compute serialises the kernels, so the total leaves out the overlap and launch gaps
of the real step; the shares are what it is good for. Kernels are grouped by name (template
arguments kept, argument lists dropped), then by name and launch geometry. --per divides
the times by a number of steps (e.g. when the launch window spans several).
"""
import argparse
import collections
import csv
import re
import sys

TO_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}


def read(path):
    """{launch id: (kernel name, {metric: value})} from ncu's --csv output."""
    header, kernels = None, {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if row and row[0] == "ID":
                header = row
                continue
            if not header or len(row) != len(header):
                continue  # ncu's own log lines
            d = dict(zip(header, row))
            name = re.sub(r"\(.*", "", d["Kernel Name"]).strip()
            value = d["Metric Value"].replace(",", "")
            metrics = kernels.setdefault(d["ID"], (name, {}))[1]
            if d["Metric Name"] == "gpu__time_duration.sum":
                metrics["us"] = float(value) * TO_US.get(d["Metric Unit"], 1.0)
            else:
                metrics[d["Metric Name"]] = value
    return kernels


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--per", type=float, default=1.0, help="divide times by this many steps")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    kernels = read(args.csv)
    if not kernels:
        sys.exit(f"ncu_summary: no kernel rows in {args.csv} (was ncu run with --csv?)")
    by_name = collections.defaultdict(lambda: [0, 0.0])
    by_grid = collections.defaultdict(lambda: [0, 0.0])
    for name, m in kernels.values():
        us = m.get("us", 0.0)
        by_name[name][0] += 1
        by_name[name][1] += us
        key = f"{name[:70]}  grid {m.get('launch__grid_size', '?')} block {m.get('launch__block_size', '?')}"
        by_grid[key][0] += 1
        by_grid[key][1] += us
    total = sum(t for _, t in by_name.values())
    print(f"{len(kernels)} launches, {total / 1e3 / args.per:.3f} ms of kernel time (per step: / {args.per:g})")
    for title, table in (("by kernel", by_name), ("by kernel and launch geometry", by_grid)):
        print(f"--- {title}: ms, launches, share")
        for key, (n, us) in sorted(table.items(), key=lambda kv: -kv[1][1])[: args.top]:
            print(f"{us / 1e3 / args.per:9.3f} {n / args.per:7.1f} {100 * us / total:5.1f}%  {key}")


if __name__ == "__main__":
    main()
