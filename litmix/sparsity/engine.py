"""The mask engine shared by every litmix pruner: one place that owns masks.

:class:`MaskEngine` holds one bool mask per pruned parameter as a *non-persistent* buffer ``<leaf>_mask`` on the
module owning it (so the module's ``state_dict`` stays loadable strictly into the user's class), masks gradients
before the optimizer step (no forward hooks), re-masks weights after it where the optimizer needs it, masks the
optimizer state, gives regrown coordinates fresh optimizer state, checkpoints the masks at one bit per weight,
broadcasts them from rank 0 and exports the sparse model.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from litmix.functional.sparsity import (
    MASK_SUFFIX,
    SECOND_MOMENTS,
    ParameterSelection,
    canonical_parameter_names,
    default_parameter_selection,
    find_masks,
    keeps_pruned_weights_zero,
    mask_optimizer_state,
    pack_mask,
    reset_optimizer_state,
    unpack_mask,
)
from litmix.registry import register

__all__ = ["MaskEngine"]

_ZHU_GUPTA = "To prune, or not to prune (https://arxiv.org/abs/1710.01878)"


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf


def _optimizers(optimizers: Any) -> list[torch.optim.Optimizer]:
    if optimizers is None:
        return []
    if isinstance(optimizers, torch.optim.Optimizer):
        return [optimizers]
    return list(optimizers)


@register("utility", "sparsity", paper=_ZHU_GUPTA, module="litmix.sparsity")
class MaskEngine:
    """Owns the masks of a pruned module: apply, gradient masking, optimizer state, checkpoints, DDP, export.

    The rules every litmix pruner follows (gradual, one-shot, dynamic, lottery, polarization):

    * **Masks** are bool tensors (``True`` = kept, 1 byte per weight) registered as non-persistent buffers
      ``<leaf>_mask`` on the module owning each parameter (``net.0.weight`` -> ``net.0.weight_mask``): they follow
      ``.to(device)`` and stay out of the module's ``state_dict``. :meth:`state_dict` stores them at one bit per
      weight for the owning callback's checkpoint state; :meth:`load_state_dict` restores them exactly.
    * **No forward hooks.** :meth:`mask_gradients` zeroes the gradients of pruned weights (call it in
      ``on_before_optimizer_step``: after AMP unscaling and gradient accumulation, before clipping);
      :meth:`after_step` re-masks the weights after the optimizer step when the optimizer is not one of
      :data:`~litmix.functional.sparsity.EXACT_OPTIMIZERS` (for those a zero gradient and zero first moment give an
      exactly zero update) or when :attr:`remask_weights` is set.
    * **Optimizer state.** :meth:`update` (new masks) zeroes first moments / momentum at pruned coordinates and
      resets the whole state (second moments included) of regrown coordinates (:meth:`reset_state`). Second moments
      at pruned coordinates are left alone: they only scale an update that is already zero.
    * **DDP.** Decide masks on rank 0 and :meth:`broadcast` them (or pass ``strategy`` to :meth:`update`).

    Selection functions (pure tensors, :mod:`litmix.functional.sparsity`): ``magnitude_masks`` (unstructured,
    global or per layer), ``nm_masks`` (N:M, 2:4 included), ``structured_masks`` (output channels / rows),
    ``random_masks``, ``erk_densities``, ``prune_and_grow``.

    Export: :meth:`dense_state_dict` (weights with zeros), :meth:`to_sparse_state_dict` (bitmask + kept values,
    or CSR; :meth:`nbytes` measures it, :meth:`from_sparse_state_dict` restores a dense ``state_dict``),
    :meth:`to_semi_structured` (2:4 tensors for NVIDIA sparse tensor cores, CUDA compute capability >= 8.0 only),
    :meth:`make_permanent` (drops the buffers).

    Args:
        owner: name used in messages (the pruner's class name).

    Raises:
        ValueError: for masks of the wrong shape or unknown parameter names (see each method).

    Example:
        >>> from litmix.functional.sparsity import magnitude_masks
        >>> net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> engine = MaskEngine()
        >>> weights = {"0.weight": net[0].weight, "2.weight": net[2].weight}
        >>> engine.attach(net, magnitude_masks(weights, 0.5, "layer"))
        >>> engine.apply()
        >>> engine.sparsity_report()
        {'0.weight': 0.5, '2.weight': 0.5, 'global': 0.5}
        >>> sorted(k for k in net.state_dict() if k.endswith("_mask"))  # strict loading into nn.Sequential works
        []
        >>> opt = torch.optim.Adam(net.parameters(), lr=0.1)
        >>> net(torch.randn(3, 8)).sum().backward()
        >>> engine.mask_gradients(); opt.step(); engine.after_step(opt)
        >>> int((net[0].weight[~net[0].weight_mask] != 0).sum())
        0
        >>> restored = MaskEngine(); restored.load_state_dict(engine.state_dict())
        >>> torch.equal(restored.masks["0.weight"], net[0].weight_mask)
        True
    """

    def __init__(self, owner: str = "MaskEngine") -> None:
        if not isinstance(owner, str) or not owner:
            raise TypeError(f"MaskEngine(owner={owner!r}): owner must be a non-empty str")
        self.owner = owner
        #: parameter name -> bool mask (the module's buffer once attached; a plain tensor before)
        self.masks: dict[str, Tensor] = {}
        #: also re-mask the weights after every optimizer step (set when something else writes the weights)
        self.remask_weights: bool = False
        self._params: dict[str, nn.Parameter] = {}
        self._fast: list[tuple[nn.Parameter, Tensor]] = []  # (param, mask viewed as uint8: mul_ by it is fast)

    # ------------------------------------------------------------------ attaching
    @property
    def names(self) -> list[str]:
        """The masked parameters' names, in order."""
        return list(self.masks)

    @property
    def attached(self) -> bool:
        """Whether the engine holds references to a module's parameters."""
        return bool(self._params)

    def attach(
        self,
        module: nn.Module,
        masks: Mapping[str, Tensor | None] | Sequence[str],
        *,
        keep_existing: bool = True,
    ) -> None:
        """Register the masks as non-persistent ``<leaf>_mask`` buffers on ``module`` and take the parameters.

        Args:
            module: the module owning the parameters.
            masks: parameter name -> bool mask (copied into the buffer), or ``None`` / a list of names: keep the
                module's existing mask buffer when ``keep_existing`` (e.g. from an earlier fit), else all ones.
            keep_existing: reuse an existing bool buffer of the right shape (a floor for the new masks).

        Raises:
            ValueError: for an unknown parameter name or a mask whose shape differs from the parameter's.
        """
        entries: Mapping[str, Tensor | None] = (
            dict.fromkeys(masks) if not isinstance(masks, Mapping) else masks  # type: ignore[arg-type]
        )
        params = dict(module.named_parameters())
        unknown = [n for n in entries if n not in params]
        if unknown:
            raise ValueError(f"{self.owner}: unknown parameters {unknown}; available: {sorted(params)}")
        self.masks, self._params = {}, {}
        for name, given in entries.items():
            p = params[name]
            owner, leaf = _owner(module, name)
            buf = owner._buffers.get(leaf + MASK_SUFFIX)
            if not keep_existing or buf is None or buf.shape != p.shape or buf.dtype != torch.bool:
                buf = torch.ones_like(p, dtype=torch.bool)
            if given is not None:
                if tuple(given.shape) != tuple(p.shape):
                    raise ValueError(
                        f"{self.owner}: the mask for {name!r} has shape {tuple(given.shape)}, the parameter "
                        f"{tuple(p.shape)}"
                    )
                buf.copy_(given.to(buf.device, torch.bool))
            # non-persistent: follows .to(device), stays out of the module's state_dict (strict loading works)
            owner.register_buffer(leaf + MASK_SUFFIX, buf, persistent=False)
            self.masks[name] = buf
            self._params[name] = p
        self.refresh()

    def select(self, module: nn.Module, parameter_names: Sequence[str] | None = None) -> ParameterSelection:
        """Canonical names of the parameters to mask and the aliases mapped or left out (alias -> why).

        ``None``: the default selection (:func:`~litmix.functional.sparsity.default_parameter_selection`: weights of
        ``nn.Linear``/``nn.Conv*``/``nn.Bilinear``/HF ``Conv1D``/PyG ``Linear``; tied embeddings left out).

        Raises:
            ValueError: for unknown names (listing the available ones) or a module without prunable layers
                (listing the candidate parameters).
        """
        cls = self.owner
        canonical = canonical_parameter_names(module)
        if parameter_names is None:
            names, excluded = default_parameter_selection(module)
            if not names:
                candidates = [n for n, p in module.named_parameters() if p.dim() >= 2]
                raise ValueError(
                    f"{cls}(parameter_names=None): found no prunable layer (nn.Linear, nn.Conv*, nn.Bilinear, "
                    f"HF Conv1D, PyG Linear) in {type(module).__name__}; pass parameter_names, e.g. from the "
                    f"candidate parameters with >= 2 dimensions: {candidates or sorted(canonical)}"
                    + (f" (left out as tied: {excluded})" if excluded else "")
                )
            return ParameterSelection(names, excluded)
        unknown = [n for n in parameter_names if n not in canonical]
        if unknown:
            raise ValueError(
                f"{cls}(parameter_names=...): unknown parameters {unknown}; available: {sorted(canonical)}"
            )
        aliases = {n: f"alias of {canonical[n]}" for n in parameter_names if canonical[n] != n}
        return ParameterSelection(list(dict.fromkeys(canonical[n] for n in parameter_names)), aliases)

    def refresh(self, module: nn.Module | None = None) -> None:
        """Re-take the parameters and masks (after ``module.to(device)`` or a strategy wrapped the module)."""
        if module is not None:
            params = dict(module.named_parameters())
            self._params = {n: params[n] for n in self.masks}
            for n in self.masks:
                owner, leaf = _owner(module, n)
                buf = owner._buffers.get(leaf + MASK_SUFFIX)
                if buf is not None:
                    self.masks[n] = buf
        self._fast = [(self._params[n], m.view(torch.uint8)) for n, m in self.masks.items() if n in self._params]

    def detach(self) -> None:
        """Drop the references to the parameters (the masks stay, for :meth:`state_dict`)."""
        self._params, self._fast = {}, []

    def parameters(self) -> list[tuple[str, nn.Parameter, Tensor]]:
        """``(name, parameter, mask)`` of every masked parameter (attached engines only)."""
        return [(n, self._params[n], m) for n, m in self.masks.items() if n in self._params]

    # ------------------------------------------------------------------ training-time engine
    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights (one in-place multiply per masked tensor)."""
        for p, mask in self._fast:
            p.mul_(mask)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights (call in ``on_before_optimizer_step``)."""
        for p, mask in self._fast:
            grad = p.grad
            if grad is not None:
                grad.mul_(mask)

    def needs_remask(self, optimizers: Any) -> bool:
        """Whether the weights must be re-masked after each step (an optimizer not known to keep zeros at zero)."""
        return self.remask_weights or any(not keeps_pruned_weights_zero(o) for o in _optimizers(optimizers))

    @torch.no_grad()
    def after_step(self, optimizers: Any = None, *, mask_state: bool = False) -> None:
        """After the optimizer step: re-mask the weights if the optimizer needs it; optionally mask its state.

        Args:
            optimizers: the optimizer(s) that stepped.
            mask_state: also zero first moments / momentum at pruned coordinates (only needed when something
                else wrote them; :meth:`update` does it whenever the masks change).
        """
        if self.needs_remask(optimizers):
            self.apply()
        if mask_state:
            self.mask_optimizer_state(optimizers)

    @torch.no_grad()
    def mask_optimizer_state(self, optimizers: Any, *, second_moments: bool = False) -> None:
        """Zero every per-coordinate state tensor at pruned coordinates (second moments only if asked)."""
        skip = () if second_moments else SECOND_MOMENTS
        for _, p, mask in self.parameters():
            for opt in _optimizers(optimizers):
                mask_optimizer_state(opt, p, mask, skip=skip)

    @torch.no_grad()
    def fill_second_moments(self, optimizers: Any, value: float = 1.0) -> int:
        """Set the second moments (``exp_avg_sq``, ...) at pruned coordinates to ``value`` (a CPU speed fix).

        The keys are :data:`~litmix.functional.sparsity.SECOND_MOMENTS`. A pruned coordinate has a zero gradient
        and a zero first moment, so its update is exactly zero whatever its second moment holds. But a coordinate
        that was *never* active (dynamic sparse training's initial mask) has ``exp_avg_sq == 0`` exactly, and on
        some CPUs Adam's step is several times slower on zeros (and on the denormals a decaying value ends in):
        measured 1.3-8x the dense Adam step for a 300x784 weight at 90 % zeros on the CI CPU, 1.0-1.4x after this
        fill. Call it once the optimizer state exists and every few thousand steps (a filled value decays by
        ``beta2`` per step). Regrown coordinates are reset to 0 by :meth:`update` as usual.

        Returns:
            The number of state tensors filled.
        """
        count = 0
        for _, p, mask in self.parameters():
            pruned: Tensor | None = None
            for opt in _optimizers(optimizers):
                for key, state in opt.state.get(p, {}).items():
                    if key in SECOND_MOMENTS and isinstance(state, Tensor) and state.shape == p.shape:
                        if pruned is None:
                            pruned = ~mask.to(state.device)
                        state.masked_fill_(pruned, value)
                        count += 1
        return count

    @torch.no_grad()
    def reset_state(self, optimizer: torch.optim.Optimizer, name: str, coords: Tensor) -> int:
        """Fresh (zero) optimizer state of parameter ``name`` at ``coords`` (bool): regrown weights start afresh.

        Returns:
            The number of state tensors reset.
        """
        return reset_optimizer_state(optimizer, self._params[name], coords)

    @torch.no_grad()
    def update(
        self,
        new_masks: Mapping[str, Tensor],
        optimizers: Any = None,
        *,
        strategy: Any = None,
        second_moments: bool = False,
    ) -> dict[str, Tensor]:
        """Replace masks: weights zeroed where pruned, optimizer state masked, regrown coordinates fresh.

        Args:
            new_masks: name -> new bool mask (any subset of the masked parameters); a ``dict`` is emptied as its
                masks are applied. With ``strategy``, only rank 0's masks count (the other ranks may pass ``{}``).
            optimizers: optimizer(s) whose state to mask / reset.
            strategy: a Lightning strategy: ``new_masks`` are broadcast from global rank 0 first.
            second_moments: also zero second moments at pruned coordinates.

        Returns:
            name -> bool tensor of regrown coordinates (pruned before, kept now).
        """
        if strategy is not None:
            new_masks = self._broadcast_masks(strategy, new_masks)
        skip = () if second_moments else SECOND_MOMENTS
        regrown_all: dict[str, Tensor] = {}
        # a plain dict is consumed (each new mask freed once applied): peak memory stays one mask
        pending = new_masks if type(new_masks) is dict else dict(new_masks)
        for name in list(pending):
            new = pending.pop(name)
            mask = self.masks[name]
            new = new.to(mask.device, torch.bool)
            regrown = new & ~mask
            mask.copy_(new)
            del new
            p = self._params.get(name)
            if p is None:
                continue
            p.mul_(mask.view(torch.uint8))
            any_regrown = bool(regrown.any())
            for opt in _optimizers(optimizers):
                mask_optimizer_state(opt, p, mask, skip=skip)  # momentum can never revive a pruned weight
                if any_regrown:
                    reset_optimizer_state(opt, p, regrown)  # regrown weights start from fresh state
            regrown_all[name] = regrown
        self.refresh()
        return regrown_all

    @torch.no_grad()
    def check_weights(self) -> dict[str, int]:
        """Pruned weights that are not exactly 0, per parameter (empty when all are)."""
        bad = {n: int(torch.logical_and(p != 0, ~mask).sum()) for n, p, mask in self.parameters()}
        return {n: k for n, k in bad.items() if k}

    # ------------------------------------------------------------------ DDP
    def _broadcast_masks(self, strategy: Any, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
        payload = {n: m.detach().cpu() for n, m in masks.items()} if masks is not None else None
        if getattr(strategy, "global_rank", 0) != 0:
            payload = None
        out = strategy.broadcast(payload, src=0)
        if out is None:
            raise RuntimeError(f"{self.owner}: rank 0 broadcast no masks")
        return dict(out)

    @torch.no_grad()
    def broadcast(self, strategy: Any) -> None:
        """Copy global rank 0's masks into every rank's masks (CPU pickles: any device layout works)."""
        out = self._broadcast_masks(strategy, self.masks)
        for n, m in out.items():
            self.masks[n].copy_(m.to(self.masks[n].device))

    # ------------------------------------------------------------------ reports and state
    def sparsity_report(self) -> dict[str, float]:
        """Mask sparsity (fraction pruned) per parameter and overall (``"global"``)."""
        report: dict[str, float] = {}
        pruned = total = 0
        for n, mask in self.masks.items():
            k = mask.numel() - int(torch.count_nonzero(mask))
            report[n] = k / max(mask.numel(), 1)
            pruned, total = pruned + k, total + mask.numel()
        report["global"] = pruned / max(total, 1)
        return report

    def state_dict(self) -> dict[str, Any]:
        """``{"masks": {name: {"shape": [...], "bits": bytes}}}`` at one bit per weight."""
        return {"masks": {n: {"shape": list(m.shape), "bits": pack_mask(m)} for n, m in self.masks.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any], *, strict: bool | None = None) -> None:
        """Restore :meth:`state_dict`: copied into the live masks when attached, else kept until :meth:`attach`.

        Args:
            state: from :meth:`state_dict`.
            strict: refuse masks of parameters this engine does not mask (default: when attached).

        Raises:
            ValueError: for a mask of a parameter this engine does not mask (``strict``) or a mask whose shape
                differs from the live one.
        """
        strict = self.attached if strict is None else strict
        for n, entry in state.get("masks", {}).items():
            mask = unpack_mask(entry["bits"], entry["shape"])
            live = self.masks.get(n)
            if live is None:
                if strict:
                    raise ValueError(
                        f"{self.owner}: the checkpoint holds a mask for {n!r}, which this fit does not prune"
                    )
                self.masks[n] = mask
            elif live.shape != mask.shape:
                raise ValueError(
                    f"{self.owner}: the checkpoint's mask for {n!r} has shape {tuple(mask.shape)}, the parameter "
                    f"{tuple(live.shape)}"
                )
            else:
                live.copy_(mask)

    # ------------------------------------------------------------------ export
    def _module_masks(self, module: nn.Module) -> dict[str, Tensor]:
        found = {n: getattr(o, leaf + MASK_SUFFIX) for n, (o, leaf) in find_masks(module).items()}
        return found or dict(self.masks)

    @torch.no_grad()
    def dense_state_dict(self, module: nn.Module) -> dict[str, Tensor]:
        """The module's ``state_dict`` with pruned weights exactly 0 and no mask buffers (strict-loadable)."""
        masks = self._module_masks(module)
        out = {}
        for k, v in module.state_dict().items():
            out[k] = v.detach().clone().masked_fill_(~masks[k].to(v.device), 0) if k in masks else v.detach().clone()
        return out

    @torch.no_grad()
    def to_sparse_state_dict(self, module: nn.Module, layout: Literal["bitmask", "csr"] = "bitmask") -> dict[str, Any]:
        """A compact ``state_dict``: each masked weight stored sparse, everything else as is.

        ``layout="bitmask"``: ``{"shape", "dtype", "bits" (1 bit per weight), "values" (kept weights, row-major)}``,
        ``nnz * bytes_per_weight + numel / 8`` bytes: smaller than dense above ~3 % sparsity in float32.
        ``layout="csr"``: a ``torch.sparse_csr`` tensor of the ``[rows, cols]`` view (int64 indices, so it only pays
        above ~66 % sparsity in float32) plus the original shape under ``"<key>.__shape__"``.
        Measure with :meth:`nbytes`; restore with :meth:`from_sparse_state_dict`.

        Raises:
            ValueError: for an unknown layout.
        """
        if layout not in ("bitmask", "csr"):
            raise ValueError(f"{self.owner}.to_sparse_state_dict(layout={layout!r}): layout must be 'bitmask' or 'csr'")
        masks = self._module_masks(module)
        out: dict[str, Any] = {}
        for k, v in module.state_dict().items():
            if k not in masks:
                out[k] = v.detach().clone()
                continue
            mask = masks[k].to(v.device)
            if layout == "bitmask":
                out[k] = {
                    "shape": list(v.shape),
                    "dtype": str(v.dtype).removeprefix("torch."),
                    "bits": pack_mask(mask),
                    "values": v.detach()[mask].clone(),
                }
            else:
                dense = v.detach().masked_fill(~mask, 0)
                rows = dense.reshape(1, -1) if dense.dim() < 2 else dense.reshape(dense.shape[0], -1)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                    out[k] = rows.to_sparse_csr()
                out[k + ".__shape__"] = list(v.shape)
        return out

    @staticmethod
    def nbytes(state: Mapping[str, Any]) -> int:
        """Bytes of tensor data and packed bits in a (sparse) ``state_dict``: the measured storage size."""
        total = 0
        for v in state.values():
            if isinstance(v, Tensor):
                if v.layout == torch.sparse_csr:
                    parts: Iterable[Tensor] = (v.values(), v.crow_indices(), v.col_indices())
                    total += sum(t.numel() * t.element_size() for t in parts)
                else:
                    total += v.numel() * v.element_size()
            elif isinstance(v, Mapping):
                total += len(v.get("bits", b"")) + sum(
                    t.numel() * t.element_size() for t in v.values() if isinstance(t, Tensor)
                )
        return total

    @staticmethod
    def from_sparse_state_dict(state: Mapping[str, Any]) -> dict[str, Tensor]:
        """Inverse of :meth:`to_sparse_state_dict`: a dense ``state_dict`` (zeros where pruned)."""
        out: dict[str, Tensor] = {}
        for k, v in state.items():
            if k.endswith(".__shape__"):
                continue
            if isinstance(v, Tensor) and v.layout == torch.sparse_csr:
                out[k] = v.to_dense().reshape(state[k + ".__shape__"])
            elif isinstance(v, Mapping):
                mask = unpack_mask(v["bits"], v["shape"])
                dense = torch.zeros(v["shape"], dtype=getattr(torch, v["dtype"]), device=v["values"].device)
                dense[mask.to(dense.device)] = v["values"]
                out[k] = dense
            else:
                out[k] = v
        return out

    @staticmethod
    def semi_structured_supported() -> tuple[bool, str]:
        """Whether ``torch.sparse.to_sparse_semi_structured`` can run here, and why not."""
        if not torch.cuda.is_available():
            return False, "no CUDA device is available (2:4 sparse tensor cores need an NVIDIA GPU)"
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            return False, f"the GPU has compute capability {major}.{minor}; 2:4 sparse tensor cores need >= 8.0"
        return True, ""

    @torch.no_grad()
    def to_semi_structured(self, module: nn.Module, names: Iterable[str] | None = None) -> list[str]:
        """Replace each 2:4-masked weight by a ``torch.sparse.to_sparse_semi_structured`` tensor (inference).

        The weights must be on a CUDA device of compute capability >= 8.0, in float16/bfloat16, with masks that are
        exactly 2:4 along the input dimension (:func:`~litmix.functional.sparsity.nm_masks` with ``n=2, m=4``).

        Returns:
            The converted parameter names.

        Raises:
            RuntimeError: without CUDA or on a GPU below compute capability 8.0 (the message says which).
            ValueError: for a weight whose mask is not 2:4, or that is not 2-d, float16/bfloat16 and on CUDA.
        """
        ok, why = self.semi_structured_supported()
        if not ok:
            raise RuntimeError(f"{self.owner}.to_semi_structured: {why}; export with to_sparse_state_dict instead")
        from torch.sparse import to_sparse_semi_structured

        masks = self._module_masks(module)
        chosen = list(names) if names is not None else list(masks)
        params = dict(module.named_parameters())
        for n in chosen:
            w = params[n]
            if w.dim() != 2 or w.dtype not in (torch.float16, torch.bfloat16) or not w.is_cuda:
                raise ValueError(
                    f"{self.owner}.to_semi_structured: {n!r} must be a 2-d float16/bfloat16 CUDA weight, got "
                    f"{tuple(w.shape)} {w.dtype} on {w.device}"
                )
            mask = masks[n].to(w.device)
            if w.shape[1] % 4 or not bool((mask.reshape(-1, 4).sum(dim=1) == 2).all()):
                raise ValueError(f"{self.owner}.to_semi_structured: the mask of {n!r} is not 2:4 along its rows")
        for n in chosen:
            owner, leaf = _owner(module, n)
            w = getattr(owner, leaf)
            sparse = to_sparse_semi_structured(w.detach().masked_fill(~masks[n].to(w.device), 0))
            setattr(owner, leaf, nn.Parameter(sparse, requires_grad=False))
        return chosen

    @staticmethod
    @torch.no_grad()
    def make_permanent(module: nn.Module) -> list[str]:
        """Bake the masks into the weights (zeros stay) and delete the ``*_mask`` buffers; returns their names."""
        from litmix.functional.sparsity import remove_masks

        return remove_masks(module)
