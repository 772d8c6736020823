"""Fuzz the config loader: every failure is one line on stderr and exit code 2.

`fedsec run CONFIG --check` validates as a real run does (config, data set, partition,
attack and defense) and stops before training, so random configs never train.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsec.cli import main
from fedsec.config import ExperimentConfig, dumps_toml

SECTIONS = {
    section: list(values)
    for section, values in ExperimentConfig().to_dict().items()
    if isinstance(values, dict)
}
NAMES = {
    ("data", "name"): ["digits", "mnist5k", "cifar10", "nope"],
    ("model", "name"): ["mlp", "cnn", "lenet", "vgg9", "nope"],
    ("data", "partition"): ["iid", "dirichlet", "pathological", "nope"],
    ("engine", "name"): ["inprocess", "flower", "nope"],
    ("defense", "name"): ["fedavg", "krum", "multi-metrics", "nope"],
    ("attack", "name"): ["none", "gaussian", "nope"],
}
scalars = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.just(0),
    st.just(1),
    st.just(-1),
    st.just(0.5),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=2),
)


@st.composite
def configs(draw) -> dict:
    raw: dict = {}
    if draw(st.booleans()):
        raw["seed"] = draw(st.one_of(st.integers(-5, 10**6), values))
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "bogus"]), max_size=4, unique=True)):
        keys = SECTIONS.get(section, []) + ["bogus_key"]
        table = {}
        for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
            choices = NAMES.get((section, key))
            table[key] = (
                draw(st.sampled_from(choices)) if choices and draw(st.booleans()) else draw(values)
            )
        raw[section] = table
    return raw


def check(path: Path, capsys) -> None:
    code = main(["run", str(path), "--check"])
    out = capsys.readouterr()
    assert code in (0, 2)
    assert "Traceback" not in out.err + out.out
    if code == 2:
        lines = out.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("fedsec: error: "), out.err


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=configs())
def test_random_structured_configs_fail_cleanly(raw, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.toml"
        path.write_text(_toml(raw))
        check(path, capsys)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_random_bytes_fail_cleanly(data, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.toml"
        path.write_bytes(data)
        check(path, capsys)


def _toml(raw: dict) -> str:
    """TOML text for ``raw`` (nan/inf and nested values spelled as TOML spells them)."""

    def value(v):
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + "}"
        return dumps_toml({"v": v}).split(" = ", 1)[1].strip()

    top = [f"{k} = {value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    tables = [
        f"[{k}]\n" + "\n".join(f'"{kk}" = {value(vv)}' for kk, vv in v.items())
        for k, v in raw.items()
        if isinstance(v, dict)
    ]
    return "\n".join(top + tables) + "\n"
