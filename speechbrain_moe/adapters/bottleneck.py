"""The single bottleneck adapter (Houlsby et al., 2019; Pfeiffer et al., 2020).

Authors
 * speechbrain-moe contributors 2026
"""

import torch.nn as nn

from speechbrain_moe.checks import check_positive


class BottleneckAdapter(nn.Module):
    """``A(x) = W_up act(W_down x + b_down) + b_up`` with a zero up-projection.

    The zero up-projection makes the adapted network equal the pretrained one
    at step 0; the random down-projection lets every weight learn (a zero
    down-projection as well would leave only ``b_up`` trainable).

    Arguments
    ---------
    input_size : int
        Size of the incoming tokens.
    bottleneck : int
        Hidden size r.
    output_size : int, optional
        Output size (default ``input_size``).
    activation : type
        Activation class.

    Example
    -------
    >>> import torch
    >>> adapter = BottleneckAdapter(16, bottleneck=4)
    >>> x = torch.randn(2, 7, 16)
    >>> adapter(x).abs().sum().item()  # zero at initialisation
    0.0
    """

    def __init__(self, input_size, bottleneck=24, output_size=None, activation=nn.GELU):
        super().__init__()
        check_positive(
            "BottleneckAdapter", input_size=input_size, bottleneck=bottleneck
        )
        output_size = input_size if output_size is None else output_size
        self.down = nn.Linear(input_size, bottleneck)
        self.activation = activation()
        self.up = nn.Linear(bottleneck, output_size)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x, mask=None):
        """Adapts ``x``.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time, input_size]`` hidden states.
        mask : torch.Tensor, optional
            ``[batch, time]`` valid-token mask; unused (each token is adapted
            on its own), accepted so every adapter has the same signature.

        Returns
        -------
        torch.Tensor
            ``[batch, time, output_size]`` adapter output (the residual is added
            by the placement wrapper).
        """
        return self.up(self.activation(self.down(x)))
