"""plot.py — one picture of one or more runs, drawn from their metrics.jsonl.

    python plot.py runs/A                      # writes runs/A/metrics.png
    python plot.py runs/A runs/B runs/C --out compare.png   # runs side by side, one colour each

Panels: reward (and the verifier's accuracy of the same rollouts), held-out accuracy, the judge's
precision and recall against the verifier, KL to the reference, entropy, completion lengths, and the
mean step time split by phase; with --self-correct runs also the share of answers corrected
(incorrect -> correct) and spoiled (correct -> incorrect). Per-step metrics are noisy: each is drawn
raw and faint, with its moving average on top (--smooth N points; default: about 1/25 of the run).
A run without a judge (--reward verifier) or without held-out evaluations simply has no line there.

Needs matplotlib, an optional extra: pip install -e ".[plot]".
"""

import argparse
import json
import os
import sys

PHASE_COLOURS = {"generate": "#4c72b0", "judge": "#dd8452", "verify": "#55a868", "update": "#c44e52",
                 "eval": "#8172b3", "other": "#bbbbbb"}
SOLID, DASHED = "-", "--"


class PlotError(Exception):
    """Bad input (a missing folder, no metrics): its message is the one line the user sees."""


# -----------------------------------------------------------------------------
# reading runs

def read_metrics(run: str) -> list[dict]:
    """The lines of RUN/metrics.jsonl (RUN may also name the file itself). A run still being written
    may end in a half-written line: that one is skipped."""
    path = run if run.endswith(".jsonl") else os.path.join(run, "metrics.jsonl")
    if not os.path.exists(run):
        raise PlotError(f"{run}: no such run folder")
    if not os.path.isfile(path):
        raise PlotError(f"{run}: no metrics.jsonl in it (a train.py run folder has one)")
    with open(path) as f:
        raw = [(n, text) for n, text in enumerate(f, 1) if text.strip()]
    lines = []
    for n, text in raw:
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            if n == raw[-1][0]:
                continue  # the last line of a run still writing it
            raise PlotError(f"{path}:{n}: not a JSON line") from None
        if not isinstance(line, dict) or not isinstance(line.get("step"), (int, float)):
            raise PlotError(f"{path}:{n}: not a metrics line (no step)")
        lines.append(line)
    if not lines:
        raise PlotError(f"{path}: no metrics lines yet")
    return lines


def run_folder(run: str) -> str:
    """The run folder a RUN argument names (a folder, or its metrics.jsonl)."""
    return os.path.dirname(run) or "." if run.endswith(".jsonl") else run


def run_labels(runs: list[str]) -> list[str]:
    """Legend names: the folder names, or the paths as given where two folders share a name."""
    folders = [os.path.normpath(run_folder(r)) for r in runs]
    names = [os.path.basename(os.path.abspath(f)) for f in folders]
    return names if len(set(names)) == len(names) else folders


