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

Where the CSV also holds the utilisation metrics below (add them to --metrics), the
per-geometry table shows their launch means, which say what bounds a kernel: the tensor
pipe, the issue slots, the XU pipe (exponentials), achieved occupancy, DRAM throughput:

    sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_elapsed,
    sm__issue_active.avg.pct_of_peak_sustained_active,
    sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,
    sm__warps_active.avg.pct_of_peak_sustained_active,
    dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__registers_per_thread

and, for a kernel that leaves issue slots idle, why its warps wait: the stall reasons as
warps stalled per issue-active cycle (smsp__average_warps_issue_stalled_<reason>_per_issue_active.ratio
for reason = barrier, long_scoreboard (global/L2 loads), short_scoreboard (shared memory,
MUFU), mio_throttle, wait (fixed-latency dependences), math_pipe_throttle, not_selected);
`python3 tools/ncu_summary.py --stall-metrics` prints them ready for --metrics.

(docs/perf_ssm.md, "Factored decays, straight-line tile staging", has such a table.)
"""
import argparse
import collections
import csv
import re
import sys

TO_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
# Utilisation metrics shown when present: (metric, column title).
UTIL = [("sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_elapsed", "tensor%"),
        ("sm__issue_active.avg.pct_of_peak_sustained_active", "issue%"),
        ("sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active", "xu%"),
        ("sm__warps_active.avg.pct_of_peak_sustained_active", "occup%"),
        ("dram__throughput.avg.pct_of_peak_sustained_elapsed", "dram%"),
        ("launch__registers_per_thread", "regs")]
STALL_REASONS = [("barrier", "bar"), ("long_scoreboard", "longsb"), ("short_scoreboard", "shortsb"),
                 ("mio_throttle", "mio"), ("wait", "wait"), ("math_pipe_throttle", "mathth"),
                 ("not_selected", "notsel")]
UTIL += [(f"smsp__average_warps_issue_stalled_{r}_per_issue_active.ratio", t) for r, t in STALL_REASONS]
STALL_METRICS = ",".join(m for m, _ in UTIL[-len(STALL_REASONS):])


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
    ap.add_argument("csv", nargs="?")
    ap.add_argument("--per", type=float, default=1.0, help="divide times by this many steps")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--stall-metrics", action="store_true", help="print the stall metrics' names for --metrics and exit")
    args = ap.parse_args()
    if args.stall_metrics:
        print(STALL_METRICS)
        return
    if not args.csv:
        ap.error("the CSV file is required")
    kernels = read(args.csv)
    if not kernels:
        sys.exit(f"ncu_summary: no kernel rows in {args.csv} (was ncu run with --csv?)")
    by_name = collections.defaultdict(lambda: [0, 0.0])
    by_grid = collections.defaultdict(lambda: [0, 0.0])
    util = collections.defaultdict(lambda: collections.defaultdict(list))  # geometry key -> metric -> values
    present = [(m, t) for m, t in UTIL if any(m in k[1] for k in kernels.values())]
    for name, m in kernels.values():
        us = m.get("us", 0.0)
        by_name[name][0] += 1
        by_name[name][1] += us
        key = f"{name[:70]}  grid {m.get('launch__grid_size', '?')} block {m.get('launch__block_size', '?')}"
        by_grid[key][0] += 1
        by_grid[key][1] += us
        for metric, _ in present:
            try:
                util[key][metric].append(float(m[metric]))
            except (KeyError, ValueError):
                pass
    total = sum(t for _, t in by_name.values())
    print(f"{len(kernels)} launches, {total / 1e3 / args.per:.3f} ms of kernel time (per step: / {args.per:g})")
    for title, table in (("by kernel", by_name), ("by kernel and launch geometry", by_grid)):
        cols = present if table is by_grid else []
        print(f"--- {title}: ms, launches, share" + "".join(f", {t}" for _, t in cols))
        for key, (n, us) in sorted(table.items(), key=lambda kv: -kv[1][1])[: args.top]:
            means = ""
            for metric, _ in cols:
                v = util[key].get(metric)
                means += f" {sum(v) / len(v):7.1f}" if v else "       -"
            print(f"{us / 1e3 / args.per:9.3f} {n / args.per:7.1f} {100 * us / total:5.1f}%{means}  {key}")


if __name__ == "__main__":
    main()
