"""TokenPruning (Zero-TPrune): functional core, patch/restore, bad inputs and the MNIST effect."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from litmix.callbacks.token_pruning import TokenPruning, require_timm
from litmix.functional.token_pruning import merge_tokens, select_tokens, wpr_importance
from litmix.testing import TinyDataModule, make_trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _token_pruning import MnistViT, accuracy, trained_vit


def _vit() -> MnistViT:
    torch.manual_seed(0)
    return MnistViT(width=16, depth=3, patch=7).eval()


# ------------------------------------------------------------------ functional core
def test_wpr_ranks_the_star_centre_first_and_is_a_distribution() -> None:
    # 4 tokens; 1, 2, 3 attend mostly to 2 (the hub), 2 attends to itself
    a = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.1, 0.7, 0.1], [0.0, 0.0, 1.0, 0.0], [0.1, 0.0, 0.8, 0.1]])
    s = wpr_importance(a.view(1, 1, 4, 4), iters=20)
    assert int(s.argmax()) == 2
    assert torch.allclose(s.sum(-1), torch.ones(1))


def test_wpr_down_weights_uniform_heads() -> None:
    n = 5
    uniform = torch.full((n, n), 1.0 / n)
    peaked = torch.zeros(n, n)
    peaked[:, 3] = 1.0
    attn = torch.stack([uniform, uniform, uniform, peaked]).unsqueeze(0)
    weighted = wpr_importance(attn, iters=10)
    plain = wpr_importance(attn, iters=10, head_weighting=False)
    assert int(weighted.argmax()) == 3
    assert float(weighted[0, 3]) > 0.9 > float(plain[0, 3])


def test_select_keeps_cls_and_order() -> None:
    scores = torch.tensor([[0.0, 5.0, 1.0, 3.0], [9.0, 0.0, 2.0, 1.0]])
    kept, pruned = select_tokens(scores, keep=2)
    assert kept.tolist() == [[0, 1, 3], [0, 2, 3]]
    assert pruned.tolist() == [[2], [1]]


def test_merge_is_weighted_mean_into_most_similar() -> None:
    x = torch.tensor([[[0.0], [1.0], [3.0], [10.0]]])
    keys = torch.tensor([[[0.0, 1], [1, 0], [1, 0.1], [-1, 0]]])
    out = merge_tokens(x, keys, torch.tensor([[0, 1, 3]]), torch.tensor([[2]]), torch.tensor([[1.0, 1, 3, 1]]))
    assert out.flatten().tolist() == [0.0, 2.5, 10.0]


def test_functional_bad_inputs() -> None:
    with pytest.raises(ValueError, match="attn"):
        wpr_importance(torch.ones(3, 3))
    with pytest.raises(ValueError, match="iters"):
        wpr_importance(torch.ones(1, 1, 2, 2), iters=0)
    with pytest.raises(ValueError, match="keep"):
        select_tokens(torch.ones(1, 4), keep=4)


# ------------------------------------------------------------------ shell
def test_keep_rate_one_is_identity_and_restore_gives_the_model_back() -> None:
    model = _vit()
    x = torch.randn(4, 1, 28, 28)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(x)
        cb = TokenPruning(keep_rate=1.0, layers=[0, 1])
        cb.apply(model)
        assert torch.allclose(model(x), ref, atol=1e-5)  # the re-implemented block forward matches the original
        cb.restore()
        cb = TokenPruning(keep_rate=0.5, layers=[0], merge=True)
        cb.apply(model)
        assert not torch.allclose(model(x), ref, atol=1e-5)
        assert cb._tokens == {0: (17, 9)}
        assert cb.token_fraction() == pytest.approx(31 / 51)
        cb.restore()
        assert torch.equal(model(x), ref)
    assert not any("forward" in vars(m) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_lightning_fit_patches_and_restores(tmp_path: Path) -> None:
    module, dm, (cb,) = TokenPruning.example()
    seen: list[int] = []

    class Probe(pl_callback()):  # type: ignore[misc]
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
            seen.append(sum("forward" in vars(m) for m in pl_module.modules()))

    trainer = make_trainer(max_steps=2, callbacks=[cb, Probe()], default_root_dir=tmp_path, enable_checkpointing=True)
    trainer.fit(module, datamodule=dm)
    assert seen == [1, 1]  # the pruned block patched during fit
    assert not any("forward" in vars(m) for m in module.modules())
    ckpt = next(tmp_path.rglob("*.ckpt"))
    fresh = type(module)()
    fresh.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"], strict=True)
    assert pickle.loads(pickle.dumps(cb)).layers == [0]


def pl_callback() -> type:
    from lightning.pytorch import Callback

    return Callback


@pytest.mark.parametrize(
    ("kwargs", "exc", "arg"),
    [
        ({"keep_rate": 0.0}, ValueError, "keep_rate"),
        ({"keep_rate": 1.5}, ValueError, "keep_rate"),
        ({"keep_rate": float("nan")}, ValueError, "keep_rate"),
        ({"keep_rate": "0.5"}, TypeError, "keep_rate"),
        ({"layers": [-1]}, ValueError, "layers"),
        ({"layers": []}, ValueError, "layers"),
        ({"layers": [1, 1]}, ValueError, "layers"),
        ({"layers": 1}, TypeError, "layers"),
        ({"method": "tome"}, ValueError, "method"),
        ({"iters": 0}, ValueError, "iters"),
        ({"backend": "jax"}, ValueError, "backend"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, arg: str) -> None:
    with pytest.raises(exc, match=arg):
        TokenPruning(**kwargs)


def test_layers_out_of_range_and_model_without_attention_fail_in_setup() -> None:
    module, dm, _ = TokenPruning.example()
    trainer = make_trainer(max_steps=1, callbacks=[TokenPruning(layers=[5])])
    with pytest.raises(ValueError, match=r"layers=\[5\].*2 blocks"):
        trainer.fit(module, datamodule=dm)
    from litmix.testing import TinyClassifier

    trainer = make_trainer(max_steps=1, callbacks=[TokenPruning()])
    with pytest.raises(ValueError, match="no supported attention blocks"):
        trainer.fit(TinyClassifier(), datamodule=TinyDataModule())


def test_timm_backend() -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="timm"):
            require_timm("TokenPruning")
        pytest.skip("timm not installed: checked the ImportError names the extra")
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16, depth=3, num_heads=2)
    model.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        cb = TokenPruning(keep_rate=1.0, layers=[1], backend="timm")
        cb.apply(model)
        assert torch.allclose(model(x), ref, atol=1e-5)
        cb.restore()
        cb = TokenPruning(keep_rate=0.5, layers=[1], backend="timm")
        cb.apply(model)
        assert model(x).shape == (2, 10)
        assert cb._tokens[1] == (17, 9)
        cb.restore()
        assert torch.equal(model(x), ref)


# ------------------------------------------------------------------ effect on MNIST
@pytest.mark.slow
def test_zero_tprune_on_mnist_vit(shared_data: Path) -> None:
    """Seed 0 of 0/1/2 (all in benchmarks/results/token_pruning.md): keep 0.5 of the tokens after block 1 of 4.

    Measured (2000 test images; dense / zero_tprune / random): seed 0 0.544 / 0.510 / 0.531, seed 1 0.574 / 0.510 /
    0.526, seed 2 0.557 / 0.557 / 0.556. Held on every seed: zero_tprune >= dense - 0.07. Did NOT hold: zero_tprune
    beating random (seeds 0 and 1 lose); a lower forward time held in the median (pruned/dense 0.887, 0.838, 0.784)
    but not on every interleaved round (up to 1.36 on the loaded machine), so neither is asserted.
    """
    model, xt, yt = trained_vit(str(shared_data / "mnist"), 0)
    dense = accuracy(model, xt, yt)
    cb = TokenPruning(method="zero_tprune", keep_rate=0.5, layers=[1])
    cb.apply(model)
    pruned = accuracy(model, xt, yt)
    fraction = cb.token_fraction()
    cb.restore()
    assert accuracy(model, xt, yt) == dense  # restored
    assert fraction == pytest.approx((17 + 13 + 9 + 9) / 68)
    assert pruned >= dense - 0.07, (dense, pruned)


def test_nn_module_only_model_is_refused() -> None:
    with pytest.raises(ValueError, match="Sequential has no supported attention blocks"):
        TokenPruning().blocks(nn.Sequential(nn.Linear(2, 2)))
