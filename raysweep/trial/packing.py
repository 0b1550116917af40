"""Packed trials: K adapters trained over one frozen base in one process, one base pass for all of them.

Each member is built exactly as it would be alone — `adapter.build(fresh view of the cached base)`, after
`set_seed(its seed)` — so its peft model, its family's hooks (gates, DoRA magnitudes), its optimizer groups
and its export are the unchanged single-trial code. Packing only changes where the base's work happens:

- The *runner* is one more fresh view of the base in which every linear layer adapted by any member is a
  `PackedLinear`. A packed step concatenates the members' batches along the batch axis (each member keeps
  its own rows: `Slices`), so embeddings, norms, attention, activations and the frozen x·Wᵀ of every layer
  run once for the whole concatenation.
- At an adapted layer, `PackedLinear` computes the base output once, then hands each member's peft layer its
  own rows and its own rows of the base output: the member layer's `base_layer` is a `SharedBase` that
  returns that precomputed output instead of multiplying again (it still holds the base weight, which
  DoRA's weight norm reads). The member layer then adds its update exactly as peft does alone (LoRA,
  DoRA, gates as a parametrization of lora_A).
- The loss of each member is its own mean over its own rows (the causal-LM loss of its model), and the pack
  backpropagates Σ_k loss_k once: the members' parameters are disjoint and the base is frozen and has no
  cross-example term (LayerNorm/RMSNorm are per token), so every member gets exactly its gradient alone.
- The logits are made one member at a time (`member_losses`): the decoder runs once for the pack, then each
  member's rows go through the output layer and the loss inside a checkpoint, so the backward remakes them
  instead of keeping them. A pack holds one member's logits (batch × length × vocabulary: 311 MB for batch
  4 × 128 tokens of a 152k vocabulary), not K. Used where the model's logits are exactly its output layer on
  its decoder's hidden states (checked once on the base, `head_splits`); otherwise the whole batch's.

Hand-written because no library trains several adapters in one pass: peft's mixed-adapter batches
(`adapter_names=`) refuse training mode, mLoRA/ASPEN is Llama-only and replaces the model code.
Dropout in a member's layers draws from that member's own RNG stream (`Member.rng`), as it would alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# per member: its rows [start, end) of the concatenated batch and its own width (sequence length before the
# batch was padded to the widest member's), or None when the member has no batch this time
Slices = list[tuple[int, int, int] | None]


class SharedBase(nn.Module):
    """Stands in for a member layer's `base_layer`: returns the output the pack computed once for all members
    (`pending`), and exposes the base weight and bias (same Parameter objects) for code that reads them."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.weight = linear.weight
        self.bias = getattr(linear, "bias", None)
        self.in_features = getattr(linear, "in_features", None)
        self.out_features = getattr(linear, "out_features", None)
        self.pending: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.pending is None:
            raise RuntimeError("a packed member layer ran outside its pack (PackedLinear sets its base output)")
        out, self.pending = self.pending, None
        return out


@dataclass
class Member:
    """One configuration of a pack: its adapted model (peft), adapter and the RNG its dropout draws from."""

    model: nn.Module
    adapter: Any
    rng: torch.Tensor  # torch.get_rng_state() as this member's own stream (CPU generator)
    layers: dict[str, nn.Module] = field(default_factory=dict)  # base-model module name -> its peft layer


