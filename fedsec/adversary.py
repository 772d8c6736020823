"""The server loop's adversary: the stage an attack declares, asked for by no name.

An attack that needs to act in the server loop (the colluding attacks' crafting, the
full-knowledge scaling evasion, A3FL's trigger, or any plug-in's) says so through
``Attack.server_stage`` and builds its :class:`fedsec_core.hooks.ServerStage` itself (the
stages of fedsec's attacks live in ``attacks/stages.py``). The server loop
(``fedsec.server``) asks once per run, with what it can offer
(:class:`fedsec_core.hooks.StageResources`), and then runs the stage in every round that has
attackers, after the replies arrive and before the defense sees them.
"""

from __future__ import annotations

from fedsec_core.hooks import ServerStage, StageResources

#: A stage of the server loop: (global model, replies, node -> partition, round size,
#: attackers) -> what it did.
Adversary = ServerStage


def round_adversary(
    attack, config=None, model_probe=None, dataset=None, server_rule=None
) -> Adversary | None:
    """The stage ``attack`` declares for the server loop (``attack.server_stage``), else
    None (no attack, or one that acts on its clients alone). The server offers the
    experiment ``config``, the task's ``dataset``, its live ``server_rule`` and its
    ``model_probe`` (when its rule inspects models)."""
    if attack is None:
        return None
    return attack.server_stage(
        StageResources(
            config=config, dataset=dataset, server_rule=server_rule, model_probe=model_probe
        )
    )
