"""Sparse top-k MoE-Adapter: routing against a brute-force reference, shared
experts, dropless dispatch, the Switch balance loss and router z-loss, bias
balancing, and a gradient for every expert even when some get no token."""

import pytest
import torch
import torch.nn.functional as F

from speechbrain_moe.adapters import SparseMoE, update_selection_biases
from speechbrain_moe.routing import routing_context


def make_moe(seed=0, **kwargs):
    """A SparseMoE with random parameters everywhere (outputs not zero)."""
    settings = {
        "num_experts": 5,
        "top_k": 2,
        "hidden_size": 4,
        "zero_init_output": False,
    }
    settings.update(kwargs)
    torch.manual_seed(seed)
    moe = SparseMoE(6, **settings)
    with torch.no_grad():
        for param in moe.parameters():
            param.normal_(0.0, 0.5)
    return moe


def run_with_aux(moe, *args):
    """``moe(*args)`` and the auxiliary loss it reported."""
    with routing_context(moe) as routing:
        y = moe(*args)
    return y, routing.aux_loss


def expert(bank, i, x):
    """``W2_i SiLU(W1_i x + b1_i) + b2_i`` written out."""
    hidden = F.silu(x @ bank.down_weight[:, i] + bank.down_bias[i])
    return hidden @ bank.up_weight[i] + bank.up_bias[i]


def brute_force(moe, x, mask):
    """Token by token: sort the logits, take the k best, weight, sum."""
    normed = F.layer_norm(x, (x.shape[-1],), moe.norm.weight, moe.norm.bias)
    out = torch.zeros(*x.shape[:2], moe.output_size)
    choices = {}
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if not mask[b, t]:
                continue
            token = normed[b, t]
            logits = token @ moe.router.weight.T
            score = logits + moe.selection_bias if moe.bias_balancing else logits
            chosen = sorted(
                range(moe.num_experts), key=lambda i: -float(score[i].detach())
            )
            chosen = chosen[: moe.top_k]
            if moe.routing == "topk_softmax":
                weights = torch.softmax(logits[chosen], dim=0)
            else:
                weights = torch.softmax(logits, dim=0)[chosen]
            value = sum(
                w * expert(moe.experts, i, token) for w, i in zip(weights, chosen)
            )
            if moe.shared is not None:
                value = value + sum(
                    expert(moe.shared, s, token) for s in range(moe.shared.num_experts)
                )
            out[b, t] = value
            choices[(b, t)] = dict(zip(chosen, weights.tolist()))
    return out, choices


@pytest.mark.parametrize("dispatch", ["grouped", "dense"])
@pytest.mark.parametrize("routing", ["topk_softmax", "softmax_topk"])
@pytest.mark.parametrize("shared", [0, 2])
def test_matches_brute_force(routing, shared, dispatch):
    moe = make_moe(
        routing=routing, num_shared_experts=shared, top_k=3, dispatch=dispatch
    )
    x = torch.randn(2, 6, 6)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    expected, choices = brute_force(moe, x, mask)
    torch.testing.assert_close(moe(x, mask), expected, atol=1e-5, rtol=1e-4)
    logits = moe.router(moe.norm(x)).float()
    weights, experts = moe.route(logits[mask])
    for row, key in enumerate(k for k in choices):
        got = dict(zip(experts[row].tolist(), weights[row].tolist()))
        assert set(got) == set(choices[key])
        for i, w in choices[key].items():
            assert got[i] == pytest.approx(w, abs=1e-6)