def series(lines: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the lines where `key` has a number (None: not measured at that step)."""
    pairs = [(line["step"], line[key]) for line in lines
             if isinstance(line.get(key), (int, float)) and not isinstance(line.get(key), bool)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def moving_average(values: list, window: int) -> list:
    """The mean of each value and the window - 1 before it (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def step_time_split(lines: list[dict]) -> dict:
    """Mean seconds per RL step in each phase: the time_* fields, eval at eval steps, and the rest of
    time_step as "other"."""
    steps = [line for line in lines if isinstance(line.get("time_step"), (int, float))]
    if not steps:
        return {}
    phases = [k[5:] for k in dict.fromkeys(k for line in steps for k in line)
              if k.startswith("time_") and k not in ("time_step", "time_eval")]
    split = {p: sum(line.get(f"time_{p}") or 0.0 for line in steps) / len(steps) for p in phases}
    split["eval"] = sum(line.get("time_eval") or 0.0 for line in steps) / len(steps)  # inside time_step
    mean_step = sum(line["time_step"] for line in steps) / len(steps)
    split["other"] = max(0.0, mean_step - sum(split.values()))
    return split


# -----------------------------------------------------------------------------
# the panels: (title, y label, [(metrics key, line style, legend note)], smoothed)

CURVES = [
    ("reward", "mean per rollout", [("reward_mean", SOLID, "reward"),
                                    ("rollout_acc", DASHED, "verifier: rollouts correct")], True),
    ("held-out accuracy", "accuracy", [("heldout_acc", SOLID, "final answer"),
                                       ("heldout_turn1_acc", DASHED, "first answer (self-correct)")], False),
    ("judge vs verifier", "on the judged rollouts", [("judge_precision", SOLID, "precision"),
                                                     ("judge_recall", DASHED, "recall")], True),
    ("KL to reference", "KL", [("kl", SOLID, None)], True),
    ("entropy", "nats per token", [("entropy", SOLID, None)], True),
    ("completion length", "tokens", [("len_mean", SOLID, "mean"), ("len_max", DASHED, "max")], True),
]
SELF_CORRECT = ("self-correction", "share of rollouts", [("sc_delta_i2c", SOLID, "incorrect -> correct"),
                                                         ("sc_delta_c2i", DASHED, "correct -> incorrect")], True)
NO_DATA = {"held-out accuracy": "no held-out evaluations (--eval-interval 0)",
           "judge vs verifier": "no judge: verifier reward"}


def panel_specs(runs: dict) -> list:
    """The curve panels for these runs ({label: lines}): CURVES, plus self-correction when a run has it."""
    has = {k for lines in runs.values() for line in lines for k in line}
    return CURVES + ([SELF_CORRECT] if "sc_delta_i2c" in has else [])


def default_window(runs: dict) -> int:
    longest = max(len(lines) for lines in runs.values())
    return max(1, min(25, longest // 25))


# -----------------------------------------------------------------------------
# drawing

def require_matplotlib():
    """matplotlib's Figure, or a PlotError saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError('plot.py needs matplotlib: pip install -e ".[plot]"') from None
    return Figure


def draw(runs: dict, out: str, smooth: int | None = None, title: str | None = None, dpi: int = 110):
    """Draw the runs ({label: metrics lines}, in legend order) into the PNG `out`; -> the Figure."""
    Figure = require_matplotlib()
    from matplotlib.lines import Line2D
    specs = panel_specs(runs)
    window = smooth or default_window(runs)
    columns = 4
    rows = -(-(len(specs) + 1) // columns)  # + the step-time panel
    fig = Figure(figsize=(4.6 * columns, 3.6 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (name, ylabel, curves, smoothed) in zip(axes, specs):
        drawn_styles = {}
        for (label, lines), colour in zip(runs.items(), colours):
            for key, style, note in curves:
                steps, values = series(lines, key)
                if not steps:
                    continue
                drawn_styles[style] = note
                if smoothed and len(values) > window:
                    ax.plot(steps, values, style, color=colour, alpha=0.2, linewidth=0.8)
                    ax.plot(steps, moving_average(values, window), style, color=colour, linewidth=1.6)
                else:
                    ax.plot(steps, values, style, color=colour, linewidth=1.6, marker="o" if not smoothed else None,
                            markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if not drawn_styles:
            ax.text(0.5, 0.5, NO_DATA.get(name, "not in these runs"), ha="center", va="center",
                    transform=ax.transAxes, color="gray")
        elif any(drawn_styles.values()):  # which line style is which metric
            ax.legend([Line2D([], [], color="black", linestyle=s) for s in drawn_styles],
                      [n for n in drawn_styles.values()], fontsize=8, loc="best")
    draw_step_times(axes[len(specs)], runs)
    for ax in axes[len(specs) + 1:]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, linewidth=2.5) for c in colours]
    fig.legend(handles, list(runs), loc="outside upper center", ncols=min(len(runs), 6), fontsize=10,
               title=title or (f"smoothed: moving average of {window} steps, raw faint" if window > 1 else None))
    fig.savefig(out, dpi=dpi)
    return fig


def panel_titles(fig) -> list[str]:
    """The titles of the figure's panels, in reading order."""
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def draw_step_times(ax, runs: dict):
    """One stacked bar per run: mean seconds per step in each phase."""
    labels = list(runs)
    splits = [step_time_split(lines) for lines in runs.values()]
    ax.set_title("step time split")
    ax.set_xlabel("mean seconds per step")
    if not any(splits):
        ax.text(0.5, 0.5, "no step times", ha="center", va="center", transform=ax.transAxes, color="gray")
        return
    phases = list(dict.fromkeys(p for split in splits for p in split))
    left = [0.0] * len(labels)
    for phase in phases:
        widths = [split.get(phase, 0.0) for split in splits]
        ax.barh(range(len(labels)), widths, left=left, color=PHASE_COLOURS.get(phase), label=phase)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()  # the first run on top, as in the legend
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3)
    ax.grid(alpha=0.3, axis="x")


# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    ap = argparse.ArgumentParser(prog="plot.py", description=__doc__.split("\n\n")[0],
                                 epilog='Needs matplotlib: pip install -e ".[plot]".')
    ap.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each with a metrics.jsonl)")
    ap.add_argument("--out", default="", metavar="FILE.png", help="the picture (default: <first run>/metrics.png)")
    ap.add_argument("--smooth", type=int, default=0, metavar="N",
                    help="moving average over N steps for per-step metrics (default: about 1/25 of the run; 1: raw)")
    ap.add_argument("--title", default="", help="a heading above the legend")
    ap.add_argument("--dpi", type=int, default=110, help="pixels per inch of the PNG")
    args = ap.parse_args(argv)
    try:
        if args.smooth < 0:
            raise PlotError(f"--smooth {args.smooth}: must be >= 1")
        if args.dpi < 1:
            raise PlotError(f"--dpi {args.dpi}: must be >= 1")
        require_matplotlib()  # before reading anything: the missing extra is the first thing to fix
        labels = run_labels(args.runs)
        runs = {label: read_metrics(run) for label, run in zip(labels, args.runs)}
        out = args.out or os.path.join(run_folder(args.runs[0]), "metrics.png")
        if os.path.dirname(out) and not os.path.isdir(os.path.dirname(out)):
            raise PlotError(f"--out {out}: no folder {os.path.dirname(out)}")
        draw(runs, out, smooth=args.smooth or None, title=args.title or None, dpi=args.dpi)
    except PlotError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
