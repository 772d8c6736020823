"""What an attack is: a data transform, a training procedure and an update transform.

A malicious client runs :meth:`Attack.local_update` instead of honest training:

1. ``attacker_data``: the examples it trains on (its own data, poisoned: edge cases
   relabelled, a trigger stamped, labels flipped, ...);
2. ``train``: the training procedure (plain SGD by default; PGD projects onto an L2
   ball every few steps);
3. ``transform_update``: what it does to its trained model before replying (model
   replacement scales the update, sign flip negates it, ...).

Besides, an attack may edit the data set before it is partitioned
(``edit_dataset``: e.g. take tail examples away from every honest client) and names the
inputs its success is measured on (``backdoor_test_set``: backdoor accuracy is the share
of them the global model classifies as the target).

Everything the platform needs to know about *when* a client is malicious lives in the
``[attack]`` schedule keys (``fedsec_core.sampling.AttackSchedule``); an Attack subclass only
says *what* a malicious client does. Parameters follow scikit-learn's convention: the
constructor stores them, :meth:`check` judges them (and the data set) in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from fedsec_core.errors import ConfigError
from fedsec_core.params import check_parameters, parameter_defaults
from fedsec_core.training import TrainStats, flatten_params, train

if TYPE_CHECKING:  # pragma: no cover
    from fedsec.config import ExperimentConfig
    from fedsec_core.data import Dataset
    from fedsec_core.hooks import ServerStage, StageResources


def num_classes(config: ExperimentConfig, dataset: Dataset | None) -> int:
    """Classes of the experiment's data set, read from the registry when not loaded."""
    if dataset is not None:
        return dataset.num_classes
    from fedsec_core.data import num_classes as registry_num_classes

    return registry_num_classes(config.data.name)


@dataclass(frozen=True)
class AttackContext:
    """Everything a malicious client knows when it trains in a round, and nothing more.

    Three sources, built by ``FederatedTask.attack_context`` on the client:

    - its own data: ``examples``, the clean training examples of its partition, and the
      data set's ``input_shape`` and ``num_classes``;
    - what the config makes public: ``defense_name`` and ``defense_params``, the server's
      rule (Kerckhoffs: a defense must hold when the attacker knows it);
    - the round's facts the server sends in the train message's ConfigRecord
      (``fedsec_core.protocol.AttackerFacts``): ``attacker_index`` (its position in the
      attacker pool, e.g. which DBA trigger part it stamps), ``num_attackers`` (the pool's
      size) and ``round_examples``, N_round, the examples of every client sampled this
      round (the attackers' poisoned sets included): model replacement scales by
      N_round / N_attacker, the knowledge Bagdasaryan et al. and Wang et al. grant the
      attacker; ``round_clients``, how many clients the round has. No client recomputes
      the server's sampling;
    - its seeds and device: ``data_seed`` fixes its poisoned data (the same in every
      round), ``seed`` its randomness in this round; ``device`` is where it trains;
    - ``trigger``: for an attack whose trigger the attackers carry from round to round
      (``a3fl``), the current one, (C, H, W), which the server loop's adversary stage
      holds between rounds and sends in the train message (``fedsec_core.protocol.TRIGGER``);
      None for every other attack, and before the server has sent one;
    - ``facts``: every fact of the round as the train message's ConfigRecord holds it,
      those the attack's server stage adds (:meth:`Attack.server_stage`,
      ``ServerStage.facts``) included: how a stateful attack's stage tells its clients
      what it holds.
    """

    server_round: int
    partition_id: int
    attacker_index: int
    num_attackers: int
    round_examples: int
    round_clients: int
    target_label: int
    examples: tuple[torch.Tensor, torch.Tensor]
    input_shape: tuple[int, ...]
    num_classes: int
    data_seed: int
    seed: int
    device: torch.device
    defense_name: str = "fedavg"
    defense_params: dict[str, Any] = field(default_factory=dict)
    trigger: torch.Tensor | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class AttackReply:
    """What a malicious client's training gives its reply: the training stats and, for an
    attack its server stage finishes (:meth:`Attack.server_stage`), the
    attacker's own benign model as a state dict, sent beside its update and removed
    before the defense sees the round; for an attack whose trigger the attackers carry
    from round to round (``a3fl``), the trigger it used, likewise removed; for an attacker
    that scaled its own update (``evasion = "scaling"``, partial knowledge), the scale
    it sent, which the server logs and removes. ``records``: more named records for the
    attack's server stage (name -> a dict of tensors, sent as an ArrayRecord beside the
    update), which the stage must take out before the defense sees the round."""

    stats: TrainStats
    benign_state: dict[str, torch.Tensor] | None = None
    trigger: torch.Tensor | None = None
    evasion_scale: float | None = None
    records: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass(kw_only=True, eq=False)