class PackedLinear(nn.Module):
    """A base linear layer computed once for the whole pack, plus each member's update on its own rows."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        # plain lists, not registered submodules: the members own their layers (and their parameters)
        self.members: list[tuple[Member, nn.Module] | None] = []
        self.shared: list[SharedBase | None] = []
        self.slices: Slices = []

    def set_members(self, members: list[tuple[Member, nn.Module] | None]) -> None:
        """The pack's members now (members join and leave between steps); None: that member does not adapt
        this layer. Each member layer's `base_layer` becomes a SharedBase fed by this layer."""
        self.members = members
        self.shared = [SharedBase(self.base) if m is not None else None for m in members]
        for m, shared in zip(members, self.shared, strict=True):
            if m is not None:
                m[1].base_layer = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        present = [(k, rows) for k, rows in enumerate(self.slices) if rows is not None]
        # torch.split, not x[start:end]: the backward of a split is one concatenation, while each slice's
        # backward writes a zero tensor of the whole batch (K of them per layer: a step K² in the pack size)
        sizes = [end - start for _, (start, end, _) in present]
        xs, outs = torch.split(x, sizes), torch.split(out, sizes)
        pieces = []
        for (k, (_, _, width)), x_k, out_k in zip(present, xs, outs, strict=True):
            member = self.members[k]
            if member is None:  # this member does not adapt this layer
                pieces.append(out_k)
                continue
            # the member's layer sees its own rows at its own width, as alone (dropout draws one number per
            # element, so a wider input would shift its random stream); the padding columns keep the base output
            narrow = width != x.shape[1]
            self.shared[k].pending = out_k[:, :width] if narrow else out_k
            with member_rng(member[0]):
                mine = member[1](x_k[:, :width] if narrow else x_k)
            pieces.append(torch.cat([mine, out_k[:, width:]], dim=1) if narrow else mine)
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


@contextlib.contextmanager
def member_rng(member: Member) -> Iterator[None]:
    """Run a block on the member's own CPU RNG stream (dropout masks as the member would draw them alone)."""
    outer = torch.get_rng_state()
    torch.set_rng_state(member.rng)
    try:
        yield
    finally:
        member.rng = torch.get_rng_state()
        torch.set_rng_state(outer)


def _lora_layers(model) -> dict[str, nn.Module]:
    from raysweep.adapters.lora import lora_layers

    return dict(lora_layers(model))


class Pack(nn.Module):
    """The runner over the shared base and the members. `member_losses(batch, slices)` gives each member's
    causal-LM loss on its rows, `member_logits` each member's logits (eval)."""

    def __init__(self, runner: nn.Module, members: list[Member]):
        super().__init__()
        self.runner = runner
        self.split_head = head_splits(runner)  # before any layer is packed: the bare base decides
        self.members: list[Member] = []
        self.packed: dict[str, PackedLinear] = {}  # base-model module name -> its packed layer in the runner
        self.set_members(members)

    def set_members(self, members: list[Member]) -> None:
        """Members join and leave between steps: member k owns rows `slices[k]` of every batch after this."""
        self.members = list(members)
        for m in self.members:
            m.layers = m.layers or _lora_layers(m.model)
        for name in dict.fromkeys(n for m in self.members for n in m.layers):
            if name not in self.packed:  # the first member adapting this layer: the runner's layer becomes packed
                parent_name, _, attr = name.rpartition(".")
                parent = self.runner.get_submodule(parent_name) if parent_name else self.runner
                self.packed[name] = PackedLinear(getattr(parent, attr))
                setattr(parent, attr, self.packed[name])
        for name, layer in self.packed.items():
            layer.set_members([(m, m.layers[name]) if name in m.layers else None for m in self.members])

    @contextlib.contextmanager
    def alone(self, member: Member) -> Iterator[None]:
        """Run the member's own model outside the pack (task metrics, generation): its layers get their real
        base layers back for the block."""
        shared = {name: layer.base_layer for name, layer in member.layers.items()}
        for name, layer in member.layers.items():
            layer.base_layer = self.packed[name].base
        try:
            yield
        finally:
            for name, layer in member.layers.items():
                layer.base_layer = shared[name]

    def forward(self, batch: dict[str, torch.Tensor], slices: Slices) -> torch.Tensor:
        """The logits of the whole concatenated batch."""
        self._route(slices)
        return self.runner(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def _route(self, slices: Slices) -> None:
        for layer in self.packed.values():
            layer.slices = slices

    def _head_apart(self) -> bool:
        """Whether logits can be made member by member: the model allows it and no member adapts its output
        layer (a packed output layer computes every member's rows at once)."""
        return self.split_head and not isinstance(self.runner.get_output_embeddings(), PackedLinear)

    def _by_member(self, batch: dict[str, torch.Tensor], slices: Slices) -> list[tuple[int, torch.Tensor]]:
        """(member, its rows) of the decoder's last hidden states where logits are made member by member, else
        of the whole batch's logits; one pass of the base for the pack either way."""
        if self._head_apart():
            self._route(slices)
            out = self.runner.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                            use_cache=False)[0]
        else:
            out = self(batch, slices)
        present = [(k, rows) for k, rows in enumerate(slices) if rows is not None]
        # torch.split: one concatenation in the backward, not a zero tensor of the whole batch per member
        parts = torch.split(out, [end - start for _, (start, end, _) in present])
        return [(k, part) for (k, _), part in zip(present, parts, strict=True)]

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """transformers' causal-LM loss: what `model(**batch).loss` gives a member alone on its rows."""
        return self.runner.loss_function(logits=logits, labels=labels, vocab_size=self.runner.config.vocab_size)

    def _head_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._loss(self.runner.get_output_embeddings()(hidden), labels)

    def member_losses(self, batch: dict[str, torch.Tensor], slices: Slices) -> dict[int, torch.Tensor]:
        """Each present member's causal-LM loss over its rows. Made member by member, each inside a checkpoint:
        its logits are freed once its loss is known and remade in the backward."""
        from torch.utils.checkpoint import checkpoint

        apart = self._head_apart()
        out = {}
        for k, part in self._by_member(batch, slices):
            labels = batch["labels"][slices[k][0]:slices[k][1]]
            out[k] = (checkpoint(self._head_loss, part, labels, use_reentrant=False) if apart
                      else self._loss(part, labels))
        return out

    def member_logits(self, batch: dict[str, torch.Tensor], slices: Slices) -> Iterator[tuple[int, torch.Tensor]]:
        """(member, the logits of its rows), made one member at a time where the model allows it (eval)."""
        apart = self._head_apart()
        head = self.runner.get_output_embeddings()
        for k, part in self._by_member(batch, slices):
            yield k, head(part) if apart else part


