"""PNG plots of benchmark rows (matplotlib; the caller selects the Agg backend)."""

from __future__ import annotations

__all__ = ["plot_ops", "plot_generate", "plot_serve"]


def _grouped_bars(ax, rows: list[dict], group_key: str, series_key: str, value_key: str, err: bool = False) -> list:
    """One bar per (group, series) at x = group index; returns the groups in order."""
    groups = list(dict.fromkeys(r[group_key] for r in rows))
    series = list(dict.fromkeys(r[series_key] for r in rows))
    width = 0.8 / max(len(series), 1)
    for j, name in enumerate(series):
        picked = [(i, r) for i, gv in enumerate(groups) for r in rows
                  if r[group_key] == gv and r[series_key] == name and r.get(value_key)]
        if not picked:
            continue
        xs = [i + (j - (len(series) - 1) / 2) * width for i, _ in picked]
        ys = [r[value_key] for _, r in picked]
        yerr = [[r["median_us"] - r["p20_us"] for _, r in picked], [r["p80_us"] - r["median_us"] for _, r in picked]] if err else None
        ax.bar(xs, ys, width, yerr=yerr, label=name, capsize=2)
    return groups


def plot_ops(rows: list[dict], meta: dict, path: str) -> None:
    """One panel per shape: median time per op and backend (log scale, p20-p80 bars), the floor in black."""
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["preset"] for r in rows)) or ["(no rows)"]
    n_ops = len({r["op"] for r in rows}) or 1
    fig, axes = plt.subplots(1, len(shapes), figsize=(max(6, 1.6 * n_ops + 2) * len(shapes), 4.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        mine = [r for r in rows if r["preset"] == shape]
        ops = _grouped_bars(ax, mine, "op", "backend", "median_us", err=True)
        for i, op in enumerate(ops):
            floor = next(r["floor_us"] for r in mine if r["op"] == op)
            ax.hlines(floor, i - 0.45, i + 0.45, colors="black", linewidth=2, label="floor" if i == 0 else None)
        ax.set_yscale("log")
        ax.set_xticks(range(len(ops)), ops)
        ax.set_ylabel("median time (us)")
        ax.set_title(shape)
        ax.legend(fontsize=7)
    fig.suptitle(f"saesteer bench ops: {meta.get('device_name')} ({meta.get('date')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _throughput(rows: list[dict], group_key: str, label: str, title: str, path: str) -> None:
    """Decode and whole-generate tokens/s per ``group_key`` value and variant, two panels."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    for ax, key, name in zip(axes[0], ("decode_tok_s", "total_tok_s"), ("decode tokens/s", "generate tokens/s")):
        groups = _grouped_bars(ax, rows, group_key, "variant", key)
        ax.set_xticks(range(len(groups)), [f"{label} {g}" for g in groups])
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_generate(rows: list[dict], meta: dict, path: str) -> None:
    """Decode and whole-generate tokens/s per batch size and variant."""
    _throughput(rows, "batch", "batch",
                f"saesteer bench generate: {meta.get('model')} on {meta.get('device_name')} ({meta.get('date')})", path)


def plot_serve(rows: list[dict], meta: dict, path: str) -> None:
    """Decode and whole-generate tokens/s per concurrency and variant (vLLM)."""
    _throughput(rows, "concurrency", "concurrency",
                f"saesteer bench serve (vLLM {meta.get('vllm')}): {meta.get('model')} on {meta.get('device_name')} "
                f"({meta.get('date')})", path)
