"""The server's round loop, shared by every engine.

Each round: choose clients by partition id with the seeded sampler, let the strategy
build its messages (``configure_train``) over a view of the grid that holds only those
clients (the round's attackers' messages carry the facts they are told), send them, hand
the replies, in partition order, to the strategy's ``aggregate_round``, evaluate the new
global model centrally and log the round with the verdicts it returned.

The strategy is a :class:`defenses.DefenseStrategy` around the configured rule (built
by ``defenses.build_rule``). It sees only the replies; which clients were malicious is
known to the loop alone. The loop knows no attack and no rule by name: it asks them
(``fedsec_core.hooks``) for the stage the attack needs in the loop, the resources the rule
needs (a root update, a model probe) and the rule's step after the last round.

By layer (``lint-imports`` checks it): ``loop`` (the federation: setup, resume, every
round, checkpoints) over ``round`` (one round's messages, replies, the attack's stage,
the aggregation and its record) over ``nodes`` (partition ids and the round's grid),
``resources`` (what a rule declares it needs), ``evaluation`` (central MA/BA),
``progress`` (verdict counts and the printed line) and ``optimizer`` (the server's step
on the aggregate: ``train.server_optimizer``, ``train.server_lr``,
``train.server_momentum``).
"""

from fedsec.server.evaluation import CentralEvaluator
from fedsec.server.loop import FederationResult, run_federation
from fedsec.server.nodes import IDENTIFY, RoundGrid, discover_partitions
from fedsec.server.progress import _progress_line, detection_counts
from fedsec.server.resources import RootTrainer, final_model, model_probe
from fedsec.server.round import RoundOutcome, _with_facts, run_round

__all__ = [
    "IDENTIFY",
    "CentralEvaluator",
    "FederationResult",
    "RootTrainer",
    "RoundGrid",
    "RoundOutcome",
    "_progress_line",
    "_with_facts",
    "detection_counts",
    "discover_partitions",
    "final_model",
    "model_probe",
    "run_federation",
    "run_round",
]