def test_shared_experts_see_every_token():
    moe = make_moe(num_shared_experts=1)
    x = torch.randn(1, 4, 6)
    routed = moe(x)
    shared = expert(moe.shared, 0, moe.norm(x))
    moe.shared = None
    torch.testing.assert_close(routed - moe(x), shared, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dispatch", ["grouped", "dense"])
def test_dropless_even_when_every_token_picks_one_expert(dispatch):
    moe = make_moe(top_k=1, bias_balancing=True, dispatch=dispatch)
    moe.selection_bias[0] = 1e3  # every token selects expert 0
    x = torch.randn(4, 32, 6)
    y = moe(x)
    torch.testing.assert_close(
        y, expert(moe.experts, 0, moe.norm(x)), atol=1e-5, rtol=1e-4
    )
    assert (y.abs().sum(-1) > 0).all(), "a token was dropped"


def test_bias_balancing_moves_selection_not_weights():
    moe = make_moe(top_k=2, bias_balancing=True)
    x = torch.randn(2, 5, 6)
    logits = moe.router(moe.norm(x)).float().reshape(-1, 5)
    moe.selection_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 40.0, 60.0]))
    weights, experts = moe.route(logits)
    assert (experts.sort(-1).values == torch.tensor([3, 4])).all()
    # The weights come from the raw logits of the selected experts.
    torch.testing.assert_close(weights, torch.softmax(logits.gather(-1, experts), -1))
    # The same logits without the bias select other experts for some tokens.
    moe.bias_balancing = False
    assert not torch.equal(
        moe.route(logits)[1].sort(-1).values, experts.sort(-1).values
    )


def test_bias_update_pushes_load_towards_uniform():
    moe = make_moe(top_k=1, bias_balancing=True)
    moe.selection_bias[1] = 1e3  # expert 1 takes everything
    moe.train()
    moe(torch.randn(2, 5, 6))
    assert moe.step_counts.tolist() == [0.0, 10.0, 0.0, 0.0, 0.0]
    assert update_selection_biases(moe) == 1
    delta = moe.selection_bias - torch.tensor([0.0, 1e3, 0.0, 0.0, 0.0])
    assert delta[1] < 0 and (delta[[0, 2, 3, 4]] > 0).all()
    assert moe.step_counts.sum() == 0
    moe.eval()
    moe(torch.randn(2, 5, 6))
    assert moe.step_counts.sum() == 0  # only training batches count


@pytest.mark.parametrize("top_k", [1, 2])
def test_switch_balance_loss_equals_alpha_for_uniform_routing(top_k):
    alpha = 0.3
    moe = SparseMoE(
        4,
        num_experts=4,
        top_k=top_k,
        norm=False,
        balance_loss_weight=alpha,
        z_loss_weight=0.0,
    )
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4))
    # Token j points at experts j, ..., j + k - 1 (cyclically): each expert
    # gets the same share of token-slots (f_i = 1/4), and by the cyclic
    # symmetry the mean router probability of each expert is 1/4 too.
    tokens = sum(torch.eye(4).roll(shift, dims=1) for shift in range(top_k))
    _, aux = run_with_aux(moe, 3.0 * tokens.unsqueeze(0))
    assert float(aux.detach()) == pytest.approx(alpha, rel=1e-6)
    # All tokens alike: the same k experts take everything, above the minimum.
    _, aux = run_with_aux(moe, 3.0 * tokens[[0, 0, 0, 0]].unsqueeze(0))
    probs = torch.softmax(3.0 * tokens[0], 0)
    busy = float(probs[:top_k].sum())  # the k busy experts, f_i = 1/k each
    assert float(aux.detach()) == pytest.approx(alpha * 4 * busy / top_k, rel=1e-6)
    assert float(aux.detach()) > alpha


def test_z_loss_formula_on_real_tokens_only():
    beta = 0.05
    moe = make_moe(balance_loss_weight=0.0, z_loss_weight=beta)
    x = torch.randn(2, 6, 6)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3], dtype=torch.bool)
    _, aux = run_with_aux(moe, x, mask)
    logits = moe.router(moe.norm(x))[mask]
    expected = beta * torch.logsumexp(logits, dim=-1).pow(2).mean()
    torch.testing.assert_close(aux, expected)
    x[1, 3:] = 100.0  # padding changes nothing
    _, aux = run_with_aux(moe, x, mask)
    torch.testing.assert_close(aux, expected)


