"""The ServerApp: fedsec's Multi-metrics defense as the strategy, central evaluation."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

import defenses

from .task import evaluate, new_model, test_set

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the rounds with Multi-metrics; log each round's verdicts and test accuracy."""
    config = context.run_config
    strategy = defenses.MultiMetrics(
        keep_fraction=float(config["keep-fraction"]),
        variant=str(config["variant"]),
        fraction_evaluate=0.0,
    )
    model = new_model(int(config["seed"]))
    test_x, test_y = test_set()

    def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, test_x, test_y)
        return MetricRecord({"test_loss": loss, "test_accuracy": accuracy})

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=central_evaluation,
    )
    # The strategy returns each round's verdicts with its train metrics.
    for server_round, metrics in sorted(result.train_metrics_clientapp.items()):
        print(
            f"round {server_round}: kept {list(metrics['defense-accepted'])}, left out "
            f"{list(metrics['defense-rejected'])}, refused {list(metrics['defense-refused'])}",
            flush=True,
        )
    final = result.evaluate_metrics_serverapp[int(config["num-server-rounds"])]
    print(f"final test accuracy: {final['test_accuracy']:.3f}", flush=True)
