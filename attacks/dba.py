"""``dba``: the distributed backdoor attack of Xie et al. (2020, ICLR).

The global pattern trigger (:mod:`attacks.triggers`: ``num_parts`` one-pixel-high bars
of ``trigger_size`` pixels, two per row, ``trigger_gap`` pixels apart; with the defaults
DBA's four bars at rows 0 and 3, columns 0-3 and 6-9) is split into its bars: the
attacker at position i of the attacker pool stamps only bar ``i % num_parts`` on
``poison_fraction`` of its own examples, relabelled to the target, and trains with plain
local SGD. Its update is multiplied by ``scale`` (Xie et al.'s scale factor gamma,
``w <- w0 + scale (w - w0)``; 1 = unscaled, the default). Backdoor accuracy is measured
with the FULL trigger (all parts) on test images not of the target class: the parts
must combine in the global model, which is the point of the attack.

Its backdoor key (:meth:`DBA.backdoor_key`, which pairs a run with its no-attack
baseline in reports) names the global trigger it is measured on: with the default 4
parts that is the pixel pattern of ``pixel-replacement`` (the same key, so a
``none-trigger`` baseline serves both, as in every committed report), with any other
``num_parts`` a trigger of its own (``num_parts`` is in the key).

Where the authors' code (``AI-secure/DBA``) differs: its attackers train with their
own lr, epochs and step schedule and poison a fixed number of every batch
(``attack.poison_lr``, ``poison_local_epochs``, ``poison_lr_schedule = "step"``,
``poison_scope = "batch"``, :mod:`attacks.backdoor`, :mod:`attacks.triggers`), and a
lone adversary (``adversary_list`` of one: ``adversarial_index = -1``) stamps the FULL
trigger (its "centralized attack"). Here by default (``lone_attacker = "part"``) the
attacker at pool position 0 stamps part 0 whatever the pool's size, as the paper's
rule "attacker i stamps part i" reads; ``lone_attacker = "full"`` stamps the full
trigger when the attacker pool has one member, as the authors' code.

``scale`` is the authors' ``scale_weights_poison``, but what it does depends on the
server: theirs averages the round's updates equally (``w += eta / no_models x sum``), so
their ``scale = 100`` with ``eta = 0.1`` and 10 clients a round moves the model by
exactly the attacker's own update (model replacement). fedsec's FedAvg weighs clients
by examples by default, where the same shot moves it by ``scale x train.server_lr x``
the attacker's share of the round's examples, more or less than 1 as that share is above
or below 1/10; ``defense.weighting = "equal"`` is the authors' server
(``experiments/dba/shot_scale.py`` measures the factor run by run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.base import AttackContext
from attacks.procedures import scale_update
from attacks.triggers import GLOBAL_PARTS, PatternTriggerAttack
from fedsec_core.errors import ConfigError
from fedsec_core.params import at_least, one_of, param, positive


@dataclass(kw_only=True, eq=False)
class DBA(PatternTriggerAttack):
    name = "dba"
    num_parts: int = param(4, at_least(1), ">= 1 (trigger parts)")
    scale: float = param(1.0, positive, "> 0")
    lone_attacker: str = param(
        "part", one_of("part", "full"), "one of 'part', 'full' (what a pool of one stamps)"
    )

    def check(self, config, dataset) -> None:
        super().check(config, dataset)
        if self.trigger != "pattern":
            raise ConfigError(
                "dba splits the pattern trigger into bars, one per attacker; "
                "attack.trigger = 'blended' is for pixel-replacement, pgd and neurotoxin"
            )

    @classmethod
    def backdoor_key(cls, target_label: int, params) -> tuple | None:
        """The pattern trigger's key, and ``("num_parts", n)`` when the global trigger
        has n != 4 bars (then it is not the pixel pattern); with 4 parts exactly the key
        of ``pixel-replacement``, so committed reports keep their pairing."""
        key = super().backdoor_key(target_label, params)
        parts = params.get("num_parts", cls.parameters()["num_parts"])
        return key if parts == GLOBAL_PARTS else (*key, ("num_parts", parts))

    @property
    def num_parts_of_global(self) -> int:  # the global trigger has num_parts bars
        return self.num_parts

    def part_index(self, ctx: AttackContext) -> int:
        """The bar this attacker stamps: its position in the attacker pool, mod num_parts."""
        return ctx.attacker_index % self.num_parts

    def client_trigger(self, ctx: AttackContext) -> np.ndarray:
        """Its part; the full trigger for a pool of one with ``lone_attacker = "full"``."""
        _, height, width = ctx.input_shape
        if self.lone_attacker == "full" and ctx.num_attackers == 1:
            return self.global_trigger(height, width)
        return self.parts(height, width)[self.part_index(ctx)]

    def transform_update(self, model, global_flat, ctx, stats) -> None:
        if self.scale != 1.0:
            scale_update(model, global_flat, self.scale)
