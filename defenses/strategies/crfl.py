"""CRFL (Xie, Chen, Chen, Li; ICML 2021) as a Flower strategy."""

from __future__ import annotations

from typing import Any

from ..adapter import DefenseStrategy
from ..rules import CRFLRule


class CRFL(DefenseStrategy):
    """FedAvg, then the global model clipped to L2 norm ``norm_bound`` and
    ``N(0, noise_std^2)`` added to every parameter, each round (Xie et al., "CRFL:
    Certifiably Robust Federated Learning against Backdoor Attacks", ICML 2021).

    The other parameters describe the certification by parameter smoothing that fedsec's
    server runs on the final model (the rule's post-training step,
    :meth:`defenses.rules.CRFLRule.after_training`); the strategy itself only aggregates.

    Parameters
    ----------
    norm_bound : float (default: 15.0)
        The global model's L2 bound (the reference's MNIST ``param_clip_thres``).
    noise_std : float (default: 0.01)
        Noise added to the global model each round (the reference's ``sigma_param``).
    num_samples : int (default: 100)
        Noisy models drawn for the certification; 0 skips it.
    alpha : float (default: 0.001)
        Probability that an example's certificate is wrong.
    smoothing_std : float or None (default: None, = noise_std)
        Noise of the smoothing at certification.
    attack_scale : float (default: 10.0)
        ``gamma``, the update scaling the certificate allows an attacker.
    poison_fraction : float (default: 0.05)
        ``q_B / n_B``, the poisoned share of an attacker's batch the certificate allows.
    lipschitz : float or None (default: None, = sqrt(2 + 2 norm_bound + norm_bound^2))
        ``L_Z`` of the radius.
    radii : str (default: "0,0.0001,0.0003,0.001,0.003,0.01,0.1,1")
        The radii at which certified accuracy is reported.
    seed : int (default: 0)
        See :class:`~defenses.rules.CRFLRule`.
    **strategy_kwargs
        ``device`` and Flower ``FedAvg`` parameters, see
        :class:`~defenses.adapter.DefenseStrategy`.
    """

    rule_class = CRFLRule

    def __init__(
        self,
        norm_bound: float = 15.0,
        noise_std: float = 0.01,
        num_samples: int = 100,
        alpha: float = 0.001,
        smoothing_std: float | None = None,
        attack_scale: float = 10.0,
        poison_fraction: float = 0.05,
        lipschitz: float | None = None,
        radii: str = "0,0.0001,0.0003,0.001,0.003,0.01,0.1,1",
        seed: int = 0,
        **strategy_kwargs: Any,
    ) -> None:
        rule = CRFLRule(
            norm_bound=norm_bound,
            noise_std=noise_std,
            num_samples=num_samples,
            alpha=alpha,
            smoothing_std=smoothing_std,
            attack_scale=attack_scale,
            poison_fraction=poison_fraction,
            lipschitz=lipschitz,
            radii=radii,
            seed=seed,
        )
        super().__init__(rule, **strategy_kwargs)
