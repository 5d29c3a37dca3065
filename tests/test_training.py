"""The one training loop (heads/training.py) on a toy model, and the task registry's dispatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from embedstore.errors import EmbedstoreError
from embedstore.heads.checkpoint import load_checkpoint
from embedstore.heads.training import LoopHooks, LoopSettings, fit, train_epoch

X = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.0, 0.5], [2.0, 1.0]])
T = torch.tensor([1.0, 0.0, -1.0, 2.0])


def _toy(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(2, 1, bias=False)


def _mse(net: torch.nn.Module):
    def loss(items: list[int]):
        idx = torch.tensor(items)
        return ((net(X[idx]).squeeze(1) - T[idx]) ** 2).mean(), len(items), []
    return loss


def test_grad_accumulation_and_clipping_match_a_hand_computed_step():
    net = _toy()
    w0 = net.weight.detach().clone()[0]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = train_epoch(net, [[0, 1], [2, 3]], opt, scaler, _mse(net), grad_accum=2)

    def grad(rows):  # d/dw mean((w.x - t)^2) = mean(2 (w.x - t) x)
        return np.mean([2 * (float(w0 @ X[i]) - float(T[i])) * X[i].numpy() for i in rows], axis=0)

    expected = w0.numpy() - 0.1 * (grad([0, 1]) + grad([2, 3])) / 2  # one step on the mean of both batches
    np.testing.assert_allclose(net.weight.detach()[0].numpy(), expected, rtol=1e-5)
    losses = [np.mean([(float(w0 @ X[i]) - float(T[i])) ** 2 for i in rows]) for rows in ([0, 1], [2, 3])]
    assert stats["train_loss"] == pytest.approx(np.mean(losses), rel=1e-5)

    clipped = _toy()
    opt = torch.optim.SGD(clipped.parameters(), lr=1.0)
    train_epoch(clipped, [[0, 1, 2, 3]], opt, scaler, _mse(clipped), max_grad_norm=0.01)
    moved = clipped.weight.detach()[0] - w0
    assert float(moved.norm()) == pytest.approx(0.01, rel=1e-4)  # a step of exactly the clipped norm
    np.testing.assert_allclose((-moved / moved.norm()).numpy(), grad([0, 1, 2, 3]) / np.linalg.norm(grad([0, 1, 2, 3])),
                               rtol=1e-4)


def test_an_epoch_with_no_usable_batch_is_an_error():
    net = _toy()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(EmbedstoreError, match="first failure: broken.wav"):
        train_epoch(net, [[0]], opt, torch.amp.GradScaler("cpu", enabled=False),
                    lambda items: (None, 0, [(0, "broken.wav")]))


def _scripted(net: torch.nn.Module, scores: list[float], seen: dict[int, torch.Tensor]) -> LoopHooks:
    """Hooks whose validation numbers are ``scores`` (one per epoch); ``seen`` gets each epoch's weights."""
    it = iter(scores)

    def validate():
        seen[len(seen) + 1] = net.weight.detach().clone()
        return {"valid_loss": next(it)}

    return LoopHooks(lambda epoch: [[0, 1], [2, 3]], _mse(net), validate, lambda v: (-v["valid_loss"],),
                     meta={"config": {"toy": True}})


def test_best_is_the_greatest_validation_key_and_patience_stops(tmp_path: Path):
    net, seen = _toy(), {}
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    result = fit(net, opt, _scripted(net, [0.9, 0.4, 0.5, 0.4, 0.1], seen), LoopSettings(epochs=5, patience=2),
                 tmp_path)
    # epoch 2 is best (0.4); epochs 3 and 4 bring no strictly lower loss (0.4 ties) -> stop after epoch 4
    assert result.best_epoch == 2 and result.stopped and result.epochs_run == 4
    assert result.best_key == (-0.4,)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == 2 and best["valid"] == {"valid_loss": 0.4} and best["config"] == {"toy": True}
    assert last["epoch"] == 4 and "optimizer" not in last and "optimizer" not in best  # finished: weights only
    torch.testing.assert_close(net.weight.detach(), seen[2])  # the network holds the best epoch's weights
    assert not torch.equal(seen[2], seen[4])


