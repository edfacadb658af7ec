"""Re-train the `toy1d` model and re-save it (python models/toy1d/train.py).

Data: y = sin(2x) + 0.3 x + noise (sd 0.1), x drawn uniformly from [-3, -1] and [1, 3]: a
gap around 0 and nothing beyond |x| = 3. 200 training points, 100 held-out points (same
law) to fit tau with :func:`mcdrop.calibration.fit_tau` (mixture likelihood). Adam 1e-3,
weight decay 1e-4, full batch, 3000 steps. Writes model.toml, weights.safetensors,
metrics.json, test.csv and band.png (predictive mean +- 2 sd over [-6, 6]).
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
from mcdrop.calibration import fit_tau, interval_coverage  # noqa: E402
from mcdrop.repository import Manifest, save_model  # noqa: E402

HIDDEN, P, STEPS, NOISE = 64, 0.1, 3000, 0.1


def truth(x: np.ndarray) -> np.ndarray:
    return np.sin(2 * x) + 0.3 * x


def sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points with x in [-3, -1] U [1, 3]; shapes (n, 1), (n, 1)."""
    x = rng.uniform(1, 3, size=n) * rng.choice([-1.0, 1.0], size=n)
    y = truth(x) + NOISE * rng.normal(size=n)
    return x[:, None].astype(np.float32), y[:, None].astype(np.float32)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x_tr, y_tr = sample(200, rng)
    x_va, y_va = sample(100, rng)
    sys.path.insert(0, str(HERE))
    from model import build

    model = build(hidden=HIDDEN, p=P)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.tensor(x_tr), torch.tensor(y_tr)
    model.train()
    for _ in range(STEPS):
        loss = ((model(xt) - yt) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    va = MCPredictor(model, samples=1000, task="regression").predict(
        x_va, seed=1, return_samples=True
    )
    tau = fit_tau(y_va[:, 0], va.draws.double().numpy()[..., 0], method="mixture")

    manifest = Manifest(
        name="toy1d",
        version="1.0.0",
        task="regression",
        description="1-D toy: y = sin(2x) + 0.3x + noise, trained on x in [-3,-1] U [1,3]; "
        "the MC dropout band widens in the gap and beyond the data.",
        input_shape=(1,),
        output_shape=(1,),
        output_names=("y",),
        default_samples=200,
        max_samples=5000,
        max_batch_rows=4096,
        tau=round(tau, 4),
        config={"hidden": HIDDEN, "p": P},
    )
    save_model(HERE, model, manifest, HERE / "model.py", overwrite=True)

    pred = MCPredictor(model, samples=1000, task="regression", tau=manifest.tau)
    grid = np.linspace(-6, 6, 241, dtype=np.float32)[:, None]
    out = pred.predict(grid, seed=0)
    mean, std = out.mean.numpy()[:, 0], out.std.numpy()[:, 0]
    epi = out.epistemic_variance.numpy()[:, 0] ** 0.5

    def at(v: float) -> float:
        return float(std[np.argmin(np.abs(grid[:, 0] - v))])

    x_te, y_te = sample(200, np.random.default_rng(2))
    te = pred.predict(x_te, seed=0)
    metrics = {
        "tau_fitted_on_held_out": tau,
        "noise_precision_true": 1 / NOISE**2,
        "predictive_sd": {f"x={v:g}": at(v) for v in (-5.0, -2.0, 0.0, 2.0, 5.0)},
        "test_coverage": interval_coverage(
            y_te[:, 0], te.mean.numpy()[:, 0], te.std.numpy()[:, 0], (0.5, 0.9, 0.95)
        ),
        "torch": torch.__version__,
    }
    (HERE / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    np.savetxt(
        HERE / "test.csv", np.column_stack([x_te, y_te]), delimiter=",", header="x,y",
        comments="", fmt="%.6g",
    )  # fmt: skip
    plot(grid[:, 0], mean, std, epi, x_tr[:, 0], y_tr[:, 0])
    print(json.dumps(metrics, indent=2))


def plot(g, mean, std, epi, xd, yd) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=80)
    ax.fill_between(g, mean - 2 * std, mean + 2 * std, alpha=0.25, label="mean +- 2 sd (total)")
    ax.fill_between(g, mean - 2 * epi, mean + 2 * epi, alpha=0.35, label="+- 2 sd (epistemic)")
    ax.plot(g, mean, lw=1.5, label="predictive mean")
    ax.plot(g, truth(g), "k--", lw=0.8, label="truth")
    ax.scatter(xd, yd, s=4, c="k", label="training data")
    ax.set_ylim(-5, 5)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("toy1d: MC dropout (S = 1000) widens away from the data")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(HERE / "band.png")


if __name__ == "__main__":
    main()
