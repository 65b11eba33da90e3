"""The one step recipe on a tiny torch model: accumulation over micro-batches is one step on their
mean loss, clipping and the schedule act at the step's end, as DeepSpeed's engine does."""

import dataclasses
import itertools
from types import SimpleNamespace

import pytest
import torch

from mmc_ray.config import TrainConfig
from mmc_ray.train.step import LocalEngine, train_step


class Regression(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x, y):
        return SimpleNamespace(loss=((self.linear(x) - y) ** 2).mean())


def batches(n: int):
    torch.manual_seed(1)
    return [({"x": torch.randn(4, 3), "y": torch.randn(4, 1)}, 4, 4) for _ in range(n)]


def weights_after(grad_accum: int, data, cfg: TrainConfig) -> torch.Tensor:
    model = Regression()
    engine = LocalEngine.for_model(model, dataclasses.replace(cfg, grad_accum=grad_accum))
    stream = iter(data)
    for _ in range(len(data) // grad_accum):
        train_step(engine, stream, grad_accum)
    return model.linear.weight.detach().clone()


def test_accumulating_two_micro_batches_is_one_step_on_their_mean():
    cfg = TrainConfig(learning_rate=0.1, warmup_steps=1, max_steps=10, weight_decay=0.0, grad_clip=1e9)
    data = batches(2)
    merged = [({"x": torch.cat([data[0][0]["x"], data[1][0]["x"]]),
                "y": torch.cat([data[0][0]["y"], data[1][0]["y"]])}, 8, 8)]
    assert torch.allclose(weights_after(2, data, cfg), weights_after(1, merged, cfg), atol=1e-6)
    assert not torch.allclose(weights_after(1, data, cfg), weights_after(2, data, cfg))  # two steps differ


def test_the_step_reports_its_mean_loss_tokens_and_samples():
    data = batches(3)
    with torch.no_grad():  # the weights change only after the third micro-batch
        expected = sum(Regression()(**batch).loss.item() for batch, _, _ in data) / 3
    cfg = TrainConfig(learning_rate=0.1, warmup_steps=1, max_steps=10, grad_accum=3)
    engine = LocalEngine.for_model(Regression(), cfg)
    seen = []
    done = train_step(engine, itertools.cycle(data), 3, on_batch=lambda b, t: seen.append(t))
    assert (done.tokens, done.samples, seen) == (12, 12, [4, 4, 4])
    assert done.loss.item() == pytest.approx(expected)


def test_clipping_bounds_the_update():
    model = Regression()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    engine = LocalEngine(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                         grad_accum=1, grad_clip=1e-3)
    train_step(engine, iter(batches(1)), 1)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert 0 < moved.norm() <= 1e-3 + 1e-7
