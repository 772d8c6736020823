"""A ClientApp that fails on purpose, for the failure-injection tests.

Partition 1 replies with an error message, partition 2 raises, partition 3 sleeps past
the round timeout in round 2 (``SLEEP_S``); every other partition is fedsec's client.
Importable by Flower's processes as ``tests.faulty_client:app``.
"""

import time

from flwr.app import Error, Message
from flwr.clientapp import ClientApp

from fedsec.apps import client_app as real
from fedsec_core.protocol import CONFIG, IDENTIFY, SERVER_ROUND

SLEEP_S = 30.0
app = ClientApp()


@app.query(IDENTIFY)
def identify(msg: Message, context):
    return real.identify(msg, context)


@app.train()
def train(msg: Message, context):
    pid = real.partition_id(context)
    if pid == 1:
        return Message(Error(code=0, reason="partition 1 refuses to train"), reply_to=msg)
    if pid == 2:
        raise RuntimeError("partition 2 crashed")
    if pid == 3 and int(msg.content[CONFIG][SERVER_ROUND]) == 2:
        time.sleep(SLEEP_S)
    return real.local_train(msg, context)
