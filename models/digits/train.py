"""Re-train the `digits` model and re-save it (python models/digits/train.py).

Data: scikit-learn's bundled 8x8 digits (1,797 images), stratified 75/25 split with
random_state=0. Adam 1e-3, weight decay 1e-4, batch 64, 300 epochs, dropout 0.5 after each
hidden layer. Measures, with MCPredictor (S=200, seed 0): test accuracy, NLL, ECE and
Brier score, and the mutual information (BALD) on test digits against three
out-of-distribution sets: uniform noise, inverted digits (16 - x) and digits rotated by 90
degrees. Writes model.toml, weights.safetensors, metrics.json, test.csv and mi.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing

from mcdrop import MCPredictor  # noqa: E402
from mcdrop.calibration import brier_score, expected_calibration_error  # noqa: E402
from mcdrop.repository import Manifest, save_model  # noqa: E402

HIDDEN, P, EPOCHS, BATCH, SAMPLES = 128, 0.5, 300, 64, 200


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test); pixels 0..16 as float32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.data.astype(np.float32)
    return train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=0)


def ood_sets(x_test: np.ndarray) -> dict[str, np.ndarray]:
    """Out-of-distribution inputs built from the test digits (or from nothing)."""
    rng = np.random.default_rng(0)
    imgs = x_test.reshape(-1, 8, 8)
    return {
        "uniform noise": rng.uniform(0, 16, size=x_test.shape).astype(np.float32),
        "inverted digits": (16.0 - x_test).astype(np.float32),
        "rotated digits (90 deg)": np.rot90(imgs, 1, axes=(1, 2)).reshape(-1, 64).copy(),
    }


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(score of a random positive > that of a random negative), ties counted half."""
    s = np.concatenate([neg, pos])
    ranks = np.empty(len(s))
    order = np.argsort(s, kind="mergesort")
    ranks[order] = np.arange(1, len(s) + 1)
    for v in np.unique(s):  # average ranks of ties
        m = s == v
        ranks[m] = ranks[m].mean()
    r_pos = ranks[len(neg) :].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x_tr, x_te, y_tr, y_te = split()
    sys.path.insert(0, str(HERE))
    from model import build

    model = build(hidden=HIDDEN, p=P)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.tensor(x_tr), torch.tensor(y_tr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(xt), generator=gen)
        for s in range(0, len(xt), BATCH):
            idx = order[s : s + BATCH]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()

    manifest = Manifest(
        name="digits",
        version="1.0.0",
        task="classification",
        description="Handwritten digit (0-9) from an 8x8 image: 64 pixel intensities 0..16, "
        "row-major (scikit-learn digits). MLP with MC dropout 0.5.",
        input_shape=(64,),
        output_shape=(10,),
        output_names=tuple(str(i) for i in range(10)),
        default_samples=100,
        max_samples=1000,
        max_batch_rows=1024,
        config={"hidden": HIDDEN, "p": P},
    )
    save_model(HERE, model, manifest, HERE / "model.py", overwrite=True)

    pred = MCPredictor(model, samples=SAMPLES, task="classification")
    out = pred.predict(x_te, seed=0)
    probs = out.probs.numpy()
    mi_test = out.mutual_information.numpy()
    metrics: dict = {
        "train_rows": len(x_tr),
        "test_rows": len(x_te),
        "samples": SAMPLES,
        "accuracy": float((probs.argmax(1) == y_te).mean()),
        "nll": float(-np.log(probs[np.arange(len(y_te)), y_te] + 1e-12).mean()),
        "ece_15_bins": expected_calibration_error(probs, y_te),
        "brier": brier_score(probs, y_te),
        "mutual_information": {"test digits": {"mean": float(mi_test.mean()), "auroc": None}},
        "predictive_entropy_mean": {"test digits": float(out.predictive_entropy.mean())},
        "torch": torch.__version__,
    }
    mis = {"test digits": mi_test}
    for name, xo in ood_sets(x_te).items():
        o = pred.predict(xo, seed=0)
        mi = o.mutual_information.numpy()
        mis[name] = mi
        metrics["mutual_information"][name] = {
            "mean": float(mi.mean()),
            "auroc": auroc(mi_test, mi),
        }
        metrics["predictive_entropy_mean"][name] = float(o.predictive_entropy.mean())
    (HERE / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rows = np.column_stack([x_te, y_te])
    header = ",".join([f"px{i}" for i in range(64)] + ["label"])
    np.savetxt(HERE / "test.csv", rows, delimiter=",", header=header, comments="", fmt="%g")
    plot(mis)
    print(json.dumps(metrics, indent=2))


def plot(mis: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=90)
    bins = np.linspace(0, max(float(m.max()) for m in mis.values()), 40)
    for name, mi in mis.items():
        ax.hist(mi, bins=bins, histtype="step", density=True, lw=1.5, label=name)
    ax.set_xlabel("mutual information (nats), S = 200")
    ax.set_ylabel("density")
    ax.set_title("digits: epistemic uncertainty in and out of distribution")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "mi.png")


if __name__ == "__main__":
    main()
