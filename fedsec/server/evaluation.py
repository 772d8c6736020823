"""The server's central evaluation of each round's global model."""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedsec.adversary import Adversary
from fedsec.task import FederatedTask, resolve_device
from fedsec_core.training import evaluate


class CentralEvaluator:
    """Server-side evaluation of a global model.

    Main accuracy (MA) on the task's test split and, when the attack has a backdoor test
    set, backdoor accuracy (BA): the share of those inputs classified as the target. An
    ``adversary`` stage that holds the attackers' trigger (``a3fl``) gives the backdoor
    test set stamped with its current trigger.
    """

    def __init__(self, task: FederatedTask, adversary: Adversary | None = None) -> None:
        self.model = task.new_model()
        self.device = resolve_device(task.config.engine.device)
        self.x, self.y = task.test_data()
        self.backdoor = task.attack.backdoor_test_set(task.dataset) if task.attack else None
        self.adversary = adversary

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        stats = evaluate(self.model, self.x, self.y, device=self.device)
        out = {"main_accuracy": stats.accuracy, "test_loss": stats.loss}
        backdoor = self.backdoor
        if self.adversary is not None:
            backdoor = self.adversary.backdoor_test_set(backdoor)
        if backdoor is not None:
            x, target = backdoor
            out["backdoor_accuracy"] = evaluate(self.model, x, target, device=self.device).accuracy
        return out
