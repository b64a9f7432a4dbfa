"""PNG plots of the benchmark results (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STACK = ["endpoint", "asr", "llm_first_token", "first_sentence", "tts_first_audio", "held",
         "send"]


def stage_bars(latency: dict[str, Any], out: Path) -> Path:
    """One stacked bar per configuration: where voice-to-voice time goes (p50)."""
    runs = latency["runs"]
    fig, ax = plt.subplots(figsize=(7, 3.2 + 0.3 * len(runs)))
    names = list(runs)
    left = [0.0] * len(names)
    for stage in STACK:
        widths = [_ms(runs[n]["stages_ms"].get(stage, {}).get("p50")) for n in names]
        ax.barh(names, widths, left=left, label=stage)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for i, n in enumerate(names):
        total = runs[n]["stages_ms"]["voice_to_voice"]["p50"]
        ax.text(left[i] + 15, i, f"{total:.0f} ms", va="center")
    ax.set_xlabel("milliseconds from the end of speech (p50 of each stage)")
    ax.set_title("Voice-to-voice latency by stage")
    ax.legend(ncol=3, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.set_xlim(0, max(left) * 1.2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def sessions_plot(load: dict[str, Any], out: Path) -> Path:
    """Voice-to-voice p50 and p95 against concurrent sessions."""
    steps = load["steps"]
    n = [s["sessions"] for s in steps]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(n, [s["v2v_p50_ms"] for s in steps], marker="o", label="p50")
    ax.plot(n, [s["v2v_p95_ms"] for s in steps], marker="s", label="p95")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(x) for x in n])
    ax.set_xlabel("concurrent sessions, each asking one question")
    ax.set_ylabel("voice-to-voice (ms)")
    ax.set_title("Latency against concurrent sessions")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _ms(value: float | None) -> float:
    """A stage's p50, or 0 where no turn had that stage (NaN or missing)."""
    return 0.0 if value is None or math.isnan(value) else value
