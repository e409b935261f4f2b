"""Once-for-All on convolutions: elastic kernel size, depth and width (expand ratio) of a small MobileNet-style CNN."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from litmix.base import Example
from litmix.nas.evaluation import recalibrate_bn, subnet_accuracy
from litmix.nas.ofa import (
    constrained_evolution,
    progressive_choices,
    progressive_phase,
    ridge_fit,
    ridge_predict,
    sliced_batch_norm,
    transform_kernel,
)
from litmix.nas.sampling import make_generator
from litmix.nas.schedules import training_progress
from litmix.plugins._ofa_base import _OFAModule
from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

__all__ = ["OFAConvSupernetModule"]

#: A subnet: (kernel size per block, expand ratio per block, depth per stage); skipped blocks keep their entries.
Arch = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


class _ElasticBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d normalising the first ``x.shape[1]`` channels with the matching slice of its statistics."""

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        return sliced_batch_norm(self, x, c)


class _ElasticDepthwise(nn.Module):
    """Depthwise conv holding the largest kernel; smaller kernels via OFA's centre crop + transformation matrices."""

    def __init__(self, channels: int, kernel_sizes: Sequence[int], stride: int) -> None:
        super().__init__()
        sizes = sorted(kernel_sizes)
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(channels, 1, sizes[-1], sizes[-1]))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.matrices = nn.ParameterDict(
            {f"{big}to{small}": nn.Parameter(torch.eye(small * small)) for small, big in itertools.pairwise(sizes)}
        )

    def forward(self, x: Tensor, kernel_size: int) -> Tensor:
        c = x.shape[1]
        weight = transform_kernel(self.weight[:c], kernel_size, dict(self.matrices))
        return nn.functional.conv2d(x, weight, None, self.stride, kernel_size // 2, 1, c)


class _ElasticBlock(nn.Module):
    """MBConv: 1x1 expand -> BN -> ReLU -> depthwise k x k -> BN -> ReLU -> 1x1 project -> BN (+ identity)."""

    def __init__(self, cin: int, cout: int, stride: int, kernel_sizes: Sequence[int], max_expand: int) -> None:
        super().__init__()
        mid = cin * max_expand
        self.cin, self.cout, self.stride = cin, cout, stride
        self.expand = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = _ElasticBatchNorm2d(mid)
        self.depthwise = _ElasticDepthwise(mid, kernel_sizes, stride)
        self.bn2 = _ElasticBatchNorm2d(mid)
        self.project = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, kernel_size: int, expand: int) -> Tensor:
        mid = self.cin * expand
        h = torch.relu(self.bn1(nn.functional.conv2d(x, self.expand.weight[:mid])))
        h = torch.relu(self.bn2(self.depthwise(h, kernel_size)))
        h = self.bn3(nn.functional.conv2d(h, self.project.weight[:, :mid]))
        return h + x if self.stride == 1 and self.cin == self.cout else h

    def importance_order(self) -> Tensor:
        """Middle channels by decreasing L1 norm of their projection weights (OFA's channel sorting)."""
        return torch.argsort(self.project.weight.detach().abs().sum(dim=(0, 2, 3)), descending=True, stable=True)

    def channel_params(self) -> list[tuple[Tensor, int]]:
        """Every tensor indexed by the middle channels, with the dimension they are on."""
        out: list[tuple[Tensor, int]] = [(self.expand.weight, 0), (self.depthwise.weight, 0), (self.project.weight, 1)]
        for bn in (self.bn1, self.bn2):
            out += [(bn.weight, 0), (bn.bias, 0)]
            out += [(t, 0) for t in (bn.running_mean, bn.running_var) if t is not None]
        return out


