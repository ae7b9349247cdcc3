"""The training steps the throughput rows compare: the suite's own (train._epoch, methods.kd_loss) and a bare
PyTorch loop on the same model, batch, device and precision."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from pipeline.core import frequency as fq, masks as M, models, train as T

from .common import KD_ALPHA, KD_T, RADIUS, SPARSITY, Sizes, fake_blob, interleaved, suite_epoch


# --------------------------------------------------------------------------------- the training steps


class Bench:
    """Shared state of the throughput rows: one dataset, one initial network, one mask, one teacher."""

    def __init__(self, sz: Sizes, rt: T.Runtime):
        self.sz, self.rt, self.B = sz, rt, sz.batch
        self.blob = fake_blob(sz.steps * sz.batch, sz.batch, sz.batch)
        self.data = T.Data(self.blob, rt.device)
        self.warm = T.Data(fake_blob(sz.warmup * sz.batch, sz.batch, sz.batch, seed=1), rt.device)
        self.path_data = T.Data(fake_blob(sz.path_steps * sz.batch, sz.batch, sz.batch, seed=2), rt.device)
        # The bare loop's data: already float and normalised, in memory on the device.
        self.xs = self.data.normalize(self.data.train_x.float() / 255)
        self.ys = self.data.train_y
        self.base = models.build("resnet20", 10, sz.width, seed=0)
        self.masks = {n: m.to(rt.device) for n, m in
                      M.global_magnitude(models.prunable(self.base), SPARSITY).items()}
        teacher = T.to_device(models.build("resnet20", 10, sz.width, seed=1), rt).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher

    def opt(self, model):
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    # -- the suite: train._epoch, exactly as train.run calls it (one "epoch" = the timed steps)
    def suite(self, loss=T.cross_entropy, masked=False, rt: T.Runtime | None = None, data=None):
        _, run = suite_epoch(T, self.base, self.masks if masked else None, loss, self.B, rt or self.rt)
        g = torch.Generator().manual_seed(0)
        return lambda: run(self.warm, g), lambda: run(data or self.data, g)

    # -- the bare loop: float data in memory, flip + crop, SGD, no bookkeeping
    def bare(self, mode="ce", masked=False):
        rt, B = self.rt, self.B
        model = T.to_device(copy.deepcopy(self.base), rt)
        opt = self.opt(model)
        params = dict(model.named_parameters())
        pm = [(params[n], m.to(params[n].dtype)) for n, m in self.masks.items()] if masked else []
        with torch.no_grad():
            for p, m in pm:
                p.mul_(m)
        g = torch.Generator().manual_seed(0)
        t_fixed = torch.randn(B, 10, generator=g).to(rt.device)   # "student2": teacher logits given
        teacher = self.teacher

        def steps(n):
            model.train()
            perm = torch.randperm(n * B, generator=g).to(rt.device)
            for i in range(n):
                idx = perm[i * B:(i + 1) * B]
                x, y = self.xs[idx], self.ys[idx]
                flip = (torch.rand(B, generator=g) < 0.5).to(rt.device)
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
                dy, dx = torch.randint(0, 9, (2,), generator=g).tolist()
                x = F.pad(x, (4, 4, 4, 4))[:, :, dy:dy + 32, dx:dx + 32]
                if rt.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
                    if mode == "ce":
                        loss = F.cross_entropy(model(x), y)
                    else:
                        if mode == "kd":
                            with torch.no_grad():
                                t = teacher(x)
                            s_f = s = model(x)
                        else:                       # student2: the two student passes of fourier_kd
                            t = t_fixed
                            s_f, s = model(x), model(x)
                        kl = F.kl_div(F.log_softmax(s_f.float() / KD_T, 1), F.log_softmax(t.float() / KD_T, 1),
                                      log_target=True, reduction="batchmean")
                        loss = KD_ALPHA * KD_T * KD_T * kl + (1 - KD_ALPHA) * F.cross_entropy(s, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for p, m in pm:
                        p.mul_(m)
        return lambda: steps(self.sz.warmup), lambda: steps(self.sz.steps)

    def teacher_forward(self):
        rt, B = self.rt, self.B

        def steps(n):
            with torch.no_grad():
                for i in range(n):
                    x = self.xs[i * B:(i + 1) * B]
                    if rt.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
                        self.teacher(x)
        return lambda: steps(self.sz.warmup), lambda: steps(self.sz.steps)

    def fft(self, repeat: int = 5):
        """fq.lowpass on one [0, 1] batch, `repeat` times per step (it is short: more calls, less noise)."""
        B = self.B
        x01 = self.data.train_x[:B].float() / 255

        def steps(n):
            for _ in range(n * repeat):
                fq.lowpass(x01, RADIUS, "circle")
        return lambda: steps(self.sz.warmup), lambda: steps(self.sz.steps), repeat


def run_pair(fns: dict, bench: Bench, steps: int) -> dict:
    """{name: (warm, timed)} -> {name: seconds per step}."""
    for warm, _ in fns.values():
        warm()
    med = interleaved({k: v[1] for k, v in fns.items()}, bench.sz.reps, bench.rt.device)
    return {k: v / steps for k, v in med.items()}


