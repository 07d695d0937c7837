"""Markdown tables of benchmark results (``erasekit bench`` JSON)."""

from __future__ import annotations

from collections import defaultdict

DOMAIN_ORDER = ("shape", "style", "colour", "background", "character", "watermark")


def _pct(cell: dict | None) -> str:
    if not cell or cell.get("rate") is None:
        return "–"
    lo, hi = cell["ci95"]
    return f"{100 * cell['rate']:.0f} ({100 * lo:.0f}–{100 * hi:.0f})"


def _peak(run: dict) -> str:
    """Peak memory of the run (erase + evaluate), when it was measured per run (not process-wide)."""
    return f"{run['peak_memory_mib']:.0f}" if run.get("peak_memory_scope") == "run" else "–"


def method_label(run: dict) -> str:
    """The method as a results row names it: with its variant when the method has several (``uce (current)``)."""
    variant = (run.get("cost") or {}).get("params", {}).get("variant")
    return f"{run['method']} ({variant})" if variant else run["method"]


def results_markdown(runs: list[dict], header: str = "") -> str:
    """One table per concept domain; a base-model row per concept, then one row per method."""
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_domain[run["targets"][0]["domain"]].append(run)
    lines = [header.rstrip(), ""] if header else []
    cols = "| concept | method | UA % | UA synonyms % | IRA % | IRA neighbours % | CRA % | pixel change | labels kept % | FD (other) | erase s | peak MiB | delta MiB |"
    sep = "|" + "|".join(["---"] * (cols.count("|") - 1)) + "|"
    for domain in sorted(by_domain, key=lambda d: DOMAIN_ORDER.index(d) if d in DOMAIN_ORDER else 99):
        lines += [f"### {domain}", "", cols, sep]
        seen_base: set[str] = set()
        for run in sorted(by_domain[domain], key=lambda r: (r["concept"], r["method"])):
            concept = run["concept"]
            if concept not in seen_base:
                seen_base.add(concept)
                b = run["base"]["targets"][0]
                lines.append(f"| {concept} | *base model* | {_pct(b['ua'])} | {_pct(b['ua_synonym'])} | {_pct(b['ira'])} | "
                             f"{_pct(b['ira_neighbours'])} | {_pct(b['cra'])} | – | – | – | – | – | – |")  # fmt: skip
            t, fid, cost = run["targets"][0], run["fidelity"], run["cost"]
            fd = "–" if fid["frechet_distance"] is None else f"{fid['frechet_distance']:.2f}"
            lines.append(
                f"| {concept} | {method_label(run)} | {_pct(t['ua'])} | {_pct(t['ua_synonym'])} | {_pct(t['ira'])} | "
                f"{_pct(t['ira_neighbours'])} | {_pct(t['cra'])} | {fid['pixel_change']:.3f} | {_pct(fid['labels_unchanged'])} | "
                f"{fd} | {cost['erase_seconds']:.2f} | {_peak(run)} | {cost['delta_bytes'] / 2**20:.2f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"
