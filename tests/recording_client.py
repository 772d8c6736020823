"""fedsec's ClientApp, recording every call it answers, for the batched-engine tests.

Each call appends one JSON line to ``OUTPUT_DIR/calls.jsonl`` (``output.dir`` of the run
config): the message type, the partition id of the node that ran it, the round of a
train message and the partition ids a batch message names. The answers are fedsec's
own (``fedsec.apps.client_app``). Importable by Flower's processes as
``tests.recording_client:app``.
"""

import json
from pathlib import Path

from flwr.app import Message
from flwr.clientapp import ClientApp

from fedsec.apps import client_app as real
from fedsec.apps.server_app import OUTPUT_DIR_KEY
from fedsec.engines.batching import BATCH, PARTITION_IDS

CALLS = "calls.jsonl"
app = ClientApp()


def _record(msg: Message, context, **extra) -> None:
    line = {
        "type": msg.metadata.message_type,
        "node_partition": real.partition_id(context),
        **extra,
    }
    out = Path(str(context.run_config[OUTPUT_DIR_KEY]))
    out.mkdir(parents=True, exist_ok=True)
    with (out / CALLS).open("a") as f:
        f.write(json.dumps(line) + "\n")


@app.query("identify")
def identify(msg: Message, context):
    _record(msg, context)
    return real.identify(msg, context)


@app.train()
def train(msg: Message, context):
    _record(msg, context, round=int(msg.content["config"]["server-round"]))
    return real.local_train(msg, context)


@app.train("batch")
def train_batch(msg: Message, context):
    pids = [int(p) for p in msg.content[BATCH][PARTITION_IDS]]
    _record(msg, context, round=int(msg.content["config"]["server-round"]), batch=pids)
    return real.train_together(msg, context)


def read_calls(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / CALLS).read_text().splitlines()]
