"""One model layout: which tensors of a model make its flat vector, in which order.

A defense sees a client's model as one row of an ``(n, d)`` matrix, an attack moves a
model along a flat direction, CRFL smooths a flat model: each needs the same answer to
"which tensors, in which order, with which shapes and dtypes, floating buffers or not".
:class:`ModelLayout` is that answer, built from a state dict, an ``nn.Module`` or the
(key, shape, dtype) headers of anything else (``defenses.adapter.RecordLayout`` builds
one from a Flower ``ArrayRecord``: the conversion stays out of this module, which
needs torch and numpy only). It flattens a state dict or a module into one vector and
writes a vector back, checking that the model fits.

Two views of a module, and which one is used where (the decision):

- **the state view** (``buffers=True``, the default): every floating-point entry of the
  state dict, in state-dict order: the parameters *and* the floating buffers
  (BatchNorm's ``running_mean`` / ``running_var``). Integer entries (BatchNorm's
  ``num_batches_tracked``) are not in the vector; they are carried as they are. This is
  the **aggregated vector**: what the server's rule sees of every reply and of the
  global model (``defenses.adapter``), what an attacker who runs the rule hands it on
  its client (partial knowledge, ``attacks.backdoor``) and what the server loop's
  adversary stages hand it (full knowledge, ``fedsec.adversary``), what DeepSight's probe
  and CRFL's certification load into a module. Why: the message a client sends is its
  state dict, and Flower's FedAvg, like fedsec's server from the start, averages every
  floating entry of it; a BatchNorm model whose running statistics were not aggregated
  would evaluate with the initial ones. The partial- and full-knowledge evasions used
  to differ here (the client flattened parameters only, the server the whole state),
  so with ``resnet18`` the rule saw vectors of different lengths; both now use this
  view (``tests/test_layout.py``).
- **the parameters view** (``buffers=False``): ``model.parameters()`` in their order,
  what SGD moves. Operations inside local training stay on it
  (``fedsec_core.training.flatten_params`` / ``assign_flat_params``: PGD's projection, model
  replacement's boost, Neurotoxin's mask, the multi-metrics evasion's penalty and
  projection), because a penalty is differentiated through the parameters and a
  running variance moved outside the convex hull of its values can turn negative.

Every committed result uses a model without buffers (``mlp``, ``cnn``, ``lenet``,
``vgg9``). For these the two views are the same tensors in the same order (a module's
state dict lists each module's parameters, then its buffers, depth first, and
``parameters()`` walks the modules in the same order), so every path flattens exactly
as before and results stay bit-identical.

The vector's dtype is float32, or float64 when an entry is float64 (what the rules
compute in); :meth:`ModelLayout.load_module` and :meth:`ModelLayout.unflatten` cast each
entry back to its own dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: A tensor of a model as a state dict or a record holds it.
TensorLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class Entry:
    """One tensor of a model: its state-dict key, shape and dtype, and its slice of the
    flat vector (``span``; None for an entry the vector leaves out, e.g. an integer
    buffer). ``dtype`` is a torch dtype, or numpy's name for an array type torch does
    not have (never in the vector)."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype | str
    span: slice | None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class ModelLayout:
    """Which tensors of a model make its flat vector, in which order (module docstring).

    ``specs``: ``(key, shape, dtype)`` of every tensor, in order; the floating-point ones
    make the vector, the others are listed (:attr:`entries`) and left out.
    ``buffers`` records which view of a module the layout describes (True: the state
    dict, parameters and buffers; False: the parameters): it decides which tensors
    :meth:`flatten_module` and :meth:`load_module` read and write.
    """

    def __init__(
        self,
        specs: Iterable[tuple[str, Sequence[int], torch.dtype | np.dtype | str]],
        *,
        buffers: bool = True,
    ) -> None:
        self.buffers = buffers
        entries: list[Entry] = []
        start = 0
        for key, shape, dtype in specs:
            shape, dtype = tuple(int(s) for s in shape), _torch_dtype(dtype)
            span = None
            if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
                span = slice(start, start + math.prod(shape))
                start = span.stop
            entries.append(Entry(key, shape, dtype, span))
        self.entries: tuple[Entry, ...] = tuple(entries)
        #: the entries of the vector, in its order
        self.flat_entries: tuple[Entry, ...] = tuple(e for e in entries if e.span is not None)
        self._by_key = {e.key: e for e in entries}
        #: the vector's length
        self.size = start
        wide = any(e.dtype == torch.float64 for e in self.flat_entries)
        #: the vector's dtype: float32, or float64 when an entry is float64
        self.dtype = torch.float64 if wide else torch.float32

    # ------------------------------------------------------------------ constructors
    @classmethod
    def of_state(cls, state: Mapping[str, TensorLike]) -> ModelLayout:
        """The layout of a state dict (tensors or numpy arrays): its floating entries in
        its order (the state view)."""
        return cls(((k, v.shape, v.dtype) for k, v in state.items()), buffers=True)

    @classmethod
    def of_module(cls, module: torch.nn.Module, *, buffers: bool = True) -> ModelLayout:
        """The layout of ``module``: the state view (``buffers=True``: its state dict's
        floating entries, parameters and buffers) or the parameters view (``False``:
        ``module.parameters()``, named as in its state dict)."""
        tensors = _module_tensors(module, buffers)
        return cls(((k, v.shape, v.dtype) for k, v in tensors.items()), buffers=buffers)

    # ------------------------------------------------------------------ questions
    @property
    def keys(self) -> list[str]:
        """The keys of the vector's entries, in its order."""
        return [e.key for e in self.flat_entries]

    def entry(self, key: str) -> Entry:
        """The entry ``key`` (KeyError if the layout has none)."""
        return self._by_key[key]

    def span(self, key: str) -> slice:
        """The slice of the vector that holds entry ``key`` (KeyError if it is not there)."""
        entry = self._by_key.get(key)
        if entry is None or entry.span is None:
            raise KeyError(f"{key!r} is not an entry of the flat vector")
        return entry.span

    def mismatch(self, tensors: Mapping[str, TensorLike]) -> str:
        """How ``tensors`` (a state dict, a module's parameters) differ from the layout's
        keys, shapes and dtypes, in words; "" when they fit."""
        if set(tensors) != set(self._by_key):
            missing = sorted(set(self._by_key) - set(tensors))
            extra = sorted(set(tensors) - set(self._by_key))
            return f"keys differ from the layout's (missing {missing}, extra {extra})"
        for entry in self.entries:
            value = tensors[entry.key]
            shape, dtype = tuple(value.shape), _torch_dtype(value.dtype)
            if (shape, dtype) != (entry.shape, entry.dtype):
                return (
                    f"{entry.key!r} is {_name(dtype)}{list(shape)}, the layout's "
                    f"{_name(entry.dtype)}{list(entry.shape)}"
                )
        return ""

    # ------------------------------------------------------------------ flatten
    def flatten(
        self, tensors: Mapping[str, TensorLike], *, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The vector of ``tensors`` (a state dict of tensors or numpy arrays): a new 1-D
        tensor of :attr:`dtype` on ``device`` (default: the tensors'), detached.
        ValueError if they do not fit the layout."""
        problem = self.mismatch(tensors)
        if problem:
            raise ValueError(f"the model does not fit the layout: {problem}")
        return self._cat([_as_tensor(tensors[e.key]).detach() for e in self.flat_entries], device)

    def flatten_module(self, module: torch.nn.Module, *, grad: bool = False) -> torch.Tensor:
        """The vector of ``module`` in this layout's view, on the module's device: a
        detached copy, or with ``grad`` a differentiable function of its parameters (a
        penalty on the flat model). ValueError if the module does not fit."""
        tensors = _module_tensors(module, self.buffers, keep_vars=grad)
        problem = self.mismatch(tensors)
        if problem:
            raise ValueError(f"the module does not fit the layout: {problem}")
        parts = [tensors[e.key] for e in self.flat_entries]
        return self._cat(parts if grad else [p.detach() for p in parts], None)

    def _cat(self, parts: list[torch.Tensor], device: torch.device | str | None) -> torch.Tensor:
        if not parts:
            return torch.empty(0, dtype=self.dtype, device=device)
        return torch.cat([p.reshape(-1).to(device=device, dtype=self.dtype) for p in parts])

    # ------------------------------------------------------------------ unflatten
    def check_vector(self, vector: torch.Tensor) -> None:
        """ValueError unless ``vector`` is 1-D with :attr:`size` values."""
        if vector.dim() != 1 or vector.numel() != self.size:
            raise ValueError(
                f"flat vector has shape {tuple(vector.shape)} but the layout needs a 1-D "
                f"vector of {self.size} values"
            )

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """The vector's entries by key, each shaped and cast to its own dtype, on the
        vector's device (views of ``vector`` where the dtype is the vector's: clone
        before changing either). The non-floating entries are not in it."""
        self.check_vector(vector)
        return {
            e.key: vector[e.span].reshape(e.shape).to(e.dtype)  # type: ignore[arg-type]
            for e in self.flat_entries
        }

    def load_module(self, module: torch.nn.Module, vector: torch.Tensor) -> None:
        """Copy ``vector`` into ``module``'s tensors of this view, in place (each entry
        converted to its tensor's dtype and device; the module keeps its own copy, and
        its entries outside the vector, e.g. BatchNorm's batch counters, stay as they
        are). ValueError if the vector's length or the module does not fit."""
        self.check_vector(vector)
        tensors = _module_tensors(module, self.buffers)
        problem = self.mismatch(tensors)
        if problem:
            raise ValueError(f"the module does not fit the layout: {problem}")
        with torch.no_grad():
            for e in self.flat_entries:
                tensors[e.key].copy_(vector[e.span].reshape(e.shape))

    def __repr__(self) -> str:
        view = "state" if self.buffers else "parameters"
        return (
            f"ModelLayout({view}: {len(self.flat_entries)} of {len(self.entries)} entries, "
            f"{self.size} {_name(self.dtype)} values)"
        )


def _module_tensors(
    module: torch.nn.Module, buffers: bool, keep_vars: bool = False
) -> dict[str, torch.Tensor]:
    """The module's tensors of one view, by state-dict key: its state dict (tensors that
    share the module's storage), or its parameters."""
    if buffers:
        return dict(module.state_dict(keep_vars=keep_vars))
    return dict(module.named_parameters())


def _as_tensor(value: TensorLike) -> torch.Tensor:
    """``value`` as a tensor (a numpy array shares its memory)."""
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


def _torch_dtype(dtype: torch.dtype | np.dtype | str) -> torch.dtype | str:
    """The torch dtype of a torch or numpy dtype (or its name); numpy's name for an
    array type torch does not have."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        numpy_dtype = np.dtype(dtype)
    except TypeError:
        return str(dtype)
    try:
        return torch.from_numpy(np.empty(0, dtype=numpy_dtype)).dtype
    except TypeError:
        return numpy_dtype.name


def _name(dtype: torch.dtype | str) -> str:
    """``float32`` for ``torch.float32``."""
    return str(dtype).removeprefix("torch.")
