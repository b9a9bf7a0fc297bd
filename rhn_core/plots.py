"""The learning-curve figure stored with every training run (matplotlib, no display needed)."""

import math
import os

from .atomic import temporary_path


def learning_curve(logs, path, unit, title=""):
    """Train/valid/test per epoch (perplexity for words, bits per character for chars) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # headless: training machines have no display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        for split in ("train", "valid", "test"):
            values = logs[f"{split}_perplexity"][1:]  # entry 0 is the original's inf placeholder
            if unit == "char":
                values = [math.log2(v) for v in values]
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("bits per character" if unit == "char" else "perplexity")
        if unit != "char":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = temporary_path(path)  # a killed run leaves it to the next start's cleanup
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    finally:
        plt.close(fig)
    return path