def test_without_a_run_folder_the_best_weights_come_back_from_memory_and_nothing_is_written(tmp_path: Path,
                                                                                               monkeypatch):
    import embedstore.heads.training as loop_module

    def no_files(*args, **kwargs):
        raise AssertionError("a run without a folder wrote a file")

    monkeypatch.setattr(loop_module, "save_checkpoint", no_files)
    monkeypatch.setattr(loop_module, "write_json", no_files)
    monkeypatch.chdir(tmp_path)
    net, seen = _toy(), {}
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    result = fit(net, opt, _scripted(net, [0.9, 0.4, 0.5, 0.4, 0.1], seen), LoopSettings(epochs=5, patience=2), None)
    assert result.best_epoch == 2 and result.stopped and result.epochs_run == 4 and result.best_key == (-0.4,)
    assert result.best_path is result.last_path is result.history_path is None
    torch.testing.assert_close(net.weight.detach(), seen[2])  # epoch 2's weights, not the last epoch's
    assert not torch.equal(seen[2], seen[4]) and list(tmp_path.iterdir()) == []
    with pytest.raises(EmbedstoreError, match="--resume needs a run folder"):
        fit(net, opt, _scripted(net, [0.1], {}), LoopSettings(epochs=1), None, resume=True)


def test_a_patience_key_resets_the_counter_apart_from_the_selection_key():
    """Selection by (accuracy, -loss), patience on accuracy alone (the MLP probe's rule)."""
    net, seen = _toy(), {}
    rows = iter([(0.5, 1.0), (0.5, 0.8), (0.5, 0.7), (0.6, 0.9), (0.6, 0.95), (0.6, 0.99), (0.9, 0.1)])

    def validate():
        seen[len(seen) + 1] = net.weight.detach().clone()
        acc, loss = next(rows)
        return {"valid_accuracy": acc, "valid_loss": loss}

    hooks = LoopHooks(lambda epoch: [[0, 1, 2, 3]], _mse(net), validate,
                      lambda r: (r["valid_accuracy"], -r["valid_loss"]), patience_key=lambda r: (r["valid_accuracy"],))
    result = fit(net, torch.optim.SGD(net.parameters(), lr=0.05), hooks, LoopSettings(epochs=7, patience=2), None)
    # epochs 2 and 3 raise the key (lower loss) but not the accuracy: the counter reaches 2 at epoch 3 -> stop;
    assert result.stopped and result.epochs_run == 3 and result.best_epoch == 3
    torch.testing.assert_close(net.weight.detach(), seen[3])
    net2, seen = _toy(), {}
    rows = iter([(0.5, 1.0), (0.5, 0.8), (0.5, 0.7), (0.6, 0.9), (0.6, 0.95), (0.6, 0.99), (0.9, 0.1)])
    plain = LoopHooks(lambda epoch: [[0, 1, 2, 3]], _mse(net2), validate, hooks.select)
    result = fit(net2, torch.optim.SGD(net2.parameters(), lr=0.05), plain, LoopSettings(epochs=7, patience=2), None)
    # the selection key as the patience key: epochs 2-4 reset the counter, 5 and 6 do not -> stop after 6
    assert result.epochs_run == 6 and result.best_epoch == 4


