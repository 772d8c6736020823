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
from fedsec.task import FederatedTask, get_task
from fedsec_core.protocol import (
    ARRAYS,
    BATCH,
    BATCH_ACTION,
    BENIGN_STATE,
    CONFIG,
    EVASION_SCALE,
    IDENTIFY,
    METRICS,
    NODE,
    NUM_EXAMPLES,
    NUM_PARTITIONS,
    PARTITION_ID,
    PARTITION_IDS,
    SERVER_ROUND,
    TRAIN_LOSS,
    TRIGGER,
    TRIGGER_ARRAY,
    AttackerFacts,
    arrays_key,
    metrics_key,
)
from fedsec_core.training import TrainStats, train

app = ClientApp()


def partition_id(context: Context) -> int:
    return int(context.node_config[PARTITION_ID])


@app.query(IDENTIFY)
def identify(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition id (node ids say nothing about it)."""
    info = ConfigRecord(
        {
            PARTITION_ID: partition_id(context),
            NUM_PARTITIONS: int(context.node_config[NUM_PARTITIONS]),
        }
    )
    return Message(RecordDict({NODE: info}), reply_to=msg)


@app.train()
def local_train(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's data (maliciously, if scheduled)."""
    config = ExperimentConfig.from_flat(context.run_config)
    torch.set_num_threads(config.engine.client_num_cpus)
    task = get_task(config)
    pid = partition_id(context)
    server_round = int(msg.content[CONFIG][SERVER_ROUND])

    model = task.new_model()
    model.load_state_dict(msg.content[ARRAYS].to_torch_state_dict())
    spec = task.training_spec(server_round, pid)
    config_record = msg.content[CONFIG]
    if _is_attacker(task, config_record):
        # the server made this client one of the round's attackers (fedsec.server.run_round)
        ctx = task.attack_context(pid, server_round, AttackerFacts.from_config(config_record))
        attack_reply = task.attack.update(model, ctx, spec.to_dict())
        stats, benign_state = attack_reply.stats, attack_reply.benign_state
        trigger, scale = attack_reply.trigger, attack_reply.evasion_scale
        records = attack_reply.records
    else:
        x, y = task.client_data(pid)
        stats, benign_state, trigger, scale = train(model, x, y, **spec.to_dict()), None, None, None
        records = {}
    return _train_reply(msg, model.state_dict(), stats, pid, benign_state, trigger, scale, records)


def _is_attacker(task: FederatedTask, config_record: ConfigRecord) -> bool:
    """The server made this client one of the round's attackers (its facts are in the
    message, ``fedsec.server.run_round``)."""
    return task.attack is not None and AttackerFacts.told(config_record)


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
    metrics = {NUM_EXAMPLES: stats.num_examples, TRAIN_LOSS: stats.loss, PARTITION_ID: pid}
    if scale is not None:  # logged by the server loop, which removes it
        metrics[EVASION_SCALE] = scale
    content = RecordDict({ARRAYS: ArrayRecord(state), METRICS: MetricRecord(metrics)})
    if benign_state is not None:  # for the server loop's adversary stage, which removes it
        content[BENIGN_STATE] = ArrayRecord(benign_state)
    if trigger is not None:  # the attackers' shared trigger (a3fl), likewise removed there
        content[TRIGGER] = ArrayRecord({TRIGGER_ARRAY: trigger})
    for name, arrays in (records or {}).items():  # for the attack's server stage, likewise
        content[name] = ArrayRecord(arrays)
    return content


@app.train(BATCH_ACTION)
def train_together(msg: Message, context: Context) -> Message:
    """Train the honest clients a batch message names together (``fedsec.batched``).

    The server sends one such message a round (``fedsec.engines.batching``): the global
    model, the round's ConfigRecord, and the clients' partition ids; every simulated node
    can load any partition. Each client trains with ``local_train``'s settings
    (``FederatedTask.training_spec``: its seed, the round's lr), and the reply holds, per
    client, the ArrayRecord and MetricRecord its own ``local_train`` reply would hold. If
    the training raises, the engine turns that into the batch's error reply, which the
    server gives each of its clients.
    """
    config = ExperimentConfig.from_flat(context.run_config)
    torch.set_num_threads(config.engine.client_num_cpus)
    task = get_task(config)
    pids = [int(p) for p in msg.content[BATCH][PARTITION_IDS]]
    server_round = int(msg.content[CONFIG][SERVER_ROUND])
    content = RecordDict()
    for pid, (state, stats) in zip(pids, _train_group(task, msg, server_round, pids), strict=True):
        client = _train_content(state, stats, pid)
        content[arrays_key(pid)] = client[ARRAYS]
        content[metrics_key(pid)] = client[METRICS]
    return Message(content, reply_to=msg)


def _train_group(
    task: FederatedTask, msg: Message, server_round: int, pids: list[int]
) -> list[tuple[dict[str, torch.Tensor], TrainStats]]:
    """Train clients ``pids`` from the global model of ``msg`` together."""
    model = task.new_model()
    model.load_state_dict(msg.content[ARRAYS].to_torch_state_dict())
    specs = [task.training_spec(server_round, pid) for pid in pids]
    first = specs[0]
    results = train_clients(
        model,
        [task.client_data(pid) for pid in pids],
        epochs=first.epochs,
        batch_size=first.batch_size,
        lr=first.lr,
        momentum=first.momentum,
        weight_decay=first.weight_decay,
        seeds=[s.seed for s in specs],
        device=first.device,
        max_steps=first.max_steps,
    )
    keys = list(model.state_dict())  # no buffers (fedsec.batched.supports): the parameters
    return [({k: r.params[k] for k in keys}, r.stats) for r in results]
