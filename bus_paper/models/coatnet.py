"""The CoAtNet encoder (stages S0-S4) built from timm's CoAtNet/MaxxViT blocks.

Stage naming follows paper 000: S0 is the convolutional stem (stride 2), S1-S2 are MBConv stages,
S3-S4 are transformer stages with 2D relative attention. timm calls S0 ``stem`` and S1-S4
``stages[0..3]``; the output strides are 2, 4, 8, 16, 32.

Three changes to timm's model, each explained where it is made:

* the transformer stages down-sample with 2x2 max-pooling (paper: "max-pooling processes with a
  stride of 2 inside the self-attention submodules"; timm's default is average pooling);
* the relative-position bias accepts any map up to the size the model was built for, so one encoder
  (one set of weights) serves every input scale (:class:`ScaleFreeRelPosBias`);
* optional dilation of the depthwise convolutions of S1-S2 (:func:`dilate_stage`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import RelPosBias
from timm.models.maxxvit import MaxxVit, MbConvBlock, TransformerBlock2d, model_cfgs
from torch import nn

# Our variant names -> timm's CoAtNet configs (widths per stage S1-S4, depths):
#   coatnet_nano  (64, 128, 256, 512), depths (3, 4, 6, 3)  14.6 M params   timm-specific
#   coatnet_0     (96, 192, 384, 768), depths (2, 3, 5, 2)  23.7 M params   CoAtNet paper's "0"
# (timm's coatnet_pico_rw has fewer blocks but strides in its depthwise convolutions, which makes
# it slower than nano on CPU, so it is not offered.)
VARIANTS: dict[str, str] = {
    "coatnet_nano": "coatnet_nano_rw",
    "coatnet_0": "coatnet_0",
}
STRIDE = 32          # total down-sampling of S0-S4: input sides must be multiples of this
DILATION_RATE = 2    # rate of the dilated depthwise convolutions (see dilate_stage)


class ScaleFreeRelPosBias(nn.Module):
    """2D relative-position bias that serves any map size up to the one it was built for.

    timm's ``RelPosBias`` holds one learned bias per relative offset (dy, dx) with
    |dy| < H, |dx| < W for a fixed H x W map, so its table is tied to the input size. A smaller map
    only needs a subset of those offsets, and the bias of an offset means the same thing at every
    scale (it is a function of the offset, as in CoAtNet's eq. 3), so we index the centre of the
    table instead of keeping one table per scale. This is what lets the multiscale input share one
    encoder. The parameter keeps timm's name, so state dicts stay compatible with timm's.
    """

    def __init__(self, table: nn.Parameter, window_size: tuple[int, int]) -> None:
        super().__init__()
        self.relative_position_bias_table = table          # [(2H-1)(2W-1), heads]
        self.window_size = tuple(window_size)
        self.feat_size = self.window_size                  # set by the encoder before each pass
        self._index: dict[tuple, torch.Tensor] = {}        # (h, w, device) -> flat table index

    def _table_index(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (h, w, device)
        if key not in self._index:
            H, W = self.window_size
            if h > H or w > W:
                raise ValueError(f"attention map {h}x{w} is larger than the {H}x{W} the model was "
                                 "built for; build the model for the largest input side")
            ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                                    indexing="ij")
            coords = torch.stack([ys.flatten(), xs.flatten()])          # 2, h*w
            rel = coords[:, :, None] - coords[:, None, :]               # 2, h*w, h*w
            self._index[key] = ((rel[0] + H - 1) * (2 * W - 1) + rel[1] + W - 1).flatten()
        return self._index[key]

    def get_bias(self) -> torch.Tensor:
        """Bias [1, heads, h*w, h*w] for the current ``feat_size`` (what timm's attention calls)."""
        h, w = self.feat_size
        table = self.relative_position_bias_table
        bias = table[self._table_index(h, w, table.device)].view(h * w, h * w, -1)
        return bias.permute(2, 0, 1).unsqueeze(0).contiguous()

    def forward(self, attn: torch.Tensor,
                shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
        return attn + self.get_bias()


class PolyphaseDilatedConv2d(nn.Conv2d):
    """Depthwise convolution with dilation ``r``, computed on the ``r x r`` polyphase components.

    A dilated k x k convolution only ever combines pixels of the same phase (y mod r, x mod r), so
    it equals an undilated convolution on each phase image (``pixel_unshuffle``), re-interleaved
    (``pixel_shuffle``) -- the "space-to-batch" trick TensorFlow uses for atrous convolution. Same
    result, but it runs oneDNN's fast undilated depthwise kernels: on this CPU the dilated backward
    pass is 2.5-6x slower than the undilated one, the polyphase version ~2x.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.dilation[0]
        if x.shape[-2] % r or x.shape[-1] % r:
            return super().forward(x)     # phases of unequal size: the plain dilated kernel
        n = r * r
        y = F.conv2d(F.pixel_unshuffle(x, r), self.weight.repeat_interleave(n, 0),
                     None if self.bias is None else self.bias.repeat_interleave(n),
                     padding=self.padding[0] // r, groups=self.groups * n)
        return F.pixel_shuffle(y, r)


def dilate_stage(stage: nn.Module, rate: int = DILATION_RATE) -> int:
    """Dilate the stride-1 depthwise 3x3 convolutions of an MBConv stage in place; returns how many.

    Why S1-S2 and not S3-S4 (paper 000 is ambiguous; this is our reading). The paper says the
    "convolutional stages" down-sample by 2, 4 and 8 (S0, S1, S2) and that dilated convolutions in
    "the final two stages" widen the receptive field "without further reducing spatial resolution".
    It also says S3 and S4 are transformer stages that keep their stride-2 max-pooling and end in a
    small (8x8) bottleneck. S3-S4 contain no spatial convolution to dilate (their attention is
    already global and their FFN is 1x1), and removing their pooling (DeepLab-style output stride 8)
    would contradict that last statement and multiply their token counts by 4 (S3) and 16 (S4),
    with quadratic attention cost on top. So we dilate the last two *convolutional* stages, S1 and
    S2: their depthwise 3x3 kernels see a 5x5 neighbourhood at the same resolution and the same
    parameter count, and the maps they produce are exactly the high-resolution maps that the
    top-down fusion keeps. Strided convolutions (the first block of a stage in some variants) stay
    undilated, as in DeepLab, so that no input pixel is skipped. The weights keep their names and
    shapes, so a state dict loads with or without dilation.
    """
    count = 0
    for block in stage.blocks:
        if not isinstance(block, MbConvBlock):
            raise TypeError(f"dilation expects MBConv blocks, found {type(block).__name__}")
        conv = block.conv2_kxk
        if type(conv) is not nn.Conv2d:       # timm's Conv2dSame pads dynamically; not used here
            raise TypeError(f"cannot dilate {type(conv).__name__}")
        if conv.groups != conv.in_channels or conv.in_channels != conv.out_channels:
            raise TypeError("dilation is implemented for depthwise convolutions only")
        if conv.stride == (1, 1):
            k = conv.kernel_size[0]
            dilated = PolyphaseDilatedConv2d(
                conv.in_channels, conv.out_channels, k, padding=rate * (k - 1) // 2,
                dilation=rate, groups=conv.groups, bias=conv.bias is not None,
                device=conv.weight.device, dtype=conv.weight.dtype)
            dilated.load_state_dict(conv.state_dict())
            block.conv2_kxk = dilated
            count += 1
    return count


class CoAtNetEncoder(nn.Module):
    """Stages S0..S(max out_stages) of a timm CoAtNet; ``forward`` returns the ``out_stages`` maps.

    Args:
        variant: one of :data:`VARIANTS`.
        in_chans: input channels (1 for grayscale ultrasound).
        img_size: the largest input side served (sizes the relative-position tables).
        out_stages: increasing stage indices in 0..4 (0 = S0 stem, 4 = S4).
        dilation: dilate the depthwise convolutions of S1-S2 (:func:`dilate_stage`).
        drop_path_rate: stochastic depth, as in timm.
    """

    def __init__(self, variant: str, in_chans: int, img_size: int, out_stages: tuple[int, ...],
                 dilation: bool = True, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown model variant {variant!r}; known: {', '.join(VARIANTS)}")
        if img_size % STRIDE or img_size < STRIDE:
            raise ValueError(f"img_size {img_size} must be a multiple of {STRIDE}")
        if not out_stages or list(out_stages) != sorted(set(out_stages)) \
                or not all(0 <= s <= 4 for s in out_stages):
            raise ValueError(f"out_stages {out_stages} must be increasing indices in 0..4")
        net = MaxxVit(model_cfgs[VARIANTS[variant]], img_size=img_size, in_chans=in_chans,
                      num_classes=0, drop_path_rate=drop_path_rate, transformer_pool_type="max2")
        self.img_size = img_size
        self.out_stages = tuple(out_stages)
        self.channels = [info["num_chs"] for info in net.feature_info]   # S0..S4
        self.stem = net.stem
        # Stages after the deepest one we tap would be unused parameters (and break DDP): drop them.
        self.stages = net.stages[:max(out_stages)]
        self._rel_pos: list[tuple[int, ScaleFreeRelPosBias]] = []        # (stage index, module)
        for i, stage in enumerate(self.stages):
            for block in stage.blocks:
                if isinstance(block, TransformerBlock2d):
                    old = block.attn.rel_pos
                    if not isinstance(old, RelPosBias):
                        raise TypeError(f"{variant}: unsupported relative position {type(old)}")
                    block.attn.rel_pos = ScaleFreeRelPosBias(old.relative_position_bias_table,
                                                             old.window_size)
                    self._rel_pos.append((i + 1, block.attn.rel_pos))
        if dilation:
            for stage in self.stages[:2]:       # S1, S2
                dilate_stage(stage)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        if h % STRIDE or w % STRIDE or h > self.img_size or w > self.img_size:
            raise ValueError(f"input {h}x{w}: sides must be multiples of {STRIDE} and at most "
                             f"{self.img_size} (the size this encoder was built for)")
        for stage_idx, rel_pos in self._rel_pos:   # stage k works at stride 2**(k+1)
            rel_pos.feat_size = (h >> (stage_idx + 1), w >> (stage_idx + 1))
        x = self.stem(x)
        maps = [x]
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return [maps[s] for s in self.out_stages]
