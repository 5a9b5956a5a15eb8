"""PNG plots of a benchmark report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import cases

COLOURS = {"jaxdiv": "#d62728", "optax": "#1f77b4", "jax": "#17becf", "torch": "#ff7f0e",
           "numpy": "#7f7f7f", "scipy": "#8c564b", "roofline": "#2ca02c"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, positions, values, height, impl) -> None:
    """Horizontal bars for the values that exist (a log axis cannot show a missing one)."""
    kept = [(p, v) for p, v in zip(positions, values) if v is not None]
    if kept:
        ax.barh([p for p, _ in kept], [v for _, v in kept], height, color=COLOURS[impl],
                label=cases.LABEL[impl])


def _save(plt, fig, title: str, path: Path) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _title(report) -> str:
    m = report["machine"]
    return f"{m['platform']} ({m['device']}, {m['cores']} cores), {report['date'][:10]}"


def time_vs_classes(report, path: Path) -> Path | None:
    """Time per element against the size (by class count), one line per implementation."""
    plt = _pyplot()
    first_dtype = report["config"]["dtypes"][0]
    rows = [r for r in report["results"] if r["dtype"] == first_dtype]
    swept = [k for k in cases.KERNELS if len({tuple(r["shape"]) for r in rows if r["kernel"] == k}) > 1]
    if not swept:
        return None
    modes = report["config"]["modes"]
    fig, axes = plt.subplots(len(swept), len(modes), figsize=(5.5 * len(modes), 3.6 * len(swept)),
                             squeeze=False)
    for i, kernel in enumerate(swept):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            shapes = sorted({tuple(r["shape"]) for r in rows if r["kernel"] == kernel},
                            key=lambda s: (s[1], s[0]))
            for impl in cases.IMPLS:
                ns = {tuple(r["shape"]): r["seconds"] / (r["shape"][0] * r["shape"][1]) * 1e9
                      for r in rows if r["kernel"] == kernel and r["mode"] == mode and r["impl"] == impl}
                pts = [(x, ns[s]) for x, s in enumerate(shapes) if s in ns]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLOURS[impl],
                            label=cases.LABEL[impl], lw=2.2 if impl == "jaxdiv" else 1.2)
            ax.set_yscale("log")
            ax.set_xticks(range(len(shapes)), [f"{s[0]}x{s[1]}" for s in shapes], fontsize=8)
            ax.set_xlabel("rows x latent dims" if kernel == "gaussian_kl" else "rows x classes")
            ax.set_ylabel("ns per element")
            ax.set_title(f"{kernel} {mode} ({first_dtype})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return _save(plt, fig, "Time per element vs size (lower is better) - " + _title(report), path)


def speedups(report, path: Path) -> Path | None:
    """jaxdiv's speed-up over each baseline at every kernel's main size (log scale)."""
    import numpy as np

    from benchmarks import report as rep

    plt = _pyplot()
    idx = rep._index(report)
    entries = rep.main_entries(report)
    baselines = [b for b in cases.BASELINES
                 if any(r["impl"] == b and "speedup" in r for r in report["results"])]
    modes = report["config"]["modes"]
    if not entries or not baselines:
        return None
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 0.5 * len(entries) + 1.8),
                             squeeze=False)
    height = 0.8 / len(baselines)
    for j, mode in enumerate(modes):
        ax = axes[0][j]
        y = np.arange(len(entries))
        for k, impl in enumerate(baselines):
            values = [idx.get((*e, mode, impl), {}).get("speedup") for e in entries]
            _bars(ax, y + k * height, values, height, impl)
        ax.axvline(1.0, color="black", lw=1)
        ax.set_xscale("log")
        ax.set_yticks(y + 0.4 - height / 2, [e[0] for e in entries])
        ax.invert_yaxis()
        ax.set_xlabel("baseline time / jaxdiv time (> 1: jaxdiv faster)")
        ax.set_title(mode)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return _save(plt, fig, "jaxdiv speed-up at each kernel's main size - " + _title(report), path)


def accuracy(report, path: Path) -> Path | None:
    """KL relative error as Q approaches P, and every kernel's error on nearly equal inputs."""
    import numpy as np

    from benchmarks import report as rep

    sweep = report.get("kl_accuracy_sweep")
    if not sweep:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for impl in ("jaxdiv", "optax", "torch", "numpy", "scipy"):
        if impl in sweep[0]:
            left.plot([r["eps"] for r in sweep], [max(r[impl], 1e-9) for r in sweep], "o-",
                      color=COLOURS[impl], label=cases.LABEL[impl], lw=2.2 if impl == "jaxdiv" else 1.2)
    left.set_xscale("log")
    left.set_yscale("log")
    left.invert_xaxis()
    left.axhline(1.0, color="black", lw=0.8, ls="--")
    left.set_xlabel("eps in q = p + eps * noise (P and Q closer to the right)")
    left.set_ylabel("max relative error of KL (float32 vs float64)")
    left.set_title("KL, 64 x 4096")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)

    idx = rep._index(report)
    entries = [e for e in rep.main_entries(report)]
    y = np.arange(len(entries))
    impls = ("jaxdiv", "optax", "jax", "torch", "numpy")
    height = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        values = [idx.get((*e, "fwd", impl), {}).get("rel_err_near") for e in entries]
        _bars(right, y + k * height, [None if v is None else min(max(v, 1e-9), 1e4) for v in values],
              height, impl)
    right.set_xscale("log")
    right.set_yticks(y + 0.4 - height / 2, [e[0] for e in entries])
    right.invert_yaxis()
    right.axvline(1.0, color="black", lw=0.8, ls="--")
    right.set_xlabel("max relative error on nearly equal inputs (clipped to [1e-9, 1e4]; 1e4: NaN or inf)")
    right.set_title("every kernel, float32")
    right.grid(axis="x", alpha=0.3)
    right.legend(fontsize=7, loc="lower right")
    return _save(plt, fig, "Accuracy against float64 - " + _title(report), path)


def write_all(report, out: Path) -> list[Path]:
    """Every plot into ``out``; none (with a message) when matplotlib is missing."""
    try:
        _pyplot()
    except ImportError:
        print("matplotlib is not installed: no plots")
        return []
    made = [time_vs_classes(report, out / "time_vs_classes.png"),
            speedups(report, out / "speedup.png"),
            accuracy(report, out / "accuracy.png")]
    return [p for p in made if p is not None]
