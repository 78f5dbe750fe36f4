"""Reference values for the Barlow Twins, VICReg, SwAV and DINO losses on fixed small inputs.

Run once with the setup venv's Python (the one whose torch wheel selfsup links):
    /root/.cache/selfsup/torch-2.11.0/bin/python scripts/make_loss_fixtures.py
It writes tests/fixtures/ssl_losses.json, which src/losses.rs's tests read (no Python at
test time). Each loss is a plain transcription of the reference implementation, in float64:
- Barlow Twins: facebookresearch/barlowtwins main.py (BatchNorm1d(affine=False) in training
  mode on each view, c = bn(z1).T @ bn(z2) / N, on_diag + lambd * off_diag);
- VICReg: facebookresearch/vicreg main_vicreg.py (mse; std with eps 1e-4, relu(1 - std)
  halved per view; covariance / (N - 1), off-diagonal squares / D; 25/25/1);
- SwAV: facebookresearch/swav main_swav.py (distributed_sinkhorn on one process, the
  swapped prediction over crops_for_assign = [0, 1] and every other crop);
- DINO: facebookresearch/dino main_dino.py DINOLoss.forward (centred, sharpened teacher
  softmax on the 2 global crops against the student's log-softmax on every crop but the same).
"""

import json
import os

import numpy as np
import torch
import torch.nn.functional as F


def off_diagonal(x):
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins(z1, z2, lambd):
    n, d = z1.shape
    bn = torch.nn.BatchNorm1d(d, affine=False).double()
    bn.train()
    c = bn(z1).T @ bn(z2)
    c.div_(n)
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    off_diag = off_diagonal(c).pow_(2).sum()
    return on_diag + lambd * off_diag


def vicreg(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(num_features) + off_diagonal(
        cov_y
    ).pow_(2).sum().div(num_features)
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


@torch.no_grad()
def distributed_sinkhorn(out, epsilon, sinkhorn_iterations, world_size=1):
    Q = torch.exp(out / epsilon).t()
    B = Q.shape[1] * world_size
    K = Q.shape[0]
    sum_Q = torch.sum(Q)
    Q /= sum_Q
    for _ in range(sinkhorn_iterations):
        sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
        Q /= sum_of_rows
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def swav(output, bs, nmb_crops, crops_for_assign, temperature, epsilon, iterations):
    loss = 0
    for crop_id in crops_for_assign:
        with torch.no_grad():
            out = output[bs * crop_id : bs * (crop_id + 1)].detach()
            q = distributed_sinkhorn(out, epsilon, iterations)[-bs:]
        subloss = 0
        for v in np.delete(np.arange(np.sum(nmb_crops)), crop_id):
            x = output[bs * v : bs * (v + 1)] / temperature
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (np.sum(nmb_crops) - 1)
    return loss / len(crops_for_assign)


def dino(student_output, teacher_output, center, ncrops, student_temp, temp):
    student_out = student_output / student_temp
    student_out = student_out.chunk(ncrops)
    teacher_out = F.softmax((teacher_output - center) / temp, dim=-1)
    teacher_out = teacher_out.detach().chunk(2)
    total_loss = 0
    n_loss_terms = 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


def values(t):
    return [float(v) for v in t.detach().flatten()]


def main():
    torch.manual_seed(0)
    d = torch.float64
    n, dim = 6, 5
    # Offset and scaled so that the standardisation and the variance hinge both matter.
    z1 = torch.randn(n, dim, dtype=d) * 0.7 + 0.3
    z2 = z1 + 0.5 * torch.randn(n, dim, dtype=d)
    fixtures = {
        "barlow_twins": {
            "shape": [n, dim],
            "z1": values(z1),
            "z2": values(z2),
            "lambda": 0.0051,
            "loss": float(barlow_twins(z1, z2, 0.0051)),
            "loss_lambda_1": float(barlow_twins(z1, z2, 1.0)),
        },
        "vicreg": {
            "shape": [n, dim],
            "z1": values(z1),
            "z2": values(z2),
            "loss": float(vicreg(z1, z2)),
            "loss_1_2_3": float(vicreg(z1, z2, 1.0, 2.0, 3.0)),
        },
    }
    # SwAV: 2 large + 2 small crops of 4 images, 3 prototypes; scores are cosines.
    bs, k, nmb_crops = 4, 3, [2, 2]
    emb = F.normalize(torch.randn(bs * sum(nmb_crops), 4, dtype=d), dim=1)
    protos = F.normalize(torch.randn(k, 4, dtype=d), dim=1)
    scores = emb @ protos.T
    codes = distributed_sinkhorn(scores[:bs], 0.05, 3)
    fixtures["swav"] = {
        "batch": bs,
        "prototypes": k,
        "crops": sum(nmb_crops),
        "scores": values(scores),
        "temperature": 0.1,
        "epsilon": 0.05,
        "iterations": 3,
        "codes_crop0": values(codes),
        "loss": float(swav(scores, bs, nmb_crops, [0, 1], 0.1, 0.05, 3)),
    }
    # DINO: 2 global + 3 local crops of 3 images, 4 output dimensions.
    bs, k, ncrops = 3, 4, 5
    student = torch.randn(bs * ncrops, k, dtype=d) * 0.5
    teacher = torch.randn(bs * 2, k, dtype=d) * 0.5
    center = torch.randn(1, k, dtype=d) * 0.1
    fixtures["dino"] = {
        "batch": bs,
        "dim": k,
        "crops": ncrops,
        "student": values(student),
        "teacher": values(teacher),
        "center": values(center),
        "student_temp": 0.1,
        "teacher_temp": 0.04,
        "loss": float(dino(student, teacher, center, ncrops, 0.1, 0.04)),
        "loss_teacher_temp_07": float(dino(student, teacher, center, ncrops, 0.1, 0.07)),
    }
    write("ssl_losses.json", fixtures)


def write(name, fixtures):
    """Writes `fixtures` as tests/fixtures/`name` (JSON, one value per line)."""
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(fixtures, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(out)}")


if __name__ == "__main__":
    main()