@pytest.mark.parametrize("dispatch", ["grouped", "dense"])
@pytest.mark.parametrize("shared", [0, 1])
def test_idle_experts_still_get_a_gradient_tensor(shared, dispatch):
    moe = make_moe(
        top_k=1, bias_balancing=True, num_shared_experts=shared, dispatch=dispatch
    )
    moe.selection_bias[2] = 1e3  # only expert 2 gets tokens
    y, aux = run_with_aux(moe, torch.randn(2, 5, 6))
    loss = y.pow(2).sum() + aux
    params = dict(moe.named_parameters())
    # allow_unused=False: raises if a parameter is not in the graph, which is
    # what DDP with find_unused_parameters=False would trip on.
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    bank_grad = grads["experts.down_weight"]
    assert torch.count_nonzero(bank_grad[:, 2]) > 0
    assert torch.count_nonzero(bank_grad[:, [0, 1, 3, 4]]) == 0


@pytest.mark.parametrize("dispatch", ["grouped", "dense"])
def test_all_padding_batch_keeps_every_parameter_in_graph(dispatch):
    moe = make_moe(num_shared_experts=1, dispatch=dispatch)
    y = moe(torch.randn(2, 3, 6), torch.zeros(2, 3, dtype=torch.bool))
    assert torch.count_nonzero(y) == 0
    torch.autograd.grad(y.sum(), list(moe.parameters()))


def test_grouped_and_dense_dispatch_agree_in_value_and_gradient():
    grouped = make_moe(top_k=2, dispatch="grouped", num_shared_experts=1)
    dense = make_moe(top_k=2, dispatch="dense", num_shared_experts=1)
    x = torch.randn(3, 7, 6)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 2 + [0] * 5]).bool()
    y_g, y_d = grouped(x, mask), dense(x, mask)
    torch.testing.assert_close(y_g, y_d, atol=1e-5, rtol=1e-4)
    g_grads = torch.autograd.grad(y_g.pow(2).sum(), list(grouped.parameters()))
    d_grads = torch.autograd.grad(y_d.pow(2).sum(), list(dense.parameters()))
    for a, b in zip(g_grads, d_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_grouped_dispatch_under_autocast_matches_dense(dtype):
    """Under ``torch.autocast`` (``--precision bf16``) the grouped experts
    compute in the autocast dtype, like the dense path and the Linear layers;
    float32 tokens from the LayerNorm once made ``index_add_`` mix dtypes."""
    grouped = make_moe(top_k=2, dispatch="grouped", num_shared_experts=1)
    dense = make_moe(top_k=2, dispatch="dense", num_shared_experts=1)
    x = torch.randn(3, 7, 6)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 2 + [0] * 5]).bool()
    with torch.autocast("cpu", dtype=dtype):
        y_g, y_d = grouped(x, mask), dense(x, mask)
    assert y_g.dtype == y_d.dtype == dtype
    torch.testing.assert_close(y_g.float(), y_d.float(), atol=2e-2, rtol=2e-2)
    g_grads = torch.autograd.grad(y_g.float().pow(2).sum(), list(grouped.parameters()))
    d_grads = torch.autograd.grad(y_d.float().pow(2).sum(), list(dense.parameters()))
    for a, b in zip(g_grads, d_grads):
        assert a.dtype == torch.float32  # parameters stay float32
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)


def test_auto_dispatch_picks_dense_for_narrow_experts_only():
    assert SparseMoE(8, num_experts=8, top_k=2, hidden_size=3).dispatch == "dense"
    assert SparseMoE(8, num_experts=8, top_k=4, hidden_size=64).dispatch == "grouped"
    with pytest.raises(ValueError, match="dispatch"):
        SparseMoE(8, dispatch="loop")


@pytest.mark.parametrize("dispatch", ["grouped", "dense"])
@pytest.mark.parametrize("routing", ["topk_softmax", "softmax_topk"])
def test_gradients_match_brute_force(routing, dispatch):
    """The hand-written backward of the grouped path equals autograd through
    the token-by-token reference: tokens, router, norm and every expert."""
    moe = make_moe(routing=routing, num_shared_experts=1, top_k=3, dispatch=dispatch)
    x = torch.randn(2, 6, 6, requires_grad=True)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    target = torch.randn(2, 6, moe.output_size)
    params = [x, *moe.parameters()]
    got = torch.autograd.grad((moe(x, mask) * target).sum(), params)
    expected = torch.autograd.grad(
        (brute_force(moe, x, mask)[0] * target).sum(), params
    )
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
