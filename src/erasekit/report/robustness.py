"""The robustness table: attack success rates of every attack against every erasure, next to the
base model (the ceiling) and the oracle (the floor: a model that never learned the concept)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

ROW_ORDER = {"base model": 0, "oracle": 1}


def _cell(a: dict | None) -> str:
    if not a:
        return "–"
    lo, hi = a["asr_ci"]
    return f"{100 * a['asr']:.0f} ({100 * lo:.0f}–{100 * hi:.0f})"


def attack_summary(result: dict) -> dict:
    """The fields of an attack report the table needs (its per-trial findings left out)."""
    keys = ("attack", "budget", "budget_unit", "trials", "asr", "asr_ci", "asr_before", "recovered", "curve", "seconds")
    return {k: result[k] for k in keys if k in result}


def robustness_markdown(rows: list[dict], header: str = "") -> str:
    """One table per concept; ``rows``: ``{"concept", "label", "ira", "attacks": {name: summary}}``."""
    by_concept: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_concept[r["concept"]].append(r)
    names = sorted({a for r in rows for a in r["attacks"]})
    lines = [header.rstrip(), ""] if header else []
    for concept in sorted(by_concept):
        group = sorted(by_concept[concept], key=lambda r: (ROW_ORDER.get(r["label"], 2), r["label"]))
        lines += [f"### {concept}", "", "| model | IRA % | plain % | worst ASR % | " + " | ".join(names) + " |",
                  "|" + "|".join(["---"] * (len(names) + 4)) + "|"]  # fmt: skip
        for r in group:
            atts = r["attacks"]
            plain = max((a["asr_before"] for a in atts.values()), default=None)
            worst = max((a["asr"] for a in atts.values()), default=None)
            ira = "–" if r.get("ira") is None else f"{100 * r['ira']:.0f}"
            label = f"*{r['label']}*" if r["label"] in ROW_ORDER else r["label"]
            lines.append(f"| {label} | {ira} | {'–' if plain is None else f'{100 * plain:.0f}'} | "
                         f"{'–' if worst is None else f'{100 * worst:.0f}'} | " + " | ".join(_cell(atts.get(n)) for n in names) + " |")  # fmt: skip
        lines.append("")
        budgets = {}
        for r in group:
            for n, a in r["attacks"].items():
                budgets.setdefault(n, a)
        lines.append("Budgets: " + "; ".join(f"{n} {a['budget']} {a['budget_unit']}" for n, a in sorted(budgets.items())) + ".")
        secs = defaultdict(list)
        for r in group:
            for n, a in r["attacks"].items():
                secs[n].append(a["seconds"])
        lines.append(
            "Mean seconds per attack (2-core CPU): "
            + "; ".join(f"{n} {sum(v) / len(v):.0f}" for n, v in sorted(secs.items()))
            + "."
        )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot_curves(rows: list[dict], path: str | Path) -> Path:
    """ASR against budget (as a share of each attack's budget), one panel per concept and attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from erasekit.core.outputs import write_image

    concepts = sorted({r["concept"] for r in rows})
    names = sorted({a for r in rows for a in r["attacks"]})
    methods = sorted({r["label"] for r in rows} - set(ROW_ORDER))
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    colours = {m: palette(i % palette.N) for i, m in enumerate(methods)}  # one colour per method in every panel
    fig, axes = plt.subplots(len(concepts), len(names), figsize=(2.2 * len(names), 2.0 * len(concepts)), squeeze=False,
                             sharey=True)  # fmt: skip
    for i, concept in enumerate(concepts):
        group = sorted((r for r in rows if r["concept"] == concept), key=lambda r: (ROW_ORDER.get(r["label"], 2), r["label"]))
        for j, name in enumerate(names):
            ax = axes[i][j]
            for r in group:
                a = r["attacks"].get(name)
                if not a:
                    continue
                xs = [b for b, _ in a["curve"]]
                ys = [100 * v for _, v in a["curve"]]
                style = {"base model": dict(color="black", ls="--"), "oracle": dict(color="gray", ls=":")}.get(
                    r["label"], dict(color=colours.get(r["label"]))
                )
                ax.plot(xs, ys, marker=".", label=r["label"], **style)
            ax.set_ylim(-3, 103)
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{concept}\nASR %", fontsize=8)
            if i == len(concepts) - 1:
                unit = next((r["attacks"][name]["budget_unit"] for r in group if name in r["attacks"]), "")
                ax.set_xlabel(unit, fontsize=7)
            ax.tick_params(labelsize=6)
    handles, labels = axes[0][0].get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    for row in axes:
        for ax in row:
            h, lab = ax.get_legend_handles_labels()
            by_label.update(zip(lab, h))
    fig.legend(by_label.values(), by_label.keys(), loc="lower center", ncol=min(8, len(by_label)), fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.canvas.draw()
    from PIL import Image

    image = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()).convert("RGB")
    plt.close(fig)
    return write_image(image, path, "plot")
