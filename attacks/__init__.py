"""Attacks: what malicious clients do. See README.md in this folder and ``attacks.base``.

``build_attack(config)`` returns the configured :class:`~attacks.base.Attack` (or None
for ``[attack] name = "none"``) after checking its parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attacks.a3fl import A3FL
from attacks.alie import ALIE
from attacks.base import Attack, AttackContext
from attacks.dba import DBA
from attacks.edge_case import EdgeCase
from attacks.edge_case_pgd import EdgeCasePGD
from attacks.edge_case_pgd_replacement import EdgeCasePGDReplacement
from attacks.gaussian import GaussianNoise
from attacks.ipm import IPM
from attacks.label_flip import LabelFlip
from attacks.min_max import MinMax
from attacks.min_sum import MinSum
from attacks.neurotoxin import Neurotoxin
from attacks.pgd import PatternPGD
from attacks.pixel_replacement import PixelReplacement
from attacks.sign_flip import SignFlip
from fedsec_core.errors import ConfigError
from fedsec_core.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from fedsec.config import ExperimentConfig
    from fedsec_core.data import Dataset

ATTACK_CLASSES: tuple[type[Attack], ...] = (
    EdgeCase,
    EdgeCasePGD,
    EdgeCasePGDReplacement,
    PixelReplacement,
    PatternPGD,
    DBA,
    Neurotoxin,
    A3FL,
    LabelFlip,
    GaussianNoise,
    SignFlip,
    ALIE,
    IPM,
    MinMax,
    MinSum,
)
ATTACKS: Registry[type[Attack]] = Registry("attack.name", {cls.name: cls for cls in ATTACK_CLASSES})

__all__ = ["ATTACKS", "Attack", "AttackContext", "attack_names", "backdoor_key", "build_attack"]


def attack_names() -> list[str]:
    """Every valid ``attack.name``: "none" (no attacker), then the registered attacks."""
    return ["none", *ATTACKS.names()]


def backdoor_key(attack: dict[str, Any]) -> tuple | None:
    """:meth:`Attack.backdoor_key` of an ``[attack]`` table as config.toml holds it
    (None for no attack, an untargeted one or an unknown name)."""
    cls = ATTACKS.get(attack.get("name", "none"))
    if cls is None:
        return None
    params = {k: v for k, v in attack.items() if k in cls.parameters()}
    return cls.backdoor_key(int(attack.get("target_label", -1)), params)


def build_attack(config: ExperimentConfig, dataset: Dataset | None = None) -> Attack | None:
    """The attack ``config`` names, its parameters checked (against ``dataset`` if given)."""
    a = config.attack
    if a.name == "none":
        if a.params:
            raise ConfigError(f"attack.{sorted(a.params)[0]} given but attack.name is 'none'")
        return None
    cls = ATTACKS.get(a.name)
    if cls is None:
        raise ConfigError(f"unknown attack.name {a.name!r}; valid: {', '.join(attack_names())}")
    valid = cls.parameters()
    for key in a.params:
        if key not in valid:
            raise ConfigError(
                f"unknown key attack.{key} for attack {a.name!r}; its parameters: "
                + (", ".join(sorted(valid)) or "none")
            )
    attack = cls(target_label=a.target_label, **a.params)
    attack.validate()
    attack.check(config, dataset)
    return attack
