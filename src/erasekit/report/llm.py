"""Markdown tables of language-model unlearning runs (``erasekit bench --model testbed-llm``): the
results table (forget, forget quality, utility, privacy) and the robustness table (ASR per attack),
each with the base model and the oracle as reference rows."""

from __future__ import annotations


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}"


def _num(v, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _ci(rate: dict | None) -> str:
    if not rate or rate.get("rate") is None:
        return "n/a"
    lo, hi = rate["ci95"]
    return f"{100 * rate['rate']:.0f} [{100 * lo:.0f}, {100 * hi:.0f}]"


def llm_results_markdown(runs: list[dict], header: str) -> str:
    """One row per (split, model): base, oracle, then each method (runs as written by the LLM bench)."""
    lines = [header, "", "| split | model | forgotten % | forgotten, paraphrase % | truth ratio | forget quality | "
             "model utility | retain accuracy % | privacy leak % | seconds | MiB |", "|" + " --- |" * 11]  # fmt: skip
    for r in sorted(runs, key=_order):
        e = r["eval"]
        if r["label"] in ("base", "oracle"):
            b = e["base"] if r["label"] == "base" else e["oracle"]
            lines.append(
                f"| {r['split']} | *{r['label']}* | {_ci(b['forgotten'])} | | {_num(b['truth_ratio_forget'])} | "
                f"{_num(b.get('forget_quality'), '{:.3g}')} | {_num(b['model_utility'])} | {_pct(b['retain_accuracy']['rate'])} | "
                f"{_num(b.get('privacy_leak'), '{:+.1f}')} | | |"
            )
            continue
        f, ret = e["forget"], e["retain"]
        cost = e.get("cost") or {}
        lines.append(
            f"| {r['split']} | {r['label']} | {_ci(f['forgotten'])} | {_pct(f['forgotten_paraphrase'])} | "
            f"{_num(f['truth_ratio_forget'])} | {_num(f.get('forget_quality'), '{:.3g}')} | {_num(ret['model_utility'])} | "
            f"{_pct(ret['accuracy']['rate'])} | {_num(f.get('privacy_leak'), '{:+.1f}')} | {_num(cost.get('seconds'), '{:.0f}')} | "
            f"{_num((cost.get('delta_bytes') or 0) / 2**20, '{:.1f}')} |"
        )
    return "\n".join(lines) + "\n"


def llm_robustness_markdown(runs: list[dict], attacks: list[str], header: str) -> str:
    """ASR (%) with its interval per attack, and the largest, per (split, model)."""
    lines = [header, "", "| split | model | plain | " + " | ".join(attacks) + " | max |", "|" + " --- |" * (len(attacks) + 4)]
    for r in sorted(runs, key=_order):
        found = r.get("attacks") or {}
        if not found:
            continue
        cells, asrs = [], []
        for a in attacks:
            res = found.get(a)
            if res is None:
                cells.append("")
                continue
            lo, hi = res["asr_ci"]
            cells.append(f"{100 * res['asr']:.0f} [{100 * lo:.0f}, {100 * hi:.0f}]")
            asrs.append(res["asr"])
        plain = max((res["asr_before"] for res in found.values()), default=None)
        label = f"*{r['label']}*" if r["label"] in ("base", "oracle") else r["label"]
        lines.append(f"| {r['split']} | {label} | {_pct(plain)} | " + " | ".join(cells) + f" | {_pct(max(asrs, default=None))} |")
    return "\n".join(lines) + "\n"


def _order(r: dict) -> tuple:
    rank = {"base": 0, "oracle": 1}.get(r["label"], 2)
    return (r["split"], rank, r["label"])
