"""The sparse top-k MoE-Adapter, with shared experts and balancing.

Notation (as in ``docs/design.md``)::

    x   a real token (padding removed), LN(x) its LayerNorm
    l = W_g LN(x)                         [N]   router logits
    S = top-k of l (+ selection bias)     the k experts chosen
    w = softmax(l[S])  (or softmax(l)[S]) their weights
    y = sum_{i in S} w_i E_i(LN(x)) + sum_j Shared_j(LN(x))
    aux = alpha N sum_i f_i P_i  +  beta mean(logsumexp(l)^2)

The experts run through :meth:`ExpertBank.routed
<speechbrain_moe.experts.ExpertBank.routed>` (each expert on its own tokens,
``index_select`` / ``index_add_``; a hand-written kernel on the CPU, see
:mod:`speechbrain_moe.kernels`) or, for narrow experts, through
:meth:`ExpertBank.dense <speechbrain_moe.experts.ExpertBank.dense>` with
zero gates for the experts not chosen. The auxiliary loss is reported to
the open routing context (:func:`speechbrain_moe.routing.routing_context`).

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.distributed as dist
import torch.nn as nn

from speechbrain_moe.checks import check_positive
from speechbrain_moe.experts import ExpertBank
from speechbrain_moe.kernels import check_implementation
from speechbrain_moe.routing import RoutedModule

ROUTINGS = ("topk_softmax", "softmax_topk")
DISPATCHES = ("auto", "grouped", "dense")


class SparseMoE(RoutedModule):
    """Top-k routed experts ``E_i(x) = W2_i SiLU(W1_i LN(x))``, dropless.

    Router logits ``l = W_g LN(x)``; each token goes to its ``top_k`` experts,
    weighted by the softmax over the k selected logits (``routing=
    "topk_softmax"``, summing to one) or by the full softmax's probabilities of
    those k, *not* renormalised (``"softmax_topk"``, as Switch/ST-MoE; they sum
    to at most one). Optional always-on shared experts are added to every
    token. No capacity limit: no token is dropped.

    Auxiliary losses, reported after each forward to the open routing
    contexts (:func:`speechbrain_moe.routing.routing_context`, whose
    ``aux_loss`` sums them):

    * Switch load balance ``alpha * N * sum_i f_i P_i``, with ``f_i`` the share
      of token-slots sent to expert i and ``P_i`` its mean router probability
      (equals ``alpha`` for perfectly uniform routing);
    * router z-loss ``beta * mean(logsumexp(l) ** 2)``.

    With ``bias_balancing=True`` a per-expert bias is added to the logits for
    the *selection* only (not the weights) and nudged towards uniform load once
    per optimizer step by :meth:`update_bias` (auxiliary-loss-free balancing).

    Arguments
    ---------
    input_size : int
        Size of the incoming tokens (``output_size`` defaults to it).
    num_experts : int
        Number of routed experts N.
    top_k : int
        Experts per token (``1 <= top_k <= num_experts``).
    hidden_size : int
        Hidden size of each expert.
    output_size : int, optional
        Size of the outgoing tokens (default: ``input_size``; the bridge maps
        the encoder's width to the LLM's).
    num_shared_experts : int
        Always-on experts (each of ``hidden_size``).
    routing : str
        ``"topk_softmax"`` or ``"softmax_topk"``.
    balance_loss_weight : float
        alpha of the Switch balance loss (0 disables it).
    z_loss_weight : float
        beta of the router z-loss (0 disables it).
    bias_balancing, bias_update_rate : bool, float
        Use the auxiliary-loss-free bias balancing, and its step.
    norm : bool
        Apply a LayerNorm to the input before routing and experts.
    zero_init_output : bool
        Zero-initialise the experts' output projections (residual use inside
        an encoder; the bridge sets it to False).
    activation : type
        Activation class of the experts.
    dispatch : str
        ``auto``, ``grouped`` or ``dense`` (same result, different cost).
    implementation : str
        ``"auto"``, ``"plain"`` or ``"kernel"``: the experts'
        implementation (see :mod:`speechbrain_moe.kernels`; same values).
    expert_bias : bool
        Give the experts (routed and shared) their biases (False: bias-free experts, as the LoRA
        experts of :mod:`speechbrain_moe.adapters.lora_experts`).

    Example
    -------
    >>> from speechbrain_moe.routing import routing_context
    >>> moe = SparseMoE(16, num_experts=4, top_k=2, hidden_size=8, num_shared_experts=1)
    >>> with routing_context(moe) as routing:
    ...     y = moe(torch.randn(2, 7, 16))
    >>> y.shape, routing.aux_loss.shape
    (torch.Size([2, 7, 16]), torch.Size([]))
    """

    def __init__(
        self,
        input_size,
        num_experts=8,
        top_k=2,
        hidden_size=64,
        output_size=None,
        num_shared_experts=0,
        routing="topk_softmax",
        balance_loss_weight=0.01,
        z_loss_weight=0.001,
        bias_balancing=False,
        bias_update_rate=0.001,
        norm=True,
        zero_init_output=True,
        activation=nn.SiLU,
        dispatch="auto",
        implementation="auto",
        expert_bias=True,
    ):
        check_positive(
            "SparseMoE", num_experts=num_experts, top_k=top_k, hidden_size=hidden_size
        )
        if top_k > num_experts:
            raise ValueError(
                f"SparseMoE: top_k={top_k} is larger than num_experts={num_experts}. "
                "Choose top_k <= num_experts."
            )
        if routing not in ROUTINGS:
            raise ValueError(
                f"SparseMoE: unknown routing {routing!r}; choose one of {ROUTINGS}."
            )
        if num_shared_experts < 0:
            raise ValueError(
                f"SparseMoE: num_shared_experts must be >= 0, got {num_shared_experts}."
                " Set it to 0 (no shared expert) or more."
            )
        if dispatch not in DISPATCHES:
            raise ValueError(
                f"SparseMoE: unknown dispatch {dispatch!r}; choose one of {DISPATCHES}."
            )
        super().__init__(num_experts)
        self.implementation = check_implementation("SparseMoE", implementation)
        if dispatch == "auto":
            dispatch = "dense" if num_experts * hidden_size <= 256 else "grouped"
        self.dispatch = dispatch
        self.top_k = top_k
        self.routing = routing
        self.balance_loss_weight = balance_loss_weight
        self.z_loss_weight = z_loss_weight
        self.bias_balancing = bias_balancing
        self.bias_update_rate = bias_update_rate
        output_size = input_size if output_size is None else output_size
        self.output_size = output_size
        self.norm = nn.LayerNorm(input_size) if norm else nn.Identity()
        self.router = nn.Linear(input_size, num_experts, bias=False)
        nn.init.normal_(self.router.weight, std=input_size**-0.5)
        self.experts = ExpertBank(
            num_experts,
            input_size,
            hidden_size,
            output_size,
            activation=activation,
            zero_init_up=zero_init_output,
            implementation=implementation,
            bias=expert_bias,
        )
        self.shared = None
        if num_shared_experts:
            self.shared = ExpertBank(
                num_shared_experts,
                input_size,
                hidden_size,
                output_size,
                activation=activation,
                zero_init_up=zero_init_output,
                implementation=implementation,
                bias=expert_bias,
            )
        self.register_buffer("selection_bias", torch.zeros(num_experts))
        self.register_buffer("step_counts", torch.zeros(num_experts), persistent=False)

    def forward(self, x, mask=None):
        """Routes every real token of ``x`` to its experts.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time, input_size]`` tokens.
        mask : torch.Tensor, optional
            ``[batch, time]``, True for real tokens (None: all real); padded
            tokens are not routed, take no part in the losses and get a zero
            output.

        Returns
        -------
        torch.Tensor
            ``[batch, time, output_size]``.
        """
        batch, length, _ = x.shape
        if mask is not None and bool(mask.all()):
            mask = None
        tokens = self.norm(x)
        if mask is not None:
            tokens = tokens[mask]
        else:
            tokens = tokens.reshape(batch * length, -1)
        logits = self.router(tokens).float()
        weights, experts = self.route(logits)
        counts = torch.bincount(experts.reshape(-1), minlength=self.num_experts)
        if self.dispatch == "dense":
            gates = weights.new_zeros(weights.shape[0], self.num_experts)
            gates = gates.scatter(-1, experts, weights)
            out = self.experts.dense(tokens, gates)
        else:
            out = self.experts.routed(tokens, experts, weights, counts)
        if self.shared is not None:
            out = out + self.shared.dense(tokens)

        self.report_aux_loss(self._aux_loss(logits, counts))
        if self.training and self.bias_balancing:
            self.step_counts += counts.detach().float()
        if self.wants_routing():
            self._report_routing(weights, experts, mask, batch, length)

        if mask is None:
            return out.reshape(batch, length, -1)
        full = out.new_zeros(batch, length, self.output_size)
        full[mask] = out
        return full

    # Routing, auxiliary losses and bias balancing.

    def route(self, logits):
        """Selects ``top_k`` experts per token and their weights.

        Arguments
        ---------
        logits : torch.Tensor
            Router logits ``[tokens, num_experts]`` (float32).

        Returns
        -------
        weights : torch.Tensor
            ``[tokens, top_k]`` (rows sum to one with ``topk_softmax``, to at
            most one with ``softmax_topk``).
        experts : torch.Tensor
            ``[tokens, top_k]`` expert indices.

        Example
        -------
        >>> moe = SparseMoE(4, num_experts=3, top_k=2)
        >>> w, i = moe.route(torch.tensor([[0.0, 2.0, 1.0]]))
        >>> i.tolist(), [round(v, 4) for v in w[0].tolist()]
        ([[1, 2]], [0.7311, 0.2689])
        """
        selection = logits + self.selection_bias if self.bias_balancing else logits
        experts = selection.topk(self.top_k, dim=-1).indices
        if self.routing == "topk_softmax":
            weights = torch.softmax(logits.gather(-1, experts), dim=-1)
        else:
            weights = torch.softmax(logits, dim=-1).gather(-1, experts)
        return weights, experts

    def _aux_loss(self, logits, counts):
        """Switch balance loss plus router z-loss (None when both are off)."""
        loss = None
        if self.balance_loss_weight and logits.shape[0] > 0:
            share = counts.float() / counts.sum().clamp(min=1)
            mean_prob = torch.softmax(logits, dim=-1).mean(0)
            loss = (
                self.balance_loss_weight * self.num_experts * (share * mean_prob).sum()
            )
        if self.z_loss_weight and logits.shape[0] > 0:
            z = self.z_loss_weight * torch.logsumexp(logits, dim=-1).pow(2).mean()
            loss = z if loss is None else loss + z
        return loss

    def _report_routing(self, weights, experts, mask, batch, length):
        """Scatters the routing back to ``[batch, time, experts]`` for recorders."""
        dense_w = weights.new_zeros(weights.shape[0], self.num_experts)
        dense_w.scatter_(-1, experts, weights)
        selected = torch.zeros_like(dense_w).scatter_(-1, experts, 1.0)
        if mask is None:
            shape = (batch, length, self.num_experts)
            self.report(dense_w.reshape(shape), None, selected=selected.reshape(shape))
            return
        full_w = dense_w.new_zeros(batch, length, self.num_experts)
        full_s = torch.zeros_like(full_w)
        full_w[mask], full_s[mask] = dense_w, selected
        self.report(full_w, mask, selected=full_s)

    @torch.no_grad()
    def update_bias(self):
        """Nudges the selection bias towards uniform load (one optimizer step).

        Counts since the last call are summed over DDP ranks first, so every
        rank applies the same update.

        Example
        -------
        >>> moe = SparseMoE(4, num_experts=2, top_k=1, bias_balancing=True)
        >>> moe.step_counts.copy_(torch.tensor([3.0, 1.0]))
        tensor([3., 1.])
        >>> moe.update_bias()
        >>> moe.selection_bias.tolist()
        [-0.0010000000474974513, 0.0010000000474974513]
        """
        counts = self.step_counts.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        if counts.sum() > 0:
            self.selection_bias += self.bias_update_rate * torch.sign(
                counts.mean() - counts
            )
        self.step_counts.zero_()


def update_selection_biases(model):
    """Calls :meth:`SparseMoE.update_bias` on every bias-balanced router.

    Call it once per optimizer step (``Brain.on_fit_batch_end``).

    Arguments
    ---------
    model : torch.nn.Module
        Any model.

    Returns
    -------
    int
        Number of routers updated.

    Example
    -------
    >>> update_selection_biases(nn.Sequential(SparseMoE(4, 2, 1, bias_balancing=True)))
    1
    """
    count = 0
    for module in model.modules():
        if isinstance(module, SparseMoE) and module.bias_balancing:
            module.update_bias()
            count += 1
    return count
