"""Reference values for the methods' own computations on fixed small inputs, in float64.

Run once with the setup venv's Python:
    /root/.cache/selfsup/torch-2.11.0/bin/python scripts/make_method_fixtures.py
It writes tests/fixtures/methods.json, which the methods' tests read (no Python at test
time):
- mae: facebookresearch/mae models_mae.py transcribed: patchify, random_masking (with the
  given noise), forward_loss with and without norm_pix_loss, and util/pos_embed.py's
  get_2d_sincos_pos_embed (for a gh x gw grid, no class token);
- nnclr: lightly's NNMemoryBankModule (the nearest neighbour of each projection in a
  fixed bank; the bank after the second view's update) and NTXentLoss, as lightly's
  NNCLR example combines them. lightly is imported from the environment: install it
  without its dependencies somewhere and put that on PYTHONPATH, e.g.
  pip install --no-deps --target /tmp/lightly-pkgs lightly==1.6.0
  PYTHONPATH=/tmp/lightly-pkgs python scripts/make_method_fixtures.py
"""

import json
import os

import numpy as np
import torch


def patchify(imgs, p):
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(shape=(imgs.shape[0], h * w, p ** 2 * 3))


def random_masking(x, mask_ratio, noise):
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L], dtype=x.dtype)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


def forward_loss(imgs, pred, mask, p, norm_pix_loss):
    target = patchify(imgs, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    loss = (loss * mask).sum() / mask.sum()
    return loss


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000 ** omega
    pos = pos.reshape(-1)
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim, gh, gw):
    grid_h = np.arange(gh, dtype=np.float64)
    grid_w = np.arange(gw, dtype=np.float64)
    grid = np.meshgrid(grid_w, grid_h)
    grid = np.stack(grid, axis=0).reshape([2, 1, gh, gw])
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def t_(x):
    x = torch.as_tensor(x)
    return {"shape": list(x.shape), "data": [float(v) for v in x.flatten().tolist()]}


def mae():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.rand(2, 4, generator=g, dtype=torch.float64)
    pred = torch.rand(2, 4, 48, generator=g, dtype=torch.float64)
    target = patchify(imgs, 4)
    x_masked, mask, ids_restore = random_masking(target, 0.75, noise)
    return {
        "patch": 4,
        "mask_ratio": 0.75,
        "imgs": t_(imgs),
        "noise": t_(noise),
        "pred": t_(pred),
        "target": t_(target),
        "x_masked": t_(x_masked),
        "mask": t_(mask),
        "ids_restore": t_(ids_restore.double()),
        "loss": float(forward_loss(imgs, pred, mask, 4, False)),
        "loss_norm_pix": float(forward_loss(imgs, pred, mask, 4, True)),
        "pos_embed": t_(get_2d_sincos_pos_embed(8, 2, 3)),
    }


def nnclr():
    from lightly.loss import NTXentLoss
    from lightly.models.modules import NNMemoryBankModule

    g = torch.Generator().manual_seed(1)
    b, d, k, t = 4, 6, 10, 0.1
    z0, z1, p0, p1 = (torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(4))
    bank = torch.nn.functional.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    mb = NNMemoryBankModule(size=(k, d)).double()
    mb.bank = bank.clone()
    mb.bank_ptr = torch.zeros(1, dtype=torch.long)
    nn0 = mb(z0, update=False)
    nn1 = mb(z1, update=True)
    criterion = NTXentLoss(temperature=t)
    loss = 0.5 * (criterion(nn0, p1) + criterion(nn1, p0))
    return {
        "temperature": t,
        "z0": t_(z0), "z1": t_(z1), "p0": t_(p0), "p1": t_(p1), "bank": t_(bank),
        "nn0": t_(nn0), "nn1": t_(nn1), "loss": float(loss), "bank_after": t_(mb.bank),
    }


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
    path = os.path.join(root, "methods.json")
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            out = json.load(f)
    out["mae"] = mae()
    out["nnclr"] = nnclr()
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
