"""The ClientApp: answers who it is, and trains the global model on its partition.

``train_batch`` is the same training for many honest clients at once (``fedsec.batched``),
which the in-process engine calls with a round's train messages before it delivers the
rest one by one (``engine.batch_clients``); its replies are built as ``local_train``'s.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsec.batched import train_clients, use_batched
from fedsec.config import ExperimentConfig
from fedsec.task import (
    ATTACKER_INDEX,
    BENIGN_STATE,
    EVASION_SCALE,
    TRIGGER,
    FederatedTask,
    get_task,
)
from fedsec_core.training import TrainStats, train

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
    else:
        x, y = task.client_data(pid)
        stats, benign_state, trigger, scale = train(model, x, y, **kwargs), None, None, None
    return _train_reply(msg, model.state_dict(), stats, pid, benign_state, trigger, scale)


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
) -> Message:
    """The reply to train message ``msg``: the trained ``state`` and the client's metrics."""
    metrics = {"num-examples": stats.num_examples, "train_loss": stats.loss, "partition-id": pid}
    if scale is not None:  # logged by the server loop, which removes it
        metrics[EVASION_SCALE] = scale
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)})
    if benign_state is not None:  # for the server loop's adversary stage, which removes it
        content[BENIGN_STATE] = ArrayRecord(benign_state)
    if trigger is not None:  # the attackers' shared trigger (a3fl), likewise removed there
        content[TRIGGER] = ArrayRecord({"trigger": trigger})
    return Message(content, reply_to=msg)


def train_batch(messages: Sequence[Message], contexts: Sequence[Context]) -> dict[int, Message]:
    """Replies to the honest train messages among ``messages`` (sent to the nodes of
    ``contexts``), trained together by ``fedsec.batched.train_clients``; by index into
    ``messages``. Empty when the config does not batch (``fedsec.batched.use_batched``);
    the messages without a reply here (queries, attackers) go to the ClientApp one by one.

    Messages that share one global model and round train as one batch, each client with
    ``local_train``'s settings (``FederatedTask.train_kwargs``: its seed, the round's lr).
    If a batch raises, each of its messages gets the error reply Flower gives a
    ClientApp that raised.
    """
    if not messages:
        return {}
    config = ExperimentConfig.from_flat(contexts[0].run_config)
    if not use_batched(config)[0]:
        return {}
    torch.set_num_threads(config.engine.client_num_cpus)
    task = get_task(config)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, msg in enumerate(messages):
        if msg.metadata.message_type != MessageType.TRAIN:
            continue
        record = msg.content["config"]
        if _is_attacker(task, record):
            continue
        key = (id(msg.content["arrays"]), int(record["server-round"]))
        groups.setdefault(key, []).append(i)
    replies: dict[int, Message] = {}
    for (_, server_round), members in groups.items():
        pids = [partition_id(contexts[i]) for i in members]
        try:
            trained = _train_group(task, messages[members[0]], server_round, pids)
        except Exception as exc:  # as a ClientApp that raises: an error reply each
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            for i in members:
                error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
                replies[i] = Message(error, reply_to=messages[i])
            continue
        for i, pid, (state, stats) in zip(members, pids, trained, strict=True):
            replies[i] = _train_reply(messages[i], state, stats, pid)
    return replies


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
