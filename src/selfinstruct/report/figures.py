"""The report's figures (the paper's Figures 2-4 and the ratings), drawn with matplotlib
and saved as PNG and SVG."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from selfinstruct.io import write_atomic
from selfinstruct.judge.rubric import QUESTIONS, RATING_MEANING
from selfinstruct.judge.rubric import RATING_ORDER as RATINGS
from selfinstruct.report.analysis import TOP_NOUNS


class Figures:
    """Draws with matplotlib (Agg) and saves each figure as PNG and SVG."""

    def __init__(self, out_dir: Path):
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        self.plt = plt
        self.out_dir = out_dir
        self.saved: dict[str, tuple[Path, Path]] = {}
        self.png_data: dict[str, bytes] = {}
        self.rc = {
            "svg.fonttype": "none",  # text stays text: smaller, searchable files
            "svg.hashsalt": "selfinstruct-report",  # stable ids between runs
            "font.size": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }

    def save(self, name: str, fig: Any) -> None:
        png, svg = self.out_dir / f"{name}.png", self.out_dir / f"{name}.svg"
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        data = buf.getvalue()
        write_atomic(png, data)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
        write_atomic(svg, buf.getvalue())
        self.plt.close(fig)
        self.saved[name] = (png, svg)
        self.png_data[name] = data

    def sunburst(self, top: list[tuple[str, int, list[tuple[str, int]]]]) -> None:
        plt = self.plt
        with plt.rc_context(self.rc):
            fig, ax = plt.subplots(figsize=(9.5, 9.5))
            total = sum(c for _, c, _ in top)
            cmap = plt.get_cmap("tab20")
            inner_colors = [cmap(i % 20) for i in range(len(top))]
            outer_sizes, outer_colors, outer_labels = self._outer_ring(top, inner_colors)
            kw = {"startangle": 90, "counterclock": False}
            ax.pie(
                [c for _, c, _ in top],
                radius=0.62,
                colors=inner_colors,
                wedgeprops={"width": 0.34, "edgecolor": "white", "linewidth": 0.8},
                **kw,
            )
            ax.pie(
                outer_sizes,
                radius=1.0,
                colors=outer_colors,
                wedgeprops={"width": 0.38, "edgecolor": "white", "linewidth": 0.6},
                **kw,
            )
            self._ring_labels(ax, [v for v, _, _ in top], [c for _, c, _ in top], total, 0.45, 3)
            self._ring_labels(ax, outer_labels, outer_sizes, total, 0.81, 1.6)
            ax.set(aspect="equal")
            ax.set_title(
                f"Top {len(top)} root verbs (inner) and their top {TOP_NOUNS} direct noun"
                " objects (outer)",
                pad=4,
            )
            self.save("fig2_verbs", fig)

    @staticmethod
    def _outer_ring(
        top: list[tuple[str, int, list[tuple[str, int]]]], inner_colors: list[Any]
    ) -> tuple[list[int], list[Any], list[str]]:
        """Sizes, colours and labels of the outer ring: each verb's top objects in a lighter
        shade of the verb's colour, then a blank wedge for its other objects."""
        sizes: list[int] = []
        colors: list[Any] = []
        labels: list[str] = []
        for i, (_, count, objs) in enumerate(top):
            base = np.asarray(inner_colors[i])
            for n, k in objs:
                sizes.append(k)
                colors.append(tuple(0.55 * base + 0.45))  # a lighter shade
                labels.append(n)
            rest = count - sum(k for _, k in objs)
            if rest > 0:
                sizes.append(rest)
                colors.append((1, 1, 1, 0))  # the verb's other objects: blank
                labels.append("")
        return sizes, colors, labels

    @staticmethod
    def _ring_labels(
        ax: Any, labels: list[str], sizes: list[int], total: int, radius: float, min_deg: float
    ) -> None:
        done = 0.0
        for label, size in zip(labels, sizes, strict=True):
            span = 360.0 * size / total
            mid = 90.0 - 360.0 * (done + size / 2) / total  # clockwise from the top
            done += size
            if not label or span < min_deg:
                continue
            rad = math.radians(mid)
            angle = (mid + 180) % 360 - 180
            rotation = angle if -90 <= angle <= 90 else angle + 180
            fontsize = 9 if span >= 6 else 7 if span >= 3 else 6
            ax.text(
                radius * math.cos(rad),
                radius * math.sin(rad),
                label,
                rotation=rotation,
                rotation_mode="anchor",
                ha="center",
                va="center",
                fontsize=fontsize,
            )

    def rouge(self, to_seeds: np.ndarray, to_pool: np.ndarray, threshold: float) -> None:
        plt = self.plt
        bins = np.linspace(0, 1, 21)
        with plt.rc_context(self.rc):
            fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
            panels = (
                (to_seeds, "to the seed tasks", "#4878a8"),
                (to_pool, "to the seed tasks and earlier instructions\n(when accepted)", "#d1884c"),
            )
            for ax, (values, what, color) in zip(axes, panels, strict=True):
                ax.hist(values, bins=bins, color=color, edgecolor="white")
                ax.axvline(threshold, color="#444", linestyle="--", linewidth=1)
                ax.text(threshold, ax.get_ylim()[1] * 0.95, f" {threshold:g}", va="top")
                ax.set_xlabel(f"highest ROUGE-L F1 {what}")
                ax.set_ylabel("instructions")
                ax.set_xlim(0, 1)
            fig.tight_layout()
            self.save("fig3_rouge", fig)

    def lengths(
        self, instr: list[int], inputs: list[int], out_with: list[int], out_without: list[int]
    ) -> None:
        plt = self.plt
        with plt.rc_context(self.rc):
            fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
            panels = (
                ("instruction", [(instr, "instructions", "#4878a8")]),
                ("non-empty input", [(inputs, "inputs", "#6a9f58")]),
                (
                    "output",
                    [
                        (out_with, "with an input", "#d1884c"),
                        (out_without, "without input", "#8e6bb0"),
                    ],
                ),
            )
            for ax, (what, series) in zip(axes, panels, strict=True):
                values = [v for s, _, _ in series for v in s]
                if not values:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
                    ax.set_xlabel(f"{what} length (words)")
                    continue
                cap = max(5, int(np.percentile(values, 99)) + 1)
                bins = np.arange(0, cap + 2) if cap <= 60 else np.linspace(0, cap + 1, 61)
                data = [np.minimum(np.asarray(s), cap) for s, _, _ in series]
                ax.hist(
                    data,
                    bins=bins,
                    stacked=True,
                    color=[c for _, _, c in series],
                    label=[f"{label} ({len(s):,})" for s, label, _ in series],
                    edgecolor="white",
                    linewidth=0.3,
                )
                ax.set_xlabel(f"{what} length (words; the last bar is \u2265{cap})")
                ax.set_ylabel("count")
                ax.legend(frameon=False, fontsize=8, loc="best")
            fig.tight_layout()
            self.save("fig4_lengths", fig)

    def ratings(self, sources: dict[str, dict[str, Any]]) -> None:
        plt = self.plt
        questions = [*QUESTIONS, "all_fields_valid"]
        answered = {n: s for n, s in sources.items() if any(_share_yes(s, q) for q in questions)}
        with plt.rc_context(self.rc):
            ncols = 2 if answered else 1
            fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 3.8), squeeze=False)
            colors = {name: c for name, c in zip(sources, ("#4878a8", "#d1884c"), strict=False)}
            self._rating_bars(axes[0][0], sources, colors)
            if answered:
                self._question_bars(axes[0][1], answered, colors, questions)
            fig.tight_layout()
            self.save("fig5_ratings", fig)

    @staticmethod
    def _rating_bars(ax: Any, sources: dict[str, dict[str, Any]], colors: dict[str, Any]) -> None:
        """The share of each rating, one bar per source."""
        width = 0.8 / len(sources)
        for i, (name, s) in enumerate(sources.items()):
            x = np.arange(len(RATINGS)) + (i - (len(sources) - 1) / 2) * width
            shares = [100 * (s["shares"][g] or 0) for g in RATINGS]
            ax.bar(x, shares, width, label=f"{name} ({s['rated']:,} rated)", color=colors[name])
        ax.set_xticks(
            range(len(RATINGS)),
            [f"{g}\n" + "\n".join(textwrap.wrap(RATING_MEANING[g], 16)) for g in RATINGS],
        )
        ax.tick_params(axis="x", labelsize=8)
        ax.set_ylabel("% of rated examples")
        ax.legend(frameon=False)

    @staticmethod
    def _question_bars(
        ax: Any, answered: dict[str, dict[str, Any]], colors: dict[str, Any], questions: list[str]
    ) -> None:
        """The share of yes to each question, one bar per source that answered any."""
        width = 0.8 / len(answered)
        for i, (name, s) in enumerate(answered.items()):
            x = np.arange(len(questions)) + (i - (len(answered) - 1) / 2) * width
            y = [100 * (_share_yes(s, q) or 0) for q in questions]
            ax.bar(x, y, width, label=name, color=colors[name])
        labels = ["valid\ninstruction", "input\nfits", "output\ncorrect", "all three"]
        ax.set_xticks(range(len(questions)), labels)
        ax.set_ylabel("% yes (of the answered)")
        ax.set_ylim(0, 100)
        ax.legend(frameon=False)


def _share_yes(source: dict[str, Any], question: str) -> float | None:
    """A rating source's share of yes to a question, None where none was answered."""
    answered = source["questions"].get(question) or source.get(question)
    return None if not answered else answered["share_yes"]
