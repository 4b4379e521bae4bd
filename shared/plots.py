"""Figures people would rather look at than read (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402


def central_slices(columns: dict[str, tuple[np.ndarray, np.ndarray]], path, title: str = "") -> None:
    """Rows: amplitude and phase of the three central slices; one column group per result."""
    names = list(columns)
    span = max(0.3, max(float(np.abs(p[a > 0.1 * a.max()]).max(initial=0)) for a, p in columns.values()))
    fig, axes = plt.subplots(2, 3 * len(names), figsize=(2.1 * 3 * len(names), 4.6), squeeze=False)
    for g, name in enumerate(names):
        amp, phase = columns[name]
        centre = [s // 2 for s in amp.shape]
        for k in range(3):
            index = [slice(None)] * 3
            index[k] = centre[k]
            a, p = amp[tuple(index)], phase[tuple(index)]
            ax_a, ax_p = axes[0, 3 * g + k], axes[1, 3 * g + k]
            ax_a.imshow(a, cmap="gray", vmin=0, vmax=max(amp.max(), 1e-9))
            shown = ax_p.imshow(np.where(a > 0.1 * amp.max(), p, np.nan), cmap="RdBu_r", vmin=-span, vmax=span)
            ax_a.set_title(f"{name}\naxis {k}" if k == 1 else f"axis {k}", fontsize=8)
            for ax in (ax_a, ax_p):
                ax.set_xticks([]), ax.set_yticks([])
        axes[0, 3 * g].set_ylabel("amplitude", fontsize=8)
        axes[1, 3 * g].set_ylabel("phase (rad)", fontsize=8)
    fig.colorbar(shown, ax=axes[1, :].tolist(), shrink=0.8, label="phase (rad)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def distributions(values: dict[str, dict[str, list[float]]], path, title: str = "") -> None:
    """Box plots of each metric (panel) for each method (box)."""
    metrics = list(next(iter(values.values())))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        methods = list(values)
        ax.boxplot([values[m][metric] for m in methods], showfliers=True)
        ax.set_xticks(range(1, len(methods) + 1), methods, fontsize=8, rotation=15)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    save(fig, path, title)


def curve(x, series: dict[str, list[float]], path, xlabel: str, ylabel: str, title: str = "", logx=False, logy=False):
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, y in series.items():
        xs = x[name] if isinstance(x, dict) else x
        ax.plot(xs, y, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: minor labels overlap
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    save(fig, path)


def save(fig, path, title: str = "") -> None:
    """Title, tight layout, PNG at 90 dpi, and the figure closed (a long run makes hundreds)."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
