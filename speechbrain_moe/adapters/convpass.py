"""Convpass (Jie & Deng, 2022): a bottleneck adapter with a convolution inside.

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn

from speechbrain_moe.checks import check_positive


class Convpass(nn.Module):
    """Down-project, convolve over the real token grid, activate, up-project.

    Tokens are laid out on the grid the backbone made them from: AST's
    ``frequency x time`` patch grid (frequency-major, as ASTModel flattens
    it), or a single row of frames for 1-D encoders (``grid_height=1``). The
    ``num_prefix_tokens`` special tokens (AST's CLS and distillation tokens)
    skip the convolution. Padded tokens are zeroed before the convolution, so
    they act like the convolution's own zero padding and never leak into the
    valid tokens.

    Arguments
    ---------
    input_size : int
        Size of the incoming tokens.
    bottleneck : int
        Channels of the bottleneck (and of the convolution).
    kernel_size : int
        Odd size of the square (2-D grid) or 1-D (single row) kernel.
    num_prefix_tokens : int
        Leading special tokens that bypass the convolution.
    grid_height : int
        Rows of the token grid (AST: frequency patches, 12 for 128 mel bins).
    output_size : int, optional
        Output size (default ``input_size``).
    activation : type
        Activation class.

    Example
    -------
    >>> adapter = Convpass(16, bottleneck=4, num_prefix_tokens=2, grid_height=3)
    >>> x = torch.randn(2, 2 + 3 * 5, 16)  # 2 special tokens + a 3 x 5 grid
    >>> adapter(x).shape
    torch.Size([2, 17, 16])
    """

    def __init__(
        self,
        input_size,
        bottleneck=8,
        kernel_size=3,
        num_prefix_tokens=0,
        grid_height=1,
        output_size=None,
        activation=nn.GELU,
    ):
        super().__init__()
        check_positive(
            "Convpass",
            input_size=input_size,
            bottleneck=bottleneck,
            kernel_size=kernel_size,
            grid_height=grid_height,
        )
        if kernel_size % 2 == 0:
            raise ValueError(
                f"Convpass: kernel_size must be odd to keep the grid's size, got "
                f"{kernel_size}. Use 3 (the paper's value) or another odd size."
            )
        output_size = input_size if output_size is None else output_size
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_height = grid_height
        self.down = nn.Linear(input_size, bottleneck)
        kernel = (kernel_size, kernel_size) if grid_height > 1 else (1, kernel_size)
        padding = (kernel[0] // 2, kernel[1] // 2)
        self.conv = nn.Conv2d(bottleneck, bottleneck, kernel, padding=padding)
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
            ``[batch, time, input_size]`` hidden states: ``num_prefix_tokens``
            special tokens, then the patch grid row by row.
        mask : torch.Tensor, optional
            ``[batch, time]`` valid-token mask; padded tokens are zeroed before
            the convolution so they do not leak into their neighbours.

        Returns
        -------
        torch.Tensor
            ``[batch, time, output_size]`` adapter output.
        """
        batch, length, _ = x.shape
        prefix, height = self.num_prefix_tokens, self.grid_height
        grid_tokens = length - prefix
        if grid_tokens <= 0 or grid_tokens % height:
            raise ValueError(
                f"Convpass: {length} tokens do not form {prefix} special tokens plus "
                f"a grid of {height} rows. Set num_prefix_tokens and grid_height to "
                "match the backbone (the backbone's petl_targets provides them)."
            )
        hidden = self.activation(self.down(x))
        if mask is not None:
            hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        special, grid = hidden[:, :prefix], hidden[:, prefix:]
        grid = grid.reshape(batch, height, grid_tokens // height, -1).permute(
            0, 3, 1, 2
        )
        grid = self.activation(self.conv(grid))
        grid = grid.permute(0, 2, 3, 1).reshape(batch, grid_tokens, -1)
        return self.up(torch.cat([special, grid], dim=1))
