"""Plot a queue-depth timeline CSV (from ``make demo-cluster``) as a PNG with matplotlib.

Three panels sharing the time axis: queue depth (Triton's pending requests, summed over pods,
as Prometheus scraped it), replicas (desired and ready), throughput (requests completed per
second at the client). Runs in its own small environment (the ``plot`` extra), so the main
environment does not carry matplotlib.

    python bench/plot_timeline.py bench/results/queue_depth_loop.csv bench/results/queue_depth_loop.png
"""

from __future__ import annotations

import csv
import sys


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    source, target = argv
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    t = [float(r["seconds"]) for r in rows]
    fig, (depth, replicas, throughput) = plt.subplots(3, 1, sharex=True, figsize=(9, 7))
    depth.plot(t, [float(r["queue_depth"]) for r in rows], color="tab:red")
    depth.axhline(float(rows[0]["target_per_pod"]), color="grey", linestyle="--", label="target per pod")
    depth.set_ylabel("pending requests")
    depth.legend(loc="upper right")
    replicas.step(t, [int(r["replicas"]) for r in rows], where="post", label="desired")
    replicas.step(t, [int(r["ready_replicas"]) for r in rows], where="post", label="ready")
    replicas.set_ylabel("replicas")
    replicas.yaxis.set_major_locator(MaxNLocator(integer=True))
    replicas.legend(loc="upper right")
    throughput.plot(t, [float(r["throughput"]) for r in rows], color="tab:green")
    throughput.set_ylabel("requests/s")
    throughput.set_xlabel("seconds since load start")
    for axis in (depth, replicas, throughput):
        for r in rows:
            if r.get("event"):
                axis.axvline(float(r["seconds"]), color="black", alpha=0.3)
    for r in rows:
        if r.get("event"):
            depth.annotate(r["event"], (float(r["seconds"]), depth.get_ylim()[1]), fontsize=8,
                           rotation=90, va="top", ha="right")
    fig.suptitle("optimodel: Triton queue depth -> HPA -> replicas (real node, CPU)")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