@register(
    "plugin",
    "nas",
    paper="Once-for-All: Train One Network and Specialize it for Efficient Deployment (https://arxiv.org/abs/1908.09791)",
)
class OFAConvSupernetModule(_OFAModule):
    """Once-for-All on a small MobileNet-style CNN: elastic kernel size, depth and width, progressive shrinking.

    Cai et al., https://arxiv.org/abs/1908.09791. The network is a 3x3 stem and ``len(stage_channels)`` stages of
    up to ``max(depth_choices)`` MBConv blocks (1x1 expand, depthwise ``k x k``, 1x1 project, identity shortcut
    when the shape allows; the first block of a stage has the stage's stride), global average pooling and a
    linear head. A subnet (``Arch``) is ``(kernel sizes per block, expand ratios per block, depths per stage)``:

    - **elastic kernel**: the depthwise weights hold the largest kernel; a smaller kernel is the centre crop
      multiplied by a learned per-layer transformation matrix (``7to5`` ``[25, 25]``, ``5to3`` ``[9, 9]``,
      identity at init; :func:`litmix.nas.ofa.transform_kernel`);
    - **elastic depth**: stage ``s`` runs its first ``d_s`` blocks;
    - **elastic width**: block ``b`` uses the first ``cin * e_b`` middle channels; at the start of the width phase
      the middle channels are sorted by importance (L1 norm of the projection weights, OFA's
      ``re_organize_middle_weights``; the optimizer's moment estimates are permuted with them).

    **Progressive shrinking** (a pure function of ``global_step / estimated_stepping_batches``,
    :func:`litmix.nas.ofa.progressive_phase`): ``full`` (the largest network only) for ``phase_fracs[0]`` of the
    run, then ``kernel`` (every kernel size open), ``depth`` (depths opened in ``len(depth_choices) - 1`` stages
    as OFA's {4, 3} then {4, 3, 2}) and ``width`` (expand ratios opened likewise) for the rest. Every step trains
    the largest network (cross-entropy) and ``num_subnets`` subnets of the open space drawn from a generator
    seeded by ``(seed, global_step, k)`` (every DDP rank draws the same, a resumed run continues the sequence;
    with ``sandwich`` the last is the smallest open subnet), each with ``CE + kd_ratio * KD`` from the largest
    network's detached logits (in-place distillation), all summed into one Adam step (cosine schedule).

    BatchNorm running statistics mix every trained subnet: evaluate a subnet after :meth:`recalibrate` (OFA's BN
    re-calibration, :func:`litmix.nas.evaluation.recalibrate_bn`). :meth:`flops` counts multiply-accumulates of a
    subnet; :meth:`search` fits a ridge accuracy predictor on measured subnets and runs OFA's evolutionary search
    under a FLOPs budget. BatchNorm buffers are broadcast from rank 0 at every epoch end; only the sampled
    subnets' weights get gradients, so DDP needs ``find_unused_parameters=True``. Sharded strategies (FSDP,
    DeepSpeed) are refused in ``setup``: weight slicing and channel sorting need whole parameters.

    Args:
        in_channels: image channels (> 0).
        num_classes: classes (> 0).
        image_size: input height = width (> 0), used by :meth:`flops`.
        stem_channels: channels of the stem (> 0).
        stage_channels: output channels per stage (each > 0).
        stage_strides: stride of each stage's first block (each 1 or 2; same length as ``stage_channels``).
        kernel_sizes: elastic kernel sizes, odd, each >= 1 (the largest is stored).
        expand_ratios: elastic expand ratios (each >= 1).
        depth_choices: elastic depths per stage (each >= 1); the largest is the stored depth.
        phase_fracs: lengths of the ``full``, ``kernel`` and ``depth`` phases as fractions of the run (each >= 0,
            sum <= 1); the width phase takes the rest.
        num_subnets: subnets per step (>= 0).
        kd_ratio: weight of in-place distillation (>= 0).
        kd_temperature: distillation temperature (> 0).
        lr: Adam learning rate (> 0).
        seed: base seed of the subnet sequence (>= 0).
        sandwich: the last subnet of each step is the smallest open one.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for out-of-range arguments (even kernel sizes, mismatched stage lists, bad phase fractions).
        MisconfigurationException: in ``setup`` under a sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.testing import make_trainer
        >>> module, dm, _ = OFAConvSupernetModule.example()
        >>> make_trainer(max_steps=2).fit(module, datamodule=dm)
        >>> module.largest_arch(), module.smallest_arch()
        (((7, 7, 7, 7), (4, 4, 4, 4), (2, 2)), ((3, 3, 3, 3), (2, 2, 2, 2), (1, 1)))
        >>> module(torch.rand(3, 1, 8, 8), module.smallest_arch()).shape
        torch.Size([3, 10])
        >>> module.flops(module.smallest_arch()) < module.flops(module.largest_arch())
        True
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 8,
        stem_channels: int = 16,
        stage_channels: list[int] | None = None,
        stage_strides: list[int] | None = None,
        kernel_sizes: list[int] | None = None,
        expand_ratios: list[int] | None = None,
        depth_choices: list[int] | None = None,
        phase_fracs: list[float] | None = None,
        num_subnets: int = 2,
        kd_ratio: float = 1.0,
        kd_temperature: float = 1.0,
        lr: float = 3e-3,
        seed: int = 0,
        sandwich: bool = True,
    ) -> None:
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            check_int(name, arg, value, low=1)
        check_int(name, "image_size", image_size, low=1, high=4096)
        check_int(name, "stem_channels", stem_channels, low=1, high=4096)
        lists = {
            "stage_channels": stage_channels,
            "stage_strides": stage_strides,
            "kernel_sizes": kernel_sizes,
            "expand_ratios": expand_ratios,
            "depth_choices": depth_choices,
            "phase_fracs": phase_fracs,
        }
        for arg, given in lists.items():
            check_type(name, arg, given, (list, tuple), allow_none=True)
        channels = list(stage_channels) if stage_channels is not None else [16, 32]
        strides = (
            list(stage_strides) if stage_strides is not None else [1, 2][: len(channels)] + [2] * (len(channels) - 2)
        )
        kernels = list(kernel_sizes) if kernel_sizes is not None else [3, 5, 7]
        expands = list(expand_ratios) if expand_ratios is not None else [2, 3, 4]
        depths = list(depth_choices) if depth_choices is not None else [1, 2, 3]
        fracs = list(phase_fracs) if phase_fracs is not None else [0.25, 0.25, 0.25]
        if not channels:
            raise ValueError(f"{name}(stage_channels={stage_channels!r}): need at least one stage")
        for c in channels:
            check_int(name, "stage_channels", c, low=1, high=4096)
        for s in strides:
            check_int(name, "stage_strides", s, low=1, high=2)
        if len(strides) != len(channels):
            raise ValueError(f"{name}(stage_strides={stage_strides!r}): need one stride per stage ({len(channels)})")
        for k in kernels:
            check_int(name, "kernel_sizes", k, low=1, high=15)
        if not kernels or any(k % 2 == 0 for k in kernels):
            raise ValueError(f"{name}(kernel_sizes={kernel_sizes!r}): need odd kernel sizes")
        for e in expands:
            check_int(name, "expand_ratios", e, low=1, high=16)
        for d in depths:
            check_int(name, "depth_choices", d, low=1, high=16)
        if not expands or not depths:
            raise ValueError(f"{name}: expand_ratios and depth_choices must not be empty")
        for f in fracs:
            check_float(name, "phase_fracs", f, low=0.0, high=1.0)
        if len(fracs) != 3 or sum(fracs) > 1.0 + 1e-9:
            raise ValueError(f"{name}(phase_fracs={phase_fracs!r}): need 3 fractions (full, kernel, depth), sum <= 1")
        check_int(name, "num_subnets", num_subnets, low=0, high=999)
        self._check_training_args(name, kd_ratio, kd_temperature, lr, seed, sandwich)
        super().__init__()
        self.save_hyperparameters()
        self.kernel_sizes = sorted(set(kernels))
        self.expand_ratios = sorted(set(expands))
        self.depth_choices = sorted(set(depths))
        self.stage_channels, self.stage_strides, self.image_size = channels, strides, image_size
        self.phase_fracs = fracs
        self.num_classes, self.num_subnets, self.kd_ratio, self.kd_temperature = (
            num_classes,
            num_subnets,
            kd_ratio,
            kd_temperature,
        )
        self.lr, self.seed, self.sandwich = lr, seed, sandwich
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels), nn.ReLU()
        )
        self.stem_channels, self.in_channels = stem_channels, in_channels
        max_depth = max(self.depth_choices)
        blocks: list[nn.Module] = []
        cin = stem_channels
        for cout, stride in zip(channels, strides, strict=True):
            for i in range(max_depth):
                blocks.append(
                    _ElasticBlock(cin, cout, stride if i == 0 else 1, self.kernel_sizes, max(self.expand_ratios))
                )
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(channels[-1], num_classes)
        self.register_buffer("channels_sorted", torch.zeros((), dtype=torch.long))
        self.channels_sorted: Tensor
        self.phase = "full"
        self.phase_q = 0.0
        self.sampled_log: list[tuple[int, str, Arch]] = []  # (step, phase, arch); the last 10k

    # ------------------------------------------------------------------------------------------ examples
    @classmethod
    def example(cls) -> Example:
        """A 2-stage, depth-2 elastic CNN (kernels 3/5/7, expand 2/3/4) on 64 digits as 1x8x8 images."""
        from litmix.datamodules.digits import DigitsDataModule

        module = cls(stem_channels=8, stage_channels=[8, 16], depth_choices=[1, 2], lr=1e-2)
        return Example(module, DigitsDataModule(batch_size=16, flatten=False, train_size=64), [])

    _shard_why = "weight slicing, kernel transformation and channel sorting of the shared layers need whole parameters"
    _shard_instead = "DDPStrategy(find_unused_parameters=True)"

    # ------------------------------------------------------------------------------------------ the space
    @property
    def num_stages(self) -> int:
        """Stages of the network."""
        return len(self.stage_channels)

    @property
    def max_depth(self) -> int:
        """Blocks per stage of the largest network."""
        return max(self.depth_choices)

    def largest_arch(self) -> Arch:
        """Largest kernel, expand ratio and depth everywhere."""
        n = len(self.blocks)
        return (
            (max(self.kernel_sizes),) * n,
            (max(self.expand_ratios),) * n,
            (self.max_depth,) * self.num_stages,
        )

    def _smallest(self) -> Arch:
        return self.smallest_arch()

    def smallest_arch(self) -> Arch:
        """Smallest kernel, expand ratio and depth everywhere."""
        n = len(self.blocks)
        return (
            (min(self.kernel_sizes),) * n,
            (min(self.expand_ratios),) * n,
            (min(self.depth_choices),) * self.num_stages,
        )

    def check_arch(self, arch: Arch) -> Arch:
        """Validate ``arch`` and return it as tuples of ints.

        Raises:
            ValueError: for wrong lengths or choices outside the space.
        """
        ks, es, ds = (tuple(int(v) for v in part) for part in arch)
        n = len(self.blocks)
        if (
            len(ks) != n
            or len(es) != n
            or len(ds) != self.num_stages
            or any(k not in self.kernel_sizes for k in ks)
            or any(e not in self.expand_ratios for e in es)
            or any(d not in self.depth_choices for d in ds)
        ):
            raise ValueError(
                f"{type(self).__name__}: arch {arch} is not in the space ({n} kernel sizes from {self.kernel_sizes}, "
                f"{n} expand ratios from {self.expand_ratios}, {self.num_stages} depths from {self.depth_choices})"
            )
        return ks, es, ds

    def open_space(self, progress: float) -> tuple[str, list[int], list[int], list[int]]:
        """``(phase, kernel sizes, expand ratios, depths)`` open at training ``progress`` (progressive shrinking)."""
        phase, q = progressive_phase(progress, self.phase_fracs)
        kmax, emax, dmax = [max(self.kernel_sizes)], [max(self.expand_ratios)], [self.max_depth]
        if phase == "full":
            return phase, kmax, emax, dmax
        ks = list(self.kernel_sizes)
        if phase == "kernel":
            return phase, ks, emax, dmax
        if phase == "depth":
            return phase, ks, emax, progressive_choices(self.depth_choices, q)
        return phase, ks, progressive_choices(self.expand_ratios, q), list(self.depth_choices)

    def random_arch(
        self,
        generator: torch.Generator,
        kernel_sizes: Sequence[int] | None = None,
        expand_ratios: Sequence[int] | None = None,
        depths: Sequence[int] | None = None,
    ) -> Arch:
        """A uniformly random subnet of the given choices (default the whole space)."""
        ks_c = list(kernel_sizes or self.kernel_sizes)
        es_c = list(expand_ratios or self.expand_ratios)
        ds_c = list(depths or self.depth_choices)
        n = len(self.blocks)
        ks = tuple(ks_c[i] for i in torch.randint(len(ks_c), (n,), generator=generator).tolist())
        es = tuple(es_c[i] for i in torch.randint(len(es_c), (n,), generator=generator).tolist())
        ds = tuple(ds_c[i] for i in torch.randint(len(ds_c), (self.num_stages,), generator=generator).tolist())
        return ks, es, ds

    def sample_arch(self, step: int, k: int = 0, progress: float = 1.0) -> Arch:
        """Subnet ``k`` of ``step`` within the space open at ``progress`` (deterministic in ``(seed, step, k)``)."""
        _, ks, es, ds = self.open_space(progress)
        if self.sandwich and k == self.num_subnets - 1:
            n = len(self.blocks)
            return (min(ks),) * n, (min(es),) * n, (min(ds),) * self.num_stages
        return self.random_arch(make_generator(self.seed, step, k), ks, es, ds)

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, x: Tensor, arch: Arch | None = None) -> Tensor:
        """Logits of subnet ``arch`` (the largest network when None)."""
        ks, es, ds = arch if arch is not None else self.largest_arch()
        h = self.stem(x)
        for s in range(self.num_stages):
            for i in range(ds[s]):
                b = s * self.max_depth + i
                block = self.blocks[b]
                assert isinstance(block, _ElasticBlock)
                h = block(h, ks[b], es[b])
        return self.head(h.mean(dim=(2, 3)))

    def flops(self, arch: Arch | None = None) -> int:
        """Multiply-accumulates of subnet ``arch`` for one ``image_size x image_size`` input (convs and head)."""
        ks, es, ds = self.check_arch(arch if arch is not None else self.largest_arch())
        size = self.image_size
        total = size * size * self.in_channels * self.stem_channels * 9
        for s in range(self.num_stages):
            for i in range(ds[s]):
                b = s * self.max_depth + i
                block = self.blocks[b]
                assert isinstance(block, _ElasticBlock)
                mid = block.cin * es[b]
                total += size * size * block.cin * mid  # expand at the input resolution
                size = (size - 1) // block.stride + 1
                total += size * size * mid * ks[b] * ks[b] + size * size * mid * block.cout
        return total + self.stage_channels[-1] * self.num_classes

    # ------------------------------------------------------------------------------------------ training
    def sort_channels(self) -> None:
        """Sort every block's middle channels by importance (and the optimizer's per-parameter state with them)."""
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        with torch.no_grad():
            for block in self.blocks:
                assert isinstance(block, _ElasticBlock)
                order = block.importance_order()
                for tensor, dim in block.channel_params():
                    tensor.copy_(tensor.index_select(dim, order.to(tensor.device)))
                    for opt in optimizers:
                        state = opt.state.get(tensor) if isinstance(tensor, nn.Parameter) else None
                        for value in (state or {}).values():
                            if isinstance(value, Tensor) and value.shape == tensor.shape:
                                value.copy_(value.index_select(dim, order.to(value.device)))
        self.channels_sorted.fill_(1)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Set the phase from the training progress; sort the channels when the width phase starts."""
        self.phase, _, _, _ = self.open_space(training_progress(self.trainer, type(self).__name__))
        if self.phase == "width" and int(self.channels_sorted) == 0:
            self.sort_channels()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Largest network + ``num_subnets`` step-seeded subnets of the open space, in-place KD, one summed loss."""
        x, y, full_logits, loss = self._full_loss(batch)
        progress = training_progress(self.trainer, type(self).__name__)
        step = self.global_step
        phase = self.open_space(progress)[0]
        if phase != "full" and self.num_subnets > 0:
            teacher = self._kd_teacher(full_logits)
            for k in range(self.num_subnets):
                arch = self.sample_arch(step, k, progress)
                self.sampled_log.append((step, phase, arch))
                loss = loss + self._subnet_loss(x, y, arch, teacher) / self.num_subnets
        else:
            self.sampled_log.append((step, phase, self.largest_arch()))
        del self.sampled_log[:-10_000]
        self.log("ofa/loss", loss)
        return loss

    # ------------------------------------------------------------------------------------------ evaluation
    def recalibrate(self, arch: Arch | None, dataloader: Iterable[Any], num_batches: int = 10) -> int:
        """OFA's BN re-calibration for subnet ``arch`` on ``num_batches`` training batches (overwrites the stats)."""
        return recalibrate_bn(self, dataloader, num_batches, forward=lambda x: self(x, arch))

    def subnet_accuracy(self, arch: Arch | None, dataloader: Iterable[Any]) -> float:
        """Accuracy of subnet ``arch`` with the current running BN statistics (eval mode)."""
        return subnet_accuracy(self, dataloader, forward=lambda x: self(x, arch))

    def evaluate(
        self, arch: Arch | None, calib: Iterable[Any], dataloader: Iterable[Any], num_batches: int = 10
    ) -> float:
        """Re-calibrate BN for ``arch`` on ``calib``, then its accuracy on ``dataloader`` (BN statistics restored)."""
        saved = {k: v.clone() for k, v in self.state_dict().items() if "running" in k or "num_batches" in k}
        try:
            self.recalibrate(arch, calib, num_batches)
            return self.subnet_accuracy(arch, dataloader)
        finally:
            state = self.state_dict()
            with torch.no_grad():
                for k, v in saved.items():
                    state[k].copy_(v)

    def encode(self, arch: Arch) -> Tensor:
        """One-hot features of ``arch``: kernel and expand ratio of every block that runs, and every stage depth."""
        ks, es, ds = self.check_arch(arch)
        feats: list[float] = []
        for s in range(self.num_stages):
            for i in range(self.max_depth):
                b = s * self.max_depth + i
                on = i < ds[s]
                feats += [float(on and ks[b] == k) for k in self.kernel_sizes]
                feats += [float(on and es[b] == e) for e in self.expand_ratios]
            feats += [float(ds[s] == d) for d in self.depth_choices]
        return torch.tensor(feats)

    def mutate(self, arch: Arch, generator: torch.Generator, prob: float = 0.1) -> Arch:
        """Re-draw each choice of ``arch`` with probability ``prob`` (OFA's mutation)."""
        fresh = self.random_arch(generator)
        parts = []
        for old, new in zip(arch, fresh, strict=True):
            flips = torch.rand(len(old), generator=generator) < prob
            parts.append(tuple(n if f else o for o, n, f in zip(old, new, flips.tolist(), strict=True)))
        return parts[0], parts[1], parts[2]

    def crossover(self, a: Arch, b: Arch, generator: torch.Generator) -> Arch:
        """Each choice from ``a`` or ``b`` with probability 1/2 (OFA's crossover)."""
        parts = []
        for pa, pb in zip(a, b, strict=True):
            take = torch.rand(len(pa), generator=generator) < 0.5
            parts.append(tuple(x if t else y for x, y, t in zip(pa, pb, take.tolist(), strict=True)))
        return parts[0], parts[1], parts[2]

    def search(
        self,
        budget: float,
        calib: Iterable[Any],
        dataloader: Iterable[Any],
        num_measured: int = 40,
        population: int = 64,
        generations: int = 20,
        num_batches: int = 5,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Best subnet within ``budget`` FLOPs: accuracy predictor on measured subnets + evolutionary search.

        ``num_measured`` random subnets are evaluated (BN re-calibrated on ``num_batches`` batches of ``calib``,
        accuracy on ``dataloader``), a ridge regression on :meth:`encode` predicts accuracy
        (:func:`litmix.nas.ofa.ridge_fit`), and :func:`litmix.nas.ofa.constrained_evolution` maximises the
        prediction under ``flops(arch) <= budget``.

        Returns:
            ``{"arch", "flops", "predicted", "measured": [(arch, accuracy)], "predictor": weights}``.

        Raises:
            ValueError: for a non-positive ``budget`` or ``num_measured < 2``, or when no subnet fits the budget.
        """
        if not budget > 0 or num_measured < 2:
            raise ValueError(
                f"search(budget={budget}, num_measured={num_measured}): need budget > 0, num_measured >= 2"
            )
        calib, dataloader = list(calib), list(dataloader)
        gen = torch.Generator().manual_seed(seed)
        archs = [self.random_arch(gen) for _ in range(num_measured)]
        accs = [self.evaluate(a, calib, dataloader, num_batches) for a in archs]
        weights = ridge_fit(torch.stack([self.encode(a) for a in archs]), torch.tensor(accs), l2=1e-1)

        def score(cands: list[Arch]) -> Tensor:
            return ridge_predict(weights, torch.stack([self.encode(a) for a in cands]))

        best, predicted = constrained_evolution(
            self.random_arch, self.mutate, self.crossover, self.flops, score, budget, population, generations, seed=seed
        )
        return {
            "arch": best,
            "flops": self.flops(best),
            "predicted": predicted,
            "measured": list(zip(archs, accs, strict=True)),
            "predictor": weights,
        }
