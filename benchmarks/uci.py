"""UCI regression benchmark of MC dropout under the protocol of Gal & Ghahramani (2016).

Usage::

    python benchmarks/uci.py DATASET_DIR [--splits K] [--p P] [--tau TAU]
        [--lengthscale L] [--hidden H] [--epochs E] [--batch-size N] [--samples T]

``DATASET_DIR`` holds ``data.txt``, ``index_features.txt`` and ``index_target.txt`` (the
layout of ``shared/data/uci``). Prints one JSON line with the keys ``dataset, splits, rmse,
rmse_se, ll, ll_se, seconds`` (and the settings used).

Protocol (as the paper's code ran it): 20 random 90/10 splits regenerated from
``RandomState(1)``; X and y normalised with the training split's mean and std (ddof=0);
Dropout(p) -> Linear(Q, H) -> ReLU -> Dropout(p) -> Linear(H, 1), Glorot-uniform weights
and zero biases; loss = MSE on normalised y + reg * (sum of squared weight matrices) with
reg = l^2 (1 - p) / (2 N tau); Adam (lr 1e-3), batch 32, 400 epochs. Test RMSE of the MC
mean and the mixture log-likelihood over T draws, in original units.

All splits train at once as a batched ensemble: parameters carry a leading split dimension
and each step multiplies with ``torch.bmm``. Every split has its own data, its own shuffle,
its own parameters and its own loss term; Adam is element-wise, so summing the per-split
losses gives each split exactly the updates it would get trained alone. Prediction then
copies each split's weights into an ordinary ``nn.Sequential`` of :class:`mcdrop.MCDropout`
layers and goes through :class:`mcdrop.MCPredictor` (raw draws, ``return_samples=True``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mcdrop import MCDropout, MCPredictor
from mcdrop.calibration import mixture_log_likelihood, rmse

# p, tau and prior length-scale of the paper's runs (Table 1 settings).
PAPER_SETTINGS: dict[str, tuple[float, float, float]] = {
    "bostonHousing": (0.05, 0.159707652696, 1e-2),
    "concrete": (0.01, 0.0557319157756, 1e-2),
    "wine-quality-red": (0.05, 2.95833720839, 1e-2),
    "power-plant": (0.005, 0.0871109017617, 1e-2),
    "kin8nm": (0.05, 192.482910156, 1e-2),
}


def load_dataset(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, Q) and target (n,) of a UCI folder, as float64."""
    data = np.loadtxt(folder / "data.txt")
    feats = np.loadtxt(folder / "index_features.txt", dtype=int, ndmin=1)
    target = int(np.loadtxt(folder / "index_target.txt", dtype=int))
    return data[:, feats], data[:, target]