def _shuffled(net: torch.nn.Module) -> LoopHooks:
    """Hooks that draw the batch order from torch's global RNG (so a resume must restore it)."""
    def batches(epoch):
        order = torch.randperm(4).tolist()
        return [order[:2], order[2:]]

    def validate():
        with torch.no_grad():
            return {"valid_loss": float(((net(X).squeeze(1) - T) ** 2).mean())}

    return LoopHooks(batches, _mse(net), validate, lambda v: (-v["valid_loss"],))


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path: Path):
    def run(folder: Path, epochs: int, resume: bool = False, net=None):
        net = net or _toy()
        torch.manual_seed(123)
        opt = torch.optim.AdamW(net.parameters(), lr=0.05)
        settings = LoopSettings(epochs=epochs, keep_optimizer=True, grad_accum=1, max_grad_norm=1.0)
        return net, fit(net, opt, _shuffled(net), settings, folder, resume=resume)

    full, full_result = run(tmp_path / "full", 4)
    run(tmp_path / "cut", 2)
    resumed, result = run(tmp_path / "cut", 4, resume=True)
    assert result.resumed_from == 2 and [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    a, b = load_checkpoint(tmp_path / "cut" / "last.pt"), load_checkpoint(tmp_path / "full" / "last.pt")
    torch.testing.assert_close(a["model"]["weight"], b["model"]["weight"])
    assert result.history[3]["train_loss"] == pytest.approx(full_result.history[3]["train_loss"], rel=1e-6)
    assert result.best_epoch == full_result.best_epoch

    fresh, again = run(tmp_path / "full", 4)  # no --resume: starts over, and says the old run was replaced
    assert any("held an earlier run" in n for n in again.notes)


# ---- the task registry ---------------------------------------------------------------------------


def test_task_for_maps_column_names_to_tasks():
    from embedstore.heads.tasks import CAPTION, CLASSIFICATION, REGRESS, TAG, task_for, tasks

    assert set(tasks()) == {CLASSIFICATION, CAPTION, TAG, REGRESS}
    assert task_for("caption").column_kind == "caption"
    assert task_for("genre").name == task_for(None).name == task_for("label").name == CLASSIFICATION
    assert all(t.selection for t in tasks().values())


def test_finetune_dispatches_each_task_once_and_refuses_foreign_options(tmp_path, monkeypatch):
    from embedstore.extract.datasets import DatasetRequest
    from embedstore.extract.encoders import EncoderRequest
    from embedstore.finetune import caption, train

    calls = []
    monkeypatch.setattr(train, "finetune_classification", lambda *a, **k: calls.append(("label", a, k)) or "L")
    monkeypatch.setattr(caption, "finetune_caption", lambda *a, **k: calls.append(("caption", a, k)) or "C")
    assert train.finetune(tmp_path, "mert", task="genre", epochs=2, layer=3, t5="t5-small") == "L"
    assert train.finetune(tmp_path, "mert", task="caption", epochs=2, export_to_store=tmp_path / "s") == "C"
    (kind1, args1, kw1), (kind2, args2, kw2) = calls
    assert args1 == args2 == (DatasetRequest(tmp_path), EncoderRequest("mert"))
    assert kind1 == "label" and kw1 == {"task": "genre", "epochs": 2, "layer": 3}  # t5 at its default: dropped
    assert kind2 == "caption" and kw2 == {"task": "caption", "epochs": 2, "store": tmp_path / "s"}
    with pytest.raises(EmbedstoreError, match="--limit, --keep-optimizer apply to other tasks, not --task caption"):
        train.finetune(tmp_path, "mert", task="caption", limit=4, keep_optimizer=True)
    with pytest.raises(EmbedstoreError, match="--t5 applies to other tasks, not --task genre"):
        train.finetune(tmp_path, "mert", task="genre", t5="other-t5")
    assert len(calls) == 2


def test_probe_dispatches_through_the_registry(tmp_path, monkeypatch):
    from embedstore.heads import caption_probe, probe
    from embedstore.heads.tasks import task_for

    calls = []

    class Stop(Exception):
        pass

    def record(name):
        def stand_in(*args, **kwargs):
            calls.append((name, args, kwargs))
            raise Stop
        return stand_in

    monkeypatch.setattr(probe, "run_probe", record("label"))
    monkeypatch.setattr(caption_probe, "run_caption_probe", record("caption"))
    options = dict(models=["mert"], dataset=None, layer="all", head="mlp", preset="default", seeds=1, device="cpu",
                   progress=False, t5="t5", bert="bert", layer_mix="softmax", epochs=3, batch_size=4, lr=1e-4, seed=0)
    for task in ("genre", "caption"):
        with pytest.raises(Stop):
            task_for(task).probe(tmp_path, task, **options)
    assert [c[0] for c in calls] == ["label", "caption"]
    assert calls[0][1] == (tmp_path, "genre") and calls[0][2]["head"] == "mlp" and "t5" not in calls[0][2]
    assert calls[1][2]["model"] == "mert" and calls[1][2]["epochs"] == 3 and "head" not in calls[1][2]
    with pytest.raises(EmbedstoreError, match="exactly one --model"):
        task_for("caption").probe(tmp_path, "caption", **{**options, "models": ["a", "b"]})
