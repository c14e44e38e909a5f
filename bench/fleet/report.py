"""The fleet figures as Markdown tables, and the simulation's chart (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RUNS = {"a": "(a) all up", "b": "(b) one stopped", "c": "(c) back"}
MODES = {"hash": "study hash", "roundrobin": "round robin"}


def _row(label: str, cells: list[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def fleet_table(results: dict[str, Any]) -> str:
    columns = [
        (mode, run) for mode in MODES if mode in results for run in RUNS if run in results[mode]
    ]
    header = _row("", [f"{MODES[m]} {RUNS[r]}" for m, r in columns])
    lines = [header, "|---|" + "---:|" * len(columns)]

    def cells(render: Any) -> list[str]:
        return [render(results[m][r]) for m, r in columns]

    lines += [
        _row("client requests", cells(lambda r: str(r["requests"]))),
        _row("client errors", cells(lambda r: str(r["errors"]))),
        _row("fleet hit ratio", cells(lambda r: f"{r['hit_ratio']:.1%}")),
        _row("studies opened", cells(lambda r: str(r["studies_opened"]))),
        _row("studies fetched from the archive", cells(lambda r: str(len(r["studies_fetched"])))),
        _row("archive requests per study", cells(lambda r: f"{r['requests_per_study']:.2f}")),
        _row("archive KiB per study", cells(lambda r: f"{r['bytes_per_study'] / 1024:.0f}")),
        _row("copies fetched per resource", cells(lambda r: f"{r['copies']:.2f}")),
        _row("study load p50 (ms)", cells(lambda r: f"{r['p50_s'] * 1000:.0f}")),
        _row("study load p99 (ms)", cells(lambda r: f"{r['p99_s'] * 1000:.0f}")),
    ]
    return "\n".join(lines)


def agreement_table(results: dict[str, Any]) -> str:
    """Where the fleet and the model overlap: which studies each run fetched, routing."""
    lines = [
        "| run | studies the model says are fetched | fetched in the fleet | in both |",
        "|---|---:|---:|---:|",
    ]
    hashing = results.get("hash", {})
    for run, label in RUNS.items():
        if run not in hashing:
            continue
        predicted = set(results["prediction"][run])
        if run == "a":
            predicted = set(predicted)
        measured = set(hashing[run]["studies_fetched"])
        lines.append(
            f"| {label} | {len(predicted)} | {len(measured)} | {len(predicted & measured)} |"
        )
    routing = [hashing[run]["routing"] for run in RUNS if run in hashing]
    checked = sum(item["checked"] for item in routing)
    mismatched = sum(item["mismatched"] for item in routing)
    window = sum(item["in_window"] for item in routing)
    lines.append("")
    lines.append(
        f"Replica named by `X-Served-By` vs the ring model: {checked - mismatched} of {checked} "
        f"answers agree ({window} answers to requests sent between the stop and HAProxy marking "
        "the replica down are not compared)."
    )
    if "roundrobin" in results:
        measured = results["roundrobin"]["a"]["copies"]
        lines.append(
            f"Round robin, run (a): {measured:.2f} copies fetched per resource in the fleet, "
            f"{results['prediction_roundrobin_copies']:.2f} predicted for the same trace "
            "(each request to a random replica, as interleaved viewers make it)."
        )
    return "\n".join(lines)


def verdict_lines(results: dict[str, Any]) -> str:
    return "\n".join(
        f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in results.get("verdicts", {}).items()
    )


def hit_table(simulation: dict[str, Any]) -> str:
    hits = simulation["hits"]
    fractions = sorted({item["cache_fraction"] for item in hits})
    counts = sorted({item["replicas"] for item in hits})
    header = "| replicas | " + " | ".join(f"hash {f:.0%} | rr {f:.0%}" for f in fractions) + " |"
    lines = [header, "|---:|" + "---:|---:|" * len(fractions)]
    index = {(h["policy"], h["replicas"], h["cache_fraction"]): h for h in hits}
    for count in counts:
        cells = []
        for fraction in fractions:
            for policy in ("hash", "roundrobin"):
                cells.append(f"{index[(policy, count, fraction)]['byte_hit_ratio']:.1%}")
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loss_table(simulation: dict[str, Any]) -> str:
    lines = [
        "| replicas | 1/N | consistent (mean) | consistent (largest share) | map-based | "
        "back under its id | back with new points |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for item in simulation["losses"]:
        n = item["replicas"]
        lines.append(
            f"| {n} | {1 / n:.1%} | {item['consistent']:.1%} | {item['consistent_worst']:.1%} | "
            f"{item['map_based']:.1%} | {item['back_same_id']:.1%} | "
            f"{item['back_new_points']:.1%} |"
        )
    return "\n".join(lines)


def spread_table(simulation: dict[str, Any]) -> str:
    spread = simulation["share_spread"]
    counts = sorted(next(iter(spread.values())))
    lines = [
        "| weight (points) | " + " | ".join(f"N={n}" for n in counts) + " |",
        "|---|" + "---:|" * len(counts),
    ]
    for weight, values in spread.items():
        cells = [f"{values[n]:.2f}" for n in counts]
        lines.append(f"| {weight} ({int(weight) * 16}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(
    results: dict[str, Any] | None, simulation: dict[str, Any] | None, command: str
) -> str:
    parts = [f"# Fleet: study hashing vs round robin\n\n`{command}`\n"]
    if results is not None:
        plan = results["plan"]
        parts.append(
            f"Fleet: 3 replicas behind HAProxy (`deploy/balancers/haproxy.cfg`), one Orthanc "
            f"behind a counting relay. {plan['studies']} studies of {plan['series']}×"
            f"{plan['instances']} instances ({plan['rows']}×{plan['columns']}), "
            f"{plan['opens']} opens (Zipf {plan['exponent']}), {plan['viewers']} viewers, each "
            "open: metadata, then instances 6 at a time. Run (b) sends SIGTERM to proxy-1 at "
            f"open {int(plan['opens'] * plan['stop_at'])}; its share of the opened studies: "
            f"{results['stopped_share']:.1%}.\n"
        )
        parts.append(fleet_table(results) + "\n")
        parts.append(verdict_lines(results) + "\n")
        parts.append("## Fleet and model\n\n" + agreement_table(results) + "\n")
    if simulation is not None:
        work = simulation["workload"]
        parts.append(
            "## Simulation\n\n"
            f"{work['studies']} studies (log-normal sizes, median {work['median_mib']:.0f} MiB, "
            f"{simulation['catalogue_gib']:.0f} GiB in all), {work['opens']} opens "
            f"(Zipf {work['exponent']}); one LRU cache per replica, sized as a share of the "
            "catalogue. Byte hit ratio of the fleet:\n"
        )
        parts.append(hit_table(simulation) + "\n")
        parts.append("Studies fetched again when one of N replicas is lost (unbounded caches):\n")
        parts.append(loss_table(simulation) + "\n")
        parts.append("Largest share × N on HAProxy's ring by server weight (1.00 is even):\n")
        parts.append(spread_table(simulation) + "\n")
    return "\n".join(parts)


def chart(simulation: dict[str, Any], path: Path, fleet: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    hits = simulation["hits"]
    colours = ["tab:blue", "tab:green", "tab:purple", "tab:red", "tab:orange"]
    for colour, fraction in zip(colours, sorted({h["cache_fraction"] for h in hits}), strict=False):
        for policy, style in (("hash", "-o"), ("roundrobin", "--s")):
            rows = sorted(
                (h["replicas"], h["byte_hit_ratio"])
                for h in hits
                if h["policy"] == policy and h["cache_fraction"] == fraction
            )
            label = f"{MODES[policy]}, cache {fraction:.0%}/replica"
            left.plot(*zip(*rows, strict=True), style, color=colour, label=label)
    left.set_xlabel("replicas")
    left.set_ylabel("fleet byte hit ratio")
    left.set_title("Hit ratio vs replicas and cache size")
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    losses = simulation["losses"]
    counts = [item["replicas"] for item in losses]
    right.plot(counts, [1 / n for n in counts], ":", color="grey", label="1/N")
    right.plot(
        counts,
        [item["consistent_worst"] for item in losses],
        "-^",
        label="consistent, the largest share lost",
    )
    right.plot(counts, [item["map_based"] for item in losses], "--s", label="map-based")
    if fleet is not None and "served_share" in fleet:
        # The fleet's own point: the share of the opened studies proxy-1 served in run (a),
        # i.e. what losing it costs once every one of them is opened again.
        label = (
            f"fleet: proxy-1's share of its {fleet['hash']['a']['studies_opened']} studies, "
            f"{fleet['served_share']:.0%} (model: {fleet['stopped_share']:.0%})"
        )
        right.plot([3], [fleet["served_share"]], "k*", markersize=12, label=label)
    right.set_xlabel("replicas")
    right.set_ylabel("share of studies fetched again")
    right.set_title("Losing one replica")
    right.set_ylim(0, 1)
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