def make_splits(n: int, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``k`` of the published 90/10 splits: (train rows, test rows) each."""
    rs = np.random.RandomState(1)
    n_train = int(math.floor(0.9 * n + 0.5))
    out = []
    for _ in range(k):
        perm = rs.choice(range(n), n, replace=False)
        out.append((perm[:n_train], perm[n_train:]))
    return out


def _norm_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = a.mean(0)
    std = a.std(0)
    return mean, np.where(std == 0, 1.0, std)


class SplitEnsemble(nn.Module):
    """K independent one-hidden-layer dropout MLPs evaluated with batched matmuls.

    Shapes: input (K, B, Q) -> output (K, B, 1).
    """

    def __init__(self, k: int, q: int, hidden: int, p: float, gen: torch.Generator) -> None:
        super().__init__()

        def glorot(fan_in: int, fan_out: int) -> nn.Parameter:
            a = math.sqrt(6.0 / (fan_in + fan_out))
            return nn.Parameter((torch.rand(k, fan_in, fan_out, generator=gen) * 2 - 1) * a)

        self.w1 = glorot(q, hidden)  # (K, Q, H)
        self.b1 = nn.Parameter(torch.zeros(k, 1, hidden))
        self.w2 = glorot(hidden, 1)  # (K, H, 1)
        self.b2 = nn.Parameter(torch.zeros(k, 1, 1))
        self.drop = MCDropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.baddbmm(self.b1, self.drop(x), self.w1))  # (K, B, H)
        return torch.baddbmm(self.b2, self.drop(h), self.w2)  # (K, B, 1)

    def split_model(self, i: int) -> nn.Sequential:
        """Split ``i`` as an ordinary ``nn.Sequential`` (what MCPredictor samples)."""
        q, h = self.w1.shape[1:]
        lin1, lin2 = nn.Linear(q, h), nn.Linear(h, 1)
        with torch.no_grad():
            lin1.weight.copy_(self.w1[i].T)
            lin1.bias.copy_(self.b1[i, 0])
            lin2.weight.copy_(self.w2[i].T)
            lin2.bias.copy_(self.b2[i, 0])
        p = self.drop.p
        return nn.Sequential(MCDropout(p), lin1, nn.ReLU(), MCDropout(p), lin2)


def train_ensemble(
    xs: torch.Tensor,
    ys: torch.Tensor,
    *,
    p: float,
    reg: float,
    hidden: int,
    epochs: int,
    batch_size: int,
    seed: int = 0,
) -> SplitEnsemble:
    """Train K split models at once.

    Parameters
    ----------
    xs : Tensor (K, N, Q)
        Normalised training features of each split.
    ys : Tensor (K, N, 1)
        Normalised training targets.
    reg : float
        Weight-decay coefficient on the squared weight matrices (not the biases).
    """
    k, n, q = xs.shape
    gen = torch.Generator().manual_seed(seed)
    model = SplitEnsemble(k, q, hidden, p, gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = torch.arange(k).unsqueeze(1)  # (K, 1)
    model.train()
    for _ in range(epochs):
        order = torch.argsort(torch.rand(k, n, generator=gen), dim=1)  # own shuffle per split
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]  # (K, b)
            pred = model(xs[rows, idx])  # (K, b, 1)
            mse = ((pred - ys[rows, idx]) ** 2).mean(dim=(1, 2))  # (K,)
            l2 = (model.w1**2).sum(dim=(1, 2)) + (model.w2**2).sum(dim=(1, 2))  # (K,)
            loss = (mse + reg * l2).sum()  # splits share no parameters: independent updates
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def run(
    folder: Path,
    *,
    splits: int = 20,
    p: float,
    tau: float,
    lengthscale: float = 1e-2,
    hidden: int = 50,
    epochs: int = 400,
    batch_size: int = 32,
    samples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the protocol on one data set folder; returns the JSON-ready result."""
    t0 = time.perf_counter()
    x, y = load_dataset(folder)
    parts = make_splits(len(x), splits)
    xs, ys, norms = [], [], []
    for tr, _ in parts:
        mx, sx = _norm_stats(x[tr])
        my, sy = _norm_stats(y[tr])
        xs.append((x[tr] - mx) / sx)
        ys.append(((y[tr] - my) / sy)[:, None])
        norms.append((mx, sx, float(my), float(sy)))
    n_train = len(parts[0][0])
    reg = lengthscale**2 * (1 - p) / (2.0 * n_train * tau)
    model = train_ensemble(
        torch.tensor(np.stack(xs), dtype=torch.float32),
        torch.tensor(np.stack(ys), dtype=torch.float32),
        p=p,
        reg=reg,
        hidden=hidden,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
    )
    rmses, lls = [], []
    for i, (_, te) in enumerate(parts):
        mx, sx, my, sy = norms[i]
        net = model.split_model(i)
        pred = MCPredictor(net, samples=samples, task="regression", max_samples=samples)
        out = pred.predict((x[te] - mx) / sx, seed=seed + i, return_samples=True)
        assert out.draws is not None
        draws = out.draws.double().numpy()[..., 0] * sy + my  # (T, B) original units
        rmses.append(rmse(y[te], draws.mean(0)))
        lls.append(mixture_log_likelihood(y[te], draws, tau).mean())
    k = len(parts)
    return {
        "dataset": folder.name,
        "splits": k,
        "rmse": float(np.mean(rmses)),
        "rmse_se": float(np.std(rmses) / math.sqrt(k)),
        "ll": float(np.mean(lls)),
        "ll_se": float(np.std(lls) / math.sqrt(k)),
        "seconds": round(time.perf_counter() - t0, 1),
        "p": p,
        "tau": tau,
        "lengthscale": lengthscale,
        "hidden": hidden,
        "epochs": epochs,
        "batch_size": batch_size,
        "samples": samples,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--p", type=float, default=None, help="dropout probability")
    ap.add_argument("--tau", type=float, default=None, help="model precision (output units)")
    ap.add_argument("--lengthscale", type=float, default=None, help="prior length-scale l")
    ap.add_argument("--hidden", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=10_000, help="MC samples T at test time")
    ap.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffles")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    folder: Path = args.dataset_dir
    if not (folder / "data.txt").is_file():
        print(f"uci.py: {folder}/data.txt not found", file=sys.stderr)
        return 2
    paper = PAPER_SETTINGS.get(folder.resolve().name)
    if paper is None and (args.p is None or args.tau is None):
        print(
            f"uci.py: '{folder.name}' is not one of {', '.join(PAPER_SETTINGS)}; "
            "pass --p and --tau",
            file=sys.stderr,
        )
        return 2
    p0, tau0, l0 = paper if paper is not None else (0.05, 1.0, 1e-2)
    torch.set_num_threads(args.threads)
    res = run(
        folder,
        splits=args.splits,
        p=args.p if args.p is not None else p0,
        tau=args.tau if args.tau is not None else tau0,
        lengthscale=args.lengthscale if args.lengthscale is not None else l0,
        hidden=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        samples=args.samples,
        seed=args.seed,
    )
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
