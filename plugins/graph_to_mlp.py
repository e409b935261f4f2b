"""GNN -> MLP distillation (GLNN): an MLP on node features learns a frozen GNN's soft labels; no graph at inference."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.distill.base import infer_width
from litmix.functional.distill_losses import kd_rows
from litmix.models import load_model, output_logits
from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

__all__ = ["GraphToMLPDistillModule"]

STUDENT_PREFIX = "student."
MAX_SEED = 2**31 - 1
_PAPER = "Graph-less Neural Networks: Teaching Old MLPs New Tricks via Distillation (https://arxiv.org/abs/2110.08727)"


def _in_width(model: nn.Module) -> int | None:
    """The input width of ``model``'s first layer that declares one (``in_features`` / ``in_channels``)."""
    for sub in model.modules():
        for attr in ("in_features", "in_channels"):
            width = getattr(sub, attr, None)
            if isinstance(width, int) and width > 0:
                return width
    return None


class _TinyGCNTeacher(nn.Module):
    """Two ``GCNConv`` layers, ``forward(x, edge_index)`` -> logits (the teacher of the example)."""

    def __init__(self, in_features: int = 8, hidden: int = 16, num_classes: int = 3) -> None:
        from torch_geometric.nn import GCNConv

        super().__init__()
        self.conv1, self.conv2 = GCNConv(in_features, hidden), GCNConv(hidden, num_classes)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Logits ``[N, C]``."""
        return self.conv2(F.relu(self.conv1(x, edge_index)), edge_index)  # type: ignore[no-any-return]


@register("plugin", "distillation", paper=_PAPER)
class GraphToMLPDistillModule(LitmixModule):
    """GLNN: distil a trained GNN teacher's soft labels into an MLP that needs no graph at inference.

    Paper: Zhang, Liu, Sun and Shah, "Graph-less Neural Networks: Teaching Old MLPs New Tricks via Distillation"
    (ICLR 2022, https://arxiv.org/abs/2110.08727); reference code ``snap-research/graphless-neural-networks``.

    The teacher's log-probabilities for **every** node are computed once, full batch, before the first training
    step (``teacher(x, edge_index)`` in eval mode under ``torch.no_grad()``), or taken from ``teacher_logits``.
    The student MLP runs on the node features only, and the loss of every step is GLNN's::

        loss = lam · CE(student(x)[train nodes], y) + (1 - lam) · T² · KL(teacher ‖ student)  over all nodes

    (batchmean, log-probabilities with ``log_target``; :func:`litmix.functional.distill_losses.kd_rows`). GLNN's
    defaults are ``lam = 0`` and ``T = 1``. Inference is ``module(x)`` = ``student(x)``: no edges.

    **Data**: :class:`~litmix.datamodules.GraphDataModule` batches ``(graph, y, index)`` (the whole graph, the
    labels of the batch's training nodes and their ids). **Under DDP** the graph is replicated and the training
    nodes are sharded by the DataModule; the KL nodes are sharded here the same way (rank ``r`` of ``W`` takes
    nodes ``r, r + W, ...``) and each rank's KL is its sum over its nodes divided by ``N / W``, so DDP's mean of
    the ranks' gradients is exactly the gradient of the 1-rank loss.

    **Teacher and checkpoints**: the teacher is frozen (``requires_grad_(False)``), always in eval mode, and
    not a registered submodule (no ``state_dict``, optimizer or DDP). The module's ``state_dict`` holds only
    ``student.*``; :meth:`student_state_dict` strips the prefix so a checkpoint loads with ``strict=True`` into
    the bare MLP. The teacher's soft labels (``[N, C]`` float32, no buffer) travel in
    ``checkpoint["litmix"]["teacher_logprobs"]`` so a resumed run distils exactly the same targets.

    Logs (``sync_dist``): ``distill/ce``, ``distill/kd``, ``distill/total``, ``distill/agreement`` (student-teacher
    top-1 agreement over all nodes), ``val/acc`` / ``test/acc`` of the student and ``val/teacher_acc``.

    Args:
        student: the MLP (any module called as ``student(x)`` on ``[N, F]`` node features, giving ``[N, C]``).
        teacher: the trained GNN (module or path for :func:`litmix.models.load_model`), called as
            ``teacher(x, edge_index)``; ``None`` when ``teacher_logits`` is given.
        teacher_logits: precomputed teacher logits or log-probabilities ``[N, C]`` for every node (instead of
            running ``teacher``).
        lam: weight of the labelled cross-entropy in ``[0, 1]``; the KL gets ``1 - lam`` (GLNN: 0).
        temperature: softmax temperature ``T > 0`` of the KL term (GLNN: 1).
        lr: Adam learning rate, > 0 (GLNN Cora: 0.01).
        weight_decay: Adam weight decay, >= 0 (GLNN Cora: 0.005).
        seed: seed of the student's dropout: step ``s`` draws from ``manual_seed(f(seed, s))`` inside
            ``fork_rng``, so a resumed run and every DDP rank draw the masks of an uninterrupted 1-rank run.

    Raises:
        TypeError: for an argument of the wrong type (a student or teacher that is not a module, logits that are
            not a tensor), naming it.
        ValueError: for ``lam`` outside ``[0, 1]``, a negative ``seed``, ``temperature <= 0``, ``lr <= 0``,
            ``weight_decay < 0``, neither or both of ``teacher`` and ``teacher_logits``, logits that are not a
            finite ``[N, C]`` float tensor, or teacher and student output widths (classes) that differ; at fit
            start, before any training compute, a graph without node features ``x`` (or with features the
            student cannot take), or teacher soft labels whose number of nodes or classes does not match the graph
            and the student.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, _ = GraphToMLPDistillModule.example()
        >>> trainer = fit_tiny(module=module, datamodule=datamodule, max_steps=2)
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("distill/"))
        ['distill/agreement', 'distill/ce', 'distill/kd', 'distill/total']
        >>> bare = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        >>> bare.load_state_dict(GraphToMLPDistillModule.student_state_dict(module.state_dict()), strict=True)
        <All keys matched successfully>
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | str | None,
        teacher_logits: Tensor | None = None,
        lam: float = 0.0,
        temperature: float = 1.0,
        lr: float = 0.01,
        weight_decay: float = 0.005,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        check_type(owner, "student", student, nn.Module)
        check_type(owner, "teacher", teacher, (nn.Module, str, os.PathLike), allow_none=True)
        check_type(owner, "teacher_logits", teacher_logits, Tensor, allow_none=True)
        lam = check_float(owner, "lam", lam, low=0.0, high=1.0)
        temperature = check_float(owner, "temperature", temperature, low=0.0, low_open=True)
        lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        weight_decay = check_float(owner, "weight_decay", weight_decay, low=0.0)
        seed = check_int(owner, "seed", seed, low=0, high=MAX_SEED)
        if (teacher is None) == (teacher_logits is None):
            raise ValueError(
                f"{owner}(teacher={'None' if teacher is None else type(teacher).__name__}, teacher_logits="
                f"{'None' if teacher_logits is None else 'Tensor'}): give exactly one of teacher (a trained GNN) "
                "and teacher_logits (its [N, C] outputs for every node)"
            )
        student_classes = infer_width(student, ".")
        soft: Tensor | None = None
        teacher_classes: int | None = None
        if teacher_logits is not None:
            if teacher_logits.dim() != 2 or not teacher_logits.is_floating_point() or teacher_logits.shape[1] < 2:
                raise ValueError(
                    f"{owner}(teacher_logits=Tensor{tuple(teacher_logits.shape)}): teacher_logits must be a float "
                    "[N, C] tensor with C >= 2 classes"
                )
            if not bool(torch.isfinite(teacher_logits).all()):
                raise ValueError(f"{owner}(teacher_logits=...): teacher_logits holds NaN or inf")
            teacher_classes = int(teacher_logits.shape[1])
            soft = torch.log_softmax(teacher_logits.detach().float().cpu(), dim=-1)
        loaded: list[nn.Module] = []
        if teacher is not None:
            net = load_model(teacher, owner=owner, argument="teacher")
            teacher_classes = infer_width(net, ".")
            loaded = [net.requires_grad_(False).eval()]
        if student_classes is not None and teacher_classes is not None and student_classes != teacher_classes:
            which = "teacher_logits" if teacher_logits is not None else "teacher"
            raise ValueError(
                f"{owner}({which}=...): the teacher gives {teacher_classes} classes but the student "
                f"{type(student).__name__} outputs {student_classes}; they must be equal"
            )
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher", "teacher_logits"])
        self.student = student
        self.lam, self.temperature, self.lr, self.weight_decay = lam, temperature, lr, weight_decay
        self.seed = seed
        # a plain list: the teacher is no registered submodule (no state_dict, checkpoint, optimizer or DDP)
        self._teachers: list[nn.Module] = loaded
        #: teacher log-probabilities [N, C] of every node (float32; not a buffer, checkpointed under "litmix")
        self.teacher_logprobs: Tensor | None = soft
        self._student_in = _in_width(student)
        self._student_classes = student_classes

    # ------------------------------------------------------------------------------------------------ teacher
    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (``None`` when built from ``teacher_logits``); never in the checkpoint."""
        return self._teachers[0] if self._teachers else None

    def _apply(self, fn: Any, recurse: bool = True) -> GraphToMLPDistillModule:
        """Move (and convert) the teacher with the module."""
        super()._apply(fn, recurse)
        for teacher in self._teachers:
            teacher._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> GraphToMLPDistillModule:
        """Set the student's mode; the teacher stays in eval mode."""
        super().train(mode)
        for teacher in self._teachers:
            teacher.eval()
        return self

    @classmethod
    def example(cls) -> Example:
        """A 8-16-3 MLP distilled from a seeded 2-layer GCN on a 48-node block-model graph (full batch)."""
        from litmix.datamodules.graph import GraphDataModule, _tiny_graph

        torch.manual_seed(0)
        teacher = _TinyGCNTeacher()
        student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        return Example(cls(student, teacher, lam=0.5), GraphDataModule(None, data=_tiny_graph()), [])

    @staticmethod
    def student_state_dict(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
        """The bare student's ``state_dict`` from a checkpoint dict or this module's ``state_dict``.

        Example:
            >>> module = GraphToMLPDistillModule.example().module
            >>> sorted(GraphToMLPDistillModule.student_state_dict(module.state_dict()))
            ['0.bias', '0.weight', '2.bias', '2.weight']
        """
        state = checkpoint.get("state_dict", checkpoint)
        return {k[len(STUDENT_PREFIX) :]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the soft labels (not the teacher); refuse any non-student key in the state."""
        super().on_save_checkpoint(checkpoint)
        foreign = [k for k in checkpoint.get("state_dict", {}) if not k.startswith(STUDENT_PREFIX)]
        if foreign:
            raise RuntimeError(f"{type(self).__name__}: unexpected keys in the checkpoint: {foreign[:5]}")
        soft = self.teacher_logprobs
        checkpoint["litmix"]["teacher_logprobs"] = None if soft is None else soft.detach().cpu().clone()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the soft labels stored with the checkpoint."""
        super().on_load_checkpoint(checkpoint)
        soft = checkpoint.get("litmix", {}).get("teacher_logprobs")
        if isinstance(soft, Tensor):
            self.teacher_logprobs = soft.float()

    # ------------------------------------------------------------------------------------------------ graph
    def _features(self, graph: Any) -> Tensor:
        owner = type(self).__name__
        x = graph.get("x") if isinstance(graph, dict) else None
        if not isinstance(x, Tensor):
            keys = sorted(graph) if isinstance(graph, dict) else type(graph).__name__
            raise ValueError(
                f"{owner}: the graph has no node features 'x' (got {keys}); an MLP student needs [N, F] features "
                "(add e.g. one-hot degrees or learned embeddings as x)"
            )
        if x.dim() != 2 or not x.is_floating_point():  # sparse (COO / CSR) features are accepted
            raise ValueError(f"{owner}: the node features x must be a float [N, F] tensor, got {tuple(x.shape)}")
        if self._student_in is not None and x.shape[1] != self._student_in:
            raise ValueError(
                f"{owner}(student=...): the graph has {x.shape[1]} node features but the student takes "
                f"{self._student_in}"
            )
        return x

    def _prepare(self, graph: Any) -> None:
        """Check the graph and compute the teacher's soft labels once (before any training compute)."""
        owner = type(self).__name__
        x = self._features(graph)
        n = int(x.shape[0])
        if self.teacher_logprobs is None:
            teacher = self.teacher
            assert teacher is not None
            edge_index = graph.get("edge_index")
            if not isinstance(edge_index, Tensor):
                raise ValueError(f"{owner}: the graph has no 'edge_index' for the teacher")
            teacher.eval()
            with torch.no_grad():
                out = output_logits(teacher(x, edge_index), owner=owner, who="teacher")
            self.teacher_logprobs = torch.log_softmax(out.detach().float(), dim=-1)
        soft = self.teacher_logprobs
        if soft.dim() != 2 or soft.shape[0] != n:
            raise ValueError(
                f"{owner}: the teacher's soft labels have shape {tuple(soft.shape)} but the graph has {n} nodes"
            )
        if self._student_classes is not None and soft.shape[1] != self._student_classes:
            raise ValueError(
                f"{owner}: the teacher gives {soft.shape[1]} classes but the student outputs {self._student_classes}"
            )
        self.teacher_logprobs = soft.to(x.device)

    def on_fit_start(self) -> None:
        """Check the DataModule's graph and compute the soft labels (GraphDataModule-style ``inputs``)."""
        graph = getattr(getattr(self.trainer, "datamodule", None), "inputs", None)
        if isinstance(graph, dict):
            self._prepare({k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in graph.items()})

    # ------------------------------------------------------------------------------------------------ steps
    def forward(self, x: Tensor) -> Tensor:
        """The student's logits from node features alone (no graph)."""
        return self.student(x)  # type: ignore[no-any-return]

    def _kd_nodes(self, n: int) -> tuple[Tensor | slice, float]:
        """This rank's KL nodes and the factor turning their batchmean into ``sum / (N / W)``."""
        world = int(self.trainer.world_size) if self._trainer is not None else 1
        if world <= 1:
            return slice(None), 1.0
        rank = int(self.trainer.global_rank)
        ids = torch.arange(rank, n, world, device=self.device)
        return ids, ids.numel() * world / n

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """``lam · CE(train nodes) + (1 - lam) · KD(all nodes)`` on the student's graph-free logits."""
        graph, y, index = split_batch(batch)
        if self.teacher_logprobs is None or self.teacher_logprobs.shape[0] != self._features(graph).shape[0]:
            self._prepare(graph)
        soft = self.teacher_logprobs
        assert soft is not None
        x = self._features(graph)
        # the step's randomness (dropout) is a function of (seed, global_step): resume and DDP ranks draw the
        # same masks as an uninterrupted 1-rank run; the global RNG is left untouched
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((self.seed * 1_000_003 + self.global_step) % 2**63)
            logits = self.student(x)
        total = logits.new_zeros(())
        ce = kd = None
        if y is not None and index is not None:
            ce = F.cross_entropy(logits[index].float(), y)
            total = total + self.lam * ce
        nodes, factor = self._kd_nodes(int(x.shape[0]))
        t = soft.to(logits.device)[nodes]
        if self.temperature != 1.0:
            t = torch.log_softmax(t / self.temperature, dim=-1)
        kd = kd_rows(logits[nodes], t, self.temperature) * factor
        total = total + (1.0 - self.lam) * kd
        sync = self.trainer.world_size > 1
        agree = (logits.detach()[nodes].argmax(-1) == soft.to(logits.device)[nodes].argmax(-1)).float().mean()
        values = {"kd": kd, "total": total, "agreement": agree} if ce is None else {"ce": ce, "kd": kd, "total": total}
        if ce is not None:
            values["agreement"] = agree
        for name, value in values.items():
            self.log(f"distill/{name}", value.detach(), on_step=False, on_epoch=True, batch_size=1, sync_dist=sync)
        return total

    def _evaluate(self, batch: Any, stage: str) -> None:
        graph, y, index = split_batch(batch)
        if y is None or index is None:
            return
        x = self._features(graph)
        pred = self.student(x[index]).argmax(-1)
        size = int(index.numel())
        self.log(f"{stage}/acc", (pred == y).float().mean(), batch_size=size, sync_dist=True)
        soft = self.teacher_logprobs
        if soft is not None and soft.shape[0] == x.shape[0]:
            t_acc = (soft.to(x.device)[index].argmax(-1) == y).float().mean()
            self.log(f"{stage}/teacher_acc", t_acc, batch_size=size, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """The student's accuracy (and the teacher's) on the validation nodes."""
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """The student's accuracy (and the teacher's) on the test nodes."""
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the student only."""
        return torch.optim.Adam(self.student.parameters(), lr=self.lr, weight_decay=self.weight_decay)
