"""The ClientApp: answers who it is, and trains the global model on its partition."""

from __future__ import annotations

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from fedsec.config import ExperimentConfig
from fedsec.task import ATTACKER_INDEX, BENIGN_STATE, EVASION_SCALE, TRIGGER, get_task
from fedsec.training import train

app = ClientApp()


def partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


@app.query("identify")
def identify(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition id (node ids say nothing about it)."""
    info = ConfigRecord(
        {
            "partition-id": partition_id(context),
            "num-partitions": int(context.node_config["num-partitions"]),
        }
    )
    return Message(RecordDict({"node": info}), reply_to=msg)


@app.train()
def local_train(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's data (maliciously, if scheduled)."""
    config = ExperimentConfig.from_flat(context.run_config)
    torch.set_num_threads(config.engine.client_num_cpus)
    task = get_task(config)
    pid = partition_id(context)
    server_round = int(msg.content["config"]["server-round"])

    model = task.new_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    kwargs = task.train_kwargs(server_round, pid)
    config_record = msg.content["config"]
    if task.attack is not None and ATTACKER_INDEX in config_record:
        # the server made this client one of the round's attackers (fedsec.server.run_round)
        ctx = task.attack_context(pid, server_round, config_record)
        attack_reply = task.attack.update(model, ctx, kwargs)
        stats, benign_state = attack_reply.stats, attack_reply.benign_state
        trigger, scale = attack_reply.trigger, attack_reply.evasion_scale
    else:
        x, y = task.client_data(pid)
        stats, benign_state, trigger, scale = train(model, x, y, **kwargs), None, None, None
    metrics = {"num-examples": stats.num_examples, "train_loss": stats.loss, "partition-id": pid}
    if scale is not None:  # logged by the server loop, which removes it
        metrics[EVASION_SCALE] = scale
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    if benign_state is not None:  # for the server loop's adversary stage, which removes it
        content[BENIGN_STATE] = ArrayRecord(benign_state)
    if trigger is not None:  # the attackers' shared trigger (a3fl), likewise removed there
        content[TRIGGER] = ArrayRecord({"trigger": trigger})
    return Message(content, reply_to=msg)
