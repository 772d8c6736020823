"""experiments/flower-app-multimetrics: a valid Flower App whose client reports its key."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.common.config import validate_config
from flwr.supercore.task_identity import TaskIdentity

APP_DIR = Path(__file__).resolve().parents[1] / "experiments" / "flower-app-multimetrics"


@pytest.fixture
def app_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(APP_DIR))
    yield
    for name in [m for m in sys.modules if m.startswith("multimetrics_app")]:
        del sys.modules[name]


def test_pyproject_is_a_valid_flower_app_with_importable_components(app_on_path):
    config = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    valid, errors, _ = validate_config(config, check_module=True, project_dir=APP_DIR)
    assert valid, errors


def test_client_trains_on_its_partition_and_reports_its_partition_id(app_on_path, monkeypatch):
    for attribute in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)
    from multimetrics_app.client_app import app
    from multimetrics_app.task import new_model

    run_config = {"local-epochs": 1, "learning-rate": 0.1}
    context = Context(1, 7, {"partition-id": 3, "num-partitions": 5}, RecordDict(), run_config)
    content = RecordDict({"arrays": ArrayRecord(new_model().state_dict())})
    message = Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)
    reply = app(message, context)
    metrics = reply.content["metrics"]
    assert metrics["partition-id"] == 3 and metrics["num-examples"] == 300
    assert set(reply.content["arrays"].keys()) == set(new_model().state_dict())
