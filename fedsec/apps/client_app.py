"""The ClientApp: answers who it is, and trains the global model on its partition.

``train_together`` (message type ``train.batch``) is the same training for many honest
clients at once (``fedsec.batched``): the server sends a round's honest clients as one
message to one node when the config batches them (``engine.batch_clients``,
``fedsec.engines.batching``); its reply holds, per client, what ``local_train``'s would.
"""

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

from fedsec.batched import train_clients
from fedsec.config import ExperimentConfig
from fedsec.engines.batching import BATCH, PARTITION_IDS, arrays_key, metrics_key
from fedsec.task import (
    ATTACKER_INDEX,
    BENIGN_STATE,
    EVASION_SCALE,
    TRIGGER,
    FederatedTask,
    get_task,
)
from fedsec.training import TrainStats, train

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
    if _is_attacker(task, config_record):
        # the server made this client one of the round's attackers (fedsec.server.run_round)
        ctx = task.attack_context(pid, server_round, config_record)
        attack_reply = task.attack.update(model, ctx, kwargs)
        stats, benign_state = attack_reply.stats, attack_reply.benign_state
        trigger, scale = attack_reply.trigger, attack_reply.evasion_scale
        records = attack_reply.records
    else:
        x, y = task.client_data(pid)
        stats, benign_state, trigger, scale = train(model, x, y, **kwargs), None, None, None
        records = {}
    return _train_reply(msg, model.state_dict(), stats, pid, benign_state, trigger, scale, records)


def _is_attacker(task: FederatedTask, config_record: ConfigRecord) -> bool:
    """The server made this client one of the round's attackers (its facts are in the
    message, ``fedsec.server.run_round``)."""
    return task.attack is not None and ATTACKER_INDEX in config_record


def _train_reply(
    msg: Message,
    state: dict[str, torch.Tensor],
    stats: TrainStats,
    pid: int,
    benign_state=None,
    trigger=None,
    scale=None,
    records=None,
) -> Message:
    """The reply to train message ``msg``: the trained ``state`` and the client's metrics."""
    content = _train_content(state, stats, pid, benign_state, trigger, scale, records)
    return Message(content, reply_to=msg)


def _train_content(
    state: dict[str, torch.Tensor],
    stats: TrainStats,
    pid: int,
    benign_state=None,
    trigger=None,
    scale=None,
    records=None,
) -> RecordDict:
    """A train reply's content: the trained ``state`` and the client's metrics."""
    metrics = {"num-examples": stats.num_examples, "train_loss": stats.loss, "partition-id": pid}
    if scale is not None:  # logged by the server loop, which removes it
        metrics[EVASION_SCALE] = scale
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)})
    if benign_state is not None:  # for the server loop's adversary stage, which removes it
        content[BENIGN_STATE] = ArrayRecord(benign_state)
    if trigger is not None:  # the attackers' shared trigger (a3fl), likewise removed there
        content[TRIGGER] = ArrayRecord({"trigger": trigger})
    for name, arrays in (records or {}).items():  # for the attack's server stage, likewise
        content[name] = ArrayRecord(arrays)
    return content


@app.train("batch")
def train_together(msg: Message, context: Context) -> Message:
    """Train the honest clients a batch message names together (``fedsec.batched``).

    The server sends one such message a round (``fedsec.engines.batching``): the global
    model, the round's ConfigRecord, and the clients' partition ids; every simulated node
    can load any partition. Each client trains with ``local_train``'s settings
    (``FederatedTask.train_kwargs``: its seed, the round's lr), and the reply holds, per
    client, the ArrayRecord and MetricRecord its own ``local_train`` reply would hold. If
    the training raises, the engine turns that into the batch's error reply, which the
    server gives each of its clients.
    """
    config = ExperimentConfig.from_flat(context.run_config)
    torch.set_num_threads(config.engine.client_num_cpus)
    task = get_task(config)
    pids = [int(p) for p in msg.content[BATCH][PARTITION_IDS]]
    server_round = int(msg.content["config"]["server-round"])
    content = RecordDict()
    for pid, (state, stats) in zip(pids, _train_group(task, msg, server_round, pids), strict=True):
        client = _train_content(state, stats, pid)
        content[arrays_key(pid)] = client["arrays"]
        content[metrics_key(pid)] = client["metrics"]
    return Message(content, reply_to=msg)


def _train_group(
    task: FederatedTask, msg: Message, server_round: int, pids: list[int]
) -> list[tuple[dict[str, torch.Tensor], TrainStats]]:
    """Train clients ``pids`` from the global model of ``msg`` together."""
    model = task.new_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    kwargs = [task.train_kwargs(server_round, pid) for pid in pids]
    first = kwargs[0]
    results = train_clients(
        model,
        [task.client_data(pid) for pid in pids],
        epochs=first["epochs"],
        batch_size=first["batch_size"],
        lr=first["lr"],
        momentum=first["momentum"],
        weight_decay=first["weight_decay"],
        seeds=[k["seed"] for k in kwargs],
        device=first["device"],
    )
    keys = list(model.state_dict())  # no buffers (fedsec.batched.supports): the parameters
    return [({k: r.params[k] for k in keys}, r.stats) for r in results]
