"""The ClientApp: trains on its partition of the digits and reports its partition id."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .task import evaluate, new_model, partition, train

app = ClientApp()


@app.train()
def train_on_partition(msg: Message, context: Context) -> Message:
    """Load the global model, train it locally, send it back with its metrics."""
    pid = int(context.node_config["partition-id"])
    x, y = partition(pid, int(context.node_config["num-partitions"]))
    model = new_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss = train(
        model,
        x,
        y,
        int(context.run_config["local-epochs"]),
        float(context.run_config["learning-rate"]),
    )
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(x), "partition-id": pid})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_on_partition(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this node's partition."""
    x, y = partition(
        int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    )
    model = new_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss, accuracy = evaluate(model, x, y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(x)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
