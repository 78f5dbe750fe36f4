"""Reference values for NT-Xent, InfoNCE with a queue (MoCo), the negative cosine
similarity (BYOL, SimSiam) and MoCo v3's contrastive loss, computed by lightly's loss classes
on fixed small inputs in float64.

Run once, with lightly importable next to the setup venv's torch; lightly's own dependencies
are not needed for its losses, so it can go into a scratch folder:
    PY=~/.cache/selfsup/torch-2.11.0/bin/python
    $PY -m pip install --no-deps --target /tmp/lightly-pkgs lightly
    PYTHONPATH=/tmp/lightly-pkgs $PY scripts/make_lightly_fixtures.py
It writes tests/fixtures/lightly_losses.json, which the tests of src/losses.rs and
src/methods/moco.rs read (no Python at test time).
- NT-Xent: lightly.loss.NTXentLoss(temperature), without a memory bank (SimCLR).
- InfoNCE with a queue: NTXentLoss with a memory bank (MoCo), the bank set to a given queue
  of unit keys; two steps, so that the second scores against the first step's keys, which
  lightly enqueues as MoCo does (K a multiple of the batch: both wrap alike).
- Negative cosine D: lightly.loss.NegativeCosineSimilarity, on each pair; SimSiam's loss
  0.5 (D(p1, z2) + D(p2, z1)) as lightly's SimSiam example symmetrises it, and BYOL's as
  the paper sums it, (2 + 2 D(p1, z2)) + (2 + 2 D(p2, z1)).
- MoCo v3: ctr(q, k) = 2T CE(q kᵀ / T, i) of the paper's pseudocode, from NTXentLoss one query
  at a time (its memory-bank form scores q_i against k_i and the bank: the other N - 1
  keys), checked here against the pseudocode written out; the loss ctr(q1, k2) + ctr(q2, k1).
"""

import lightly
import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity, NTXentLoss

from make_loss_fixtures import write  # the script next to this one


def values(t):
    return [float(v) for v in t.detach().flatten()]


def with_bank(bank, temperature):
    """NTXentLoss whose memory bank holds `bank` (unit rows), its pointer at row 0."""
    loss = NTXentLoss(temperature=temperature, memory_bank_size=tuple(bank.shape))
    loss.memory_bank.bank = bank.clone()
    return loss


def step(loss, q, k):
    """One MoCo step of `loss`: its value, and its bank after it enqueued the keys (lightly
    enqueues only when a gradient follows)."""
    value = loss(q.clone().requires_grad_(True), k)
    return float(value.detach()), loss.memory_bank.bank.clone()


def ctr_by_lightly(q, k, temperature):
    n = q.shape[0]
    k = F.normalize(k, dim=1)
    total = 0.0
    for i in range(n):
        others = torch.cat([k[:i], k[i + 1 :]])
        total += float(with_bank(others, temperature)(q[i : i + 1], k[i : i + 1]))
    return 2 * temperature * total / n


def ctr_pseudocode(q, k, tau):
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = q @ k.T
    return float(2 * tau * F.cross_entropy(logits / tau, torch.arange(q.shape[0])))


def main():
    torch.manual_seed(0)
    d = torch.float64
    fixtures = {"lightly_version": lightly.__version__}

    n, dim = 5, 4
    z1 = torch.randn(n, dim, dtype=d)
    z2 = z1 + 0.7 * torch.randn(n, dim, dtype=d)
    fixtures["nt_xent"] = {
        "shape": [n, dim],
        "z1": values(z1),
        "z2": values(z2),
        "loss_t_0_5": float(NTXentLoss(temperature=0.5)(z1, z2)),
        "loss_t_0_1": float(NTXentLoss(temperature=0.1)(z1, z2)),
    }

    b, k_size, t = 4, 8, 0.2
    queue = F.normalize(torch.randn(k_size, dim, dtype=d), dim=1)
    q1, k1, q2, k2 = (torch.randn(b, dim, dtype=d) for _ in range(4))
    k1 = k1 + q1  # positives nearer their queries than the queue is
    k2 = k2 + q2
    moco = with_bank(queue, t)
    loss1, bank1 = step(moco, q1, k1)
    loss2, bank2 = step(moco, q2, k2)
    fixtures["info_nce_queue"] = {
        "batch": b,
        "dim": dim,
        "queue_size": k_size,
        "temperature": t,
        "queue": values(queue),
        "q1": values(q1),
        "k1": values(k1),
        "q2": values(q2),
        "k2": values(k2),
        "loss_step1": loss1,
        "loss_step2": loss2,
        "queue_after_step1": values(bank1),
        "queue_after_step2": values(bank2),
    }

    cos = NegativeCosineSimilarity()
    p1, p2, y1, y2 = (torch.randn(n, dim, dtype=d) for _ in range(4))
    fixtures["negative_cosine"] = {
        "shape": [n, dim],
        "p1": values(p1),
        "p2": values(p2),
        "z1": values(y1),
        "z2": values(y2),
        "loss_p1_z2": float(cos(p1, y2)),
        "loss_p2_z1": float(cos(p2, y1)),
        "simsiam": float(0.5 * (cos(p1, y2) + cos(p2, y1))),
        # The paper's L + L~ with L = 2 - 2 cos = 2 + 2 D.
        "byol": float((2 + 2 * cos(p1, y2)) + (2 + 2 * cos(p2, y1))),
    }

    t = 0.2
    q1, q2 = torch.randn(n, dim, dtype=d), torch.randn(n, dim, dtype=d)
    k1, k2 = q1 + 0.5 * torch.randn(n, dim, dtype=d), q2 + 0.5 * torch.randn(n, dim, dtype=d)
    ctr12, ctr21 = ctr_by_lightly(q1, k2, t), ctr_by_lightly(q2, k1, t)
    for a, (q, k) in [(ctr12, (q1, k2)), (ctr21, (q2, k1))]:
        b = ctr_pseudocode(q, k, t)
        assert abs(a - b) < 1e-12, (a, b)
    fixtures["moco_v3"] = {
        "shape": [n, dim],
        "temperature": t,
        "q1": values(q1),
        "q2": values(q2),
        "k1": values(k1),
        "k2": values(k2),
        "ctr_q1_k2": ctr12,
        "loss": ctr12 + ctr21,
    }

    write("lightly_losses.json", fixtures)


if __name__ == "__main__":
    main()