class Attack:
    """Base class: a client that trains honestly on its own data.

    Subclasses are ``@dataclass(kw_only=True)`` classes: they set ``name`` (the config
    name), declare each parameter as a field made with :func:`fedsec_core.params.param` (its
    default, its check and the words for a valid value; the annotation is its type),
    and override the hooks they change. The constructor only stores values;
    :meth:`validate` judges the parameters, :meth:`check` what depends on the data set.
    """

    name: ClassVar[str] = ""
    default_target: ClassVar[int | None] = None  # None: the config must give target_label
    #: The parameters, besides the target, that decide which inputs ``backdoor_test_set``
    #: returns (see :meth:`backdoor_key`).
    backdoor_test_params: ClassVar[tuple[str, ...]] = ()

    #: ``attack.target_label`` (a schedule-level key; -1: the attack's default target).
    target_label: int = -1

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """The attack's parameters (the ``[attack]`` keys it takes) with their defaults."""
        return parameter_defaults(cls)

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ConfigError for a parameter of the wrong type or out of its declared range."""
        check_parameters(self, lambda name: f"attack.{name}")

    def check(self, config: ExperimentConfig, dataset: Dataset | None) -> None:
        """Raise ConfigError for what the data set rules out (:meth:`validate` has judged
        each parameter alone); ``dataset`` is None for a cheap check."""
        if self.target_label == -1 and self.default_target is None:
            raise ConfigError(f"attack {self.name!r} needs attack.target_label")
        classes = num_classes(config, dataset)
        if not 0 <= self.target <= classes - 1:
            raise ConfigError(
                f"attack.target_label must be a class of {config.data.name} "
                f"(0..{classes - 1}), got {self.target}"
            )

    @property
    def target(self) -> int:
        return self.default_target if self.target_label == -1 else self.target_label

    @classmethod
    def backdoor_key(cls, target_label: int, params: dict[str, Any]) -> tuple | None:
        """What decides this attack's backdoor test set, from its config values alone: the
        class that defines ``backdoor_test_set``, the target and ``backdoor_test_params``.
        Two runs with equal keys measure backdoor accuracy on the same inputs (e.g. DBA
        and model replacement on the full pattern trigger), so a no-attack run can serve
        as the other's baseline. None for an untargeted attack."""
        owner = next(k for k in cls.__mro__ if "backdoor_test_set" in k.__dict__)
        if owner is Attack:
            return None
        return (
            owner.__name__,
            target_label,
            *(params.get(p, cls.parameters()[p]) for p in cls.backdoor_test_params),
        )

    # ------------------------------------------------------------ the server loop
    def server_stage(self, resources: StageResources) -> ServerStage | None:
        """The stage this attack needs in the server loop (a
        :class:`fedsec_core.hooks.ServerStage`), built from what the server offers
        (``resources``: the config, the data set, the server's rule and model probe);
        None (the default): it acts on its clients alone.

        The server loop asks every attack this once per run and never looks at what the
        attack is. A subclass that needs a stage returns it; one that adds a stage to
        its parent's wraps ``super().server_stage(resources)`` (``a3fl``'s trigger stage
        holds the scaling stage of the backdoor it is). Build the stage in a module that
        this method imports, so that validating a config loads no Flower."""
        return None

    # ------------------------------------------------------------ data, evaluation
    def edit_dataset(self, dataset: Dataset, seed: int) -> Dataset:
        """The data set the federation is built from (before partitioning)."""
        return dataset

    def attacker_data(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples the malicious client of ``ctx`` trains on (its own, unchanged here)."""
        return ctx.examples

    def num_examples(self, partition_size: int) -> int:
        """How many examples :meth:`attacker_data` returns for a partition of this size: what
        the attacker reports, and what the server counts into N_round."""
        return partition_size

    def backdoor_test_set(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Inputs and target labels that backdoor accuracy is measured on (None: untargeted)."""
        return None

    # ------------------------------------------------------------------- training
    def update(
        self, model: torch.nn.Module, ctx: AttackContext, train_kwargs: dict[str, Any]
    ) -> AttackReply:
        """What a scheduled malicious client runs: :meth:`local_update`, wrapped by
        attacks that add a step around it (``attacks.backdoor``'s evasion)."""
        return AttackReply(self.local_update(model, ctx, train_kwargs))

    def local_update(
        self, model: torch.nn.Module, ctx: AttackContext, train_kwargs: dict[str, Any]
    ) -> TrainStats:
        """Train ``model`` (holding the global model) maliciously, in place."""
        x, y = self.attacker_data(ctx)
        global_flat = flatten_params(model).detach().clone()
        stats = self.train(model, x, y, global_flat, ctx, train_kwargs)
        self.transform_update(model, global_flat, ctx, stats)
        return stats

    def train(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        global_flat: torch.Tensor,
        ctx: AttackContext,
        train_kwargs: dict[str, Any],
    ) -> TrainStats:
        """The training procedure; plain local SGD unless overridden."""
        return train(model, x, y, **train_kwargs)

    def transform_update(
        self,
        model: torch.nn.Module,
        global_flat: torch.Tensor,
        ctx: AttackContext,
        stats: TrainStats,
    ) -> None:
        """Change the trained model before it is sent; nothing unless overridden."""
