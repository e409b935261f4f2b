import pytest
import torch

from litmix.nas.flexibert import FlexiBERTSearch, FlexiLM, flexi_param_count, wl_embedding

TEXT = "to be or not to be, that is the question. whether tis nobler in the mind to suffer. " * 30


def _layer(attention="sa", hidden=32, ff=64, heads=2):
    return {"attention": attention, "hidden": hidden, "ff": ff, "heads": heads}


def test_bad_arguments_fail_before_compute_naming_the_argument():
    with pytest.raises(ValueError, match="budget"):
        FlexiBERTSearch(budget=0)
    with pytest.raises(ValueError, match="baseline_hidden"):
        FlexiBERTSearch(baseline_hidden=30)
    with pytest.raises(ValueError, match="min_param_ratio"):
        FlexiBERTSearch(min_param_ratio=0.0)
    with pytest.raises(TypeError, match="train_steps"):
        FlexiBERTSearch(train_steps=1.5)
    with pytest.raises(ValueError, match="search_space"):
        FlexiBERTSearch(search_space={"attention": []})
    with pytest.raises(ValueError, match="unknown attention names"):
        FlexiBERTSearch(search_space={"attention": ["sa", "fnet2d"]})
    with pytest.raises(ValueError, match="search_space"):
        FlexiBERTSearch(search_space={"depth": [2]})
    with pytest.raises(ValueError, match="arch"):
        FlexiLM([], vocab_size=5, block_size=8)
    with pytest.raises(ValueError, match="unknown attention names"):
        FlexiLM([_layer(attention="performer")], vocab_size=5, block_size=8)
    with pytest.raises(ValueError, match="divisible"):
        FlexiLM([_layer(hidden=30, heads=4)], vocab_size=5, block_size=8)
    with pytest.raises(ValueError, match="too short"):
        FlexiBERTSearch(block_size=64).search("abc" * 10)
    with pytest.raises(ValueError, match="parameter budget"):
        FlexiBERTSearch(baseline_hidden=4, pool_size=5).search(TEXT)


@pytest.mark.parametrize("attention", ["sa", "lt", "conv"])
def test_every_token_mixer_is_causal(attention):
    torch.manual_seed(0)
    lm = FlexiLM([_layer(attention, 32, 64, 4), _layer("sa", 48, 64, 2)], vocab_size=7, block_size=12).eval()
    x = torch.randint(0, 7, (2, 12))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 7  # change the future
    with torch.no_grad():
        assert torch.allclose(lm(x)[:, :6], lm(y)[:, :6], atol=1e-5)
        assert not torch.allclose(lm(x)[:, 6:], lm(y)[:, 6:])


def test_graph_similarity_embedding_orders_by_structure():
    base = [_layer("sa", 32, 64, 2), _layer("sa", 32, 64, 2)]
    near = [_layer("sa", 32, 64, 2), _layer("sa", 32, 128, 2)]
    far = [_layer("conv", 64, 256, 4), _layer("lt", 48, 128, 4)]
    e = wl_embedding([base, near, far, base], dim=3)
    assert e.shape == (4, 3)
    assert torch.allclose(e[0], e[3], atol=1e-5)  # identical graphs, identical points
    assert (e[0] - e[1]).norm() < (e[0] - e[2]).norm()


def test_pool_respects_the_parameter_budget_and_search_is_seeded():
    kw = {"budget": 3, "n_init": 1, "pool_size": 30, "baseline_hidden": 32, "train_steps": 2, "batch_size": 2}
    kw["ensemble"] = 2
    a = FlexiBERTSearch(block_size=8, val_batches=1, seed=1, **kw).search(TEXT)
    b = FlexiBERTSearch(block_size=8, val_batches=1, seed=1, **kw).search(TEXT)
    assert a["archs"] == b["archs"]
    assert a["ppl"] == b["ppl"]
    assert all(0.85 * a["baseline_params"] <= p <= a["baseline_params"] for p in a["params"])
    assert len({repr(x) for x in a["archs"]}) == 3
    only_conv = FlexiBERTSearch(block_size=8, val_batches=1, search_space={"attention": ["conv"]}, **kw).search(TEXT)
    assert {layer["attention"] for arch in only_conv["archs"] for layer in arch} == {"conv"}
    vocab = len(set(TEXT))
    assert a["best_params"] == flexi_param_count(a["best_arch"], vocab, 8)


@pytest.fixture(scope="module")
def shakespeare(shared_data):
    return (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]


@pytest.mark.slow
def test_searched_model_beats_the_homogeneous_baseline_of_equal_parameters(shakespeare):
    """Tiny Shakespeare char-LM, 2 layers, 60 training steps: the searched model vs the all-self-attention baseline.

    The pool only holds architectures with 0.85-1.0 x the baseline's parameters (64,190), so the found model is
    never larger. Measured (search seeds 0, 1, 2; both models retrained with seeds 100, 101; see the report):
    searched val perplexity 15.58 / 15.57 / 15.75 vs baseline 17.23 (mean of 16.98 and 17.48). CI runs search
    seeds 0 and 1 (time budget).
    """
    torch.set_num_threads(1)
    kw = {"budget": 4, "n_init": 2, "train_steps": 60, "batch_size": 8, "block_size": 32, "val_batches": 8}
    base_ppl = None
    for seed in (0, 1):
        search = FlexiBERTSearch(seed=seed, **kw)
        out = search.search(shakespeare)
        assert out["best_params"] <= out["baseline_params"]
        found = [search.train_and_evaluate(out["best_arch"], shakespeare, seed=100 + k) for k in range(2)]
        if base_ppl is None:
            base_ppl = [search.train_and_evaluate(out["baseline_arch"], shakespeare, seed=100 + k) for k in range(2)]
        print(seed, out["best_arch"], found, base_ppl)
        assert sum(found) / 2 < sum(base_ppl) / 2 - 1.0