def head_splits(runner: nn.Module) -> bool:
    """Whether `runner`'s logits are exactly its output layer applied to its decoder's last hidden states (no
    logit scaling or soft-capping after it), checked on a few tokens in eval mode with no gradient."""
    try:
        decoder, head = runner.get_decoder(), runner.get_output_embeddings()
        if decoder is None or head is None or decoder is runner:
            return False
        device = next(runner.parameters()).device
        ids = (torch.arange(1, 9, device=device) % runner.config.vocab_size).unsqueeze(0)
        mask = torch.ones_like(ids)
        training = runner.training
        runner.eval()
        try:
            with torch.no_grad():
                whole = runner(input_ids=ids, attention_mask=mask).logits
                apart = head(decoder(input_ids=ids, attention_mask=mask, use_cache=False)[0])
        finally:
            runner.train(training)
        return bool(torch.equal(whole, apart))
    except Exception:  # noqa: BLE001 - a model this does not fit: the whole batch's logits, as before
        return False


def concat_batches(batches: list[dict[str, torch.Tensor] | None], pad_id: int) -> tuple[dict[str, torch.Tensor], Slices]:
    """One batch of the members' collated batches (right-padded to the widest; a causal model's outputs at
    real tokens do not depend on padding after them) and each member's rows (None: no batch this time)."""
    from raysweep.inputs.examples import IGNORE_INDEX

    present = [b for b in batches if b is not None]
    width = max(b["input_ids"].shape[1] for b in present)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    out: dict[str, list[torch.Tensor]] = {k: [] for k in fill}
    slices: Slices = []
    row = 0
    for b in batches:
        if b is None:
            slices.append(None)
            continue
        n, w = b["input_ids"].shape
        for key, value in fill.items():
            out[key].append(nn.functional.pad(b[key], (0, width - w), value=value))
        slices.append((row, row + n, w))
        row += n
    return {k: torch.cat(v) for k, v in out.items()}, slices
