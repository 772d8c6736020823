"""Why a colluding attack does or does not break a rule: the measured reason, round by round.

For one experiment (a config and its seed) with a colluding attack (``alie``, ``ipm``,
``min-max``, ``min-sum``), this script re-creates every round of the run from fedsec's
public pieces, without touching the server loop: the task (``fedsec.task.get_task``:
data, partition, model, the attack schedule), each sampled client's honest local
training (``fedsec_core.training.train`` with the task's per-client settings, which is what
an honest client and a colluding attacker both run on their client), the attack's own
crafting function (``attack.craft`` on the attackers' view: their own benign updates
with ``attack.knowledge = "partial"``, every update with ``"full"``) and the rules
(``defenses.build_rule``). The configured rule drives the trajectory, as the server
would; every other rule named with ``--rule`` is asked, on the same rounds, what it
would have done ("what if": it does not move the model). On the in-process engine the
trajectory is the run's own: ``tests/test_known_breaks.py`` checks round by round that
the accuracies and the accepted clients equal those of ``fedsec run``.

Per round it reports, in the units the papers argue in:

- ``z``: the crafted update's mean distance to the honest clients' mean, per coordinate,
  in honest standard deviations (mean over coordinates of ``|c - mu| / sd``; Bessel's
  correction; coordinates whose ``sd`` is 0 left out). An ALIE update crafted from every
  update (``knowledge = "full"``) sits ``z_max`` away (nearly: the view also holds the
  attackers' own benign updates).
- ``norm_ratio``: ``||c - mu||`` over the honest updates' root-mean-square distance to
  ``mu``. Below 1 the crafted update is closer to the honest mean than a typical honest
  update is: a distance-based rule (Krum, Multi-Krum, Bulyan) has no reason to drop it.
- ``shift``: ``||c - mu|| / ||mu||``, how far the crafted update is from the honest mean
  relative to the honest mean's own length, and ``cos``: its cosine with ``mu``. What a
  rule that keeps the crafted update can lose in a round is bounded by these: a crafted
  update that is within the honest spread but whose spread is small against ``||mu||``
  (``shift`` well below 1, ``cos`` near 1) still points where the honest clients go.
- per rule: ``kept``, how many of the round's attackers it accepted (rules that select
  clients; ``-`` for rules that weigh or trim every client), and ``agg_shift``,
  ``||a - mu|| / ||mu||`` of its aggregate update ``a`` with the attack, beside
  ``clean_shift``, the same rule's on the round where the attackers send their benign
  updates: the attack's effect on the aggregate in that round.

The header gives the number of clients, attackers and rounds and the attack's ``z_max``
or search bound where it has one. ``--json FILE`` writes every round's numbers.

    python experiments/known-breaks/diagnose.py experiments/known-breaks/base.toml \\
        --set attack.name=alie --set attack.knowledge=full --set defense.name=median \\
        --rule krum=krum:num_malicious=10 --rounds 20 --json runs/diagnose.json

fedsec differs from the papers here only where the run does (see README.md): the
updates are model deltas after local SGD, not raw gradients, and the honest statistics
are taken over the round's honest clients, not over the attackers' view.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tomllib
from pathlib import Path
from typing import Any

import torch

from attacks.collusion import CollusionAttack
from attacks.crafted import position
from defenses import build_rule
from fedsec.config import ExperimentConfig, load_config
from fedsec.pretrain import initial_state
from fedsec.task import FederatedTask, get_task
from fedsec_core.errors import ConfigError
from fedsec_core.layout import ModelLayout
from fedsec_core.training import evaluate, train


def aggregate_shift(update: torch.Tensor | None, honest_mean: torch.Tensor) -> float:
    """``||a - mu|| / ||mu||`` of an aggregate update ``a`` (NaN when the rule kept the
    previous model)."""
    if update is None:
        return math.nan
    mu = honest_mean.double()
    return float((update.double() - mu).norm() / mu.norm())


def _step(model: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor | None:
    return None if model is None else model - w


def parse_rule(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``LABEL=NAME[:key=value,...]`` or ``NAME[:key=value,...]`` -> (label, defense
    name, parameters); values are read as TOML values (``3``, ``0.2``, ``'paper'``)."""
    head, _, args = spec.partition(":")
    label, _, name = head.rpartition("=")
    params = {}
    for item in filter(None, args.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--rule {spec!r}: {item!r} is not key=value")
        try:
            params[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            params[key] = value  # a bare word: a string
    return label or name, name, params


class Diagnosis:
    """Re-creates the rounds of ``config`` (a colluding attack) and measures them."""

    def __init__(self, config: ExperimentConfig, rules: list[tuple[str, str, dict]]) -> None:
        self.config = config
        self.task: FederatedTask = get_task(config)
        if not isinstance(self.task.attack, CollusionAttack):
            raise ConfigError(
                f"attack {config.attack.name!r} is not a colluding attack; the diagnosis "
                "needs one of alie, ipm, min-max, min-sum"
            )
        self.attack = self.task.attack
        self.rule = build_rule(config.defense.name, dict(config.defense.params), seed=config.seed)
        self.what_if = [
            (label, build_rule(name, params, seed=config.seed)) for label, name, params in rules
        ]
        state = initial_state(self.task, log=lambda _: None)
        self.layout = ModelLayout.of_state(state)  # the vector the server's rule sees
        self.model = self.task.new_model()
        self.model.load_state_dict(state)
        self.w = self.layout.flatten(state, device="cpu")
        self.x_test, self.y_test = self.task.test_data()

    def _load(self, flat: torch.Tensor) -> None:
        self.layout.load_module(self.model, flat)

    def _local_model(self, server_round: int, pid: int) -> tuple[torch.Tensor, float]:
        """The client's honestly trained flat model (what an honest client and a colluding
        attacker both train on their client) and its example count."""
        self._load(self.w)
        x, y = self.task.client_data(pid)
        stats = train(self.model, x, y, **self.task.train_kwargs(server_round, pid))
        return self.layout.flatten_module(self.model).cpu(), float(stats.num_examples)

    def round(self, server_round: int) -> dict[str, Any]:
        """Train, craft, ask every rule, move the model with the configured rule."""
        sampled, malicious = self.task.schedule.sample(server_round)
        rows, counts = zip(*(self._local_model(server_round, pid) for pid in sampled), strict=True)
        clean, weights = torch.stack(rows), torch.tensor(counts, dtype=torch.float64)
        updates = clean - self.w  # as the server's crafting stage computes them
        bad = torch.tensor([pid in set(malicious) for pid in sampled])
        record: dict[str, Any] = {
            "round": server_round,
            "clients": len(sampled),
            "attackers": len(malicious),
        }
        honest = updates[~bad]
        models = clean.clone()
        if malicious:
            problem = self.attack.check_round(len(sampled), len(malicious))
            if problem:
                raise ConfigError(f"round {server_round}: {problem}")
            view = updates[bad] if self.attack.knowledge == "partial" else updates
            crafted = self.attack.crafted_update(view, len(sampled), len(malicious))
            models[bad] = self.w + crafted.to(self.w.dtype)
            record.update(vars(position(honest, crafted)))
        mu = honest.mean(dim=0)
        ids = list(sampled)
        record["rules"] = {}
        new_w = self.w
        for label, rule in [(self.config.defense.name, self.rule), *self.what_if]:
            # the round without the attack (the attackers send their benign models), on a
            # copy, so that a rule with state sees each round once
            base = copy.deepcopy(rule).aggregate(clean, weights, self.w, ids)
            result = rule.aggregate(models, weights, self.w, ids)
            entry = {
                "kept": int(result.accepted[bad].sum()) if rule.selects_clients else None,
                "agg_shift": aggregate_shift(_step(result.model, self.w), mu),
                "clean_shift": aggregate_shift(_step(base.model, self.w), mu),
            }
            if rule is self.rule:
                record["accepted_clients"] = [
                    pid for pid, kept in zip(ids, result.accepted.tolist(), strict=True) if kept
                ]
                if result.model is not None:
                    new_w = result.model
            record["rules"][label] = entry
        self.w = new_w
        self._load(self.w)
        record["main_accuracy"] = evaluate(self.model, self.x_test, self.y_test).accuracy
        return record

    def header(self) -> str:
        c, a = self.config, self.attack
        sampled, malicious = self.task.schedule.sample(1)
        n, m = len(sampled), len(malicious)
        parts = [
            f"{a.name} ({a.knowledge} knowledge) against {c.defense.name} on {c.data.name} + "
            f"{c.model.name}, seed {c.seed}: {self.task.num_clients} clients, {n} a round, "
            f"{m} attackers a round, {c.train.rounds} rounds"
        ]
        if a.name == "alie" and m:
            from attacks.crafted import alie_z

            parts.append(f"z_max = {alie_z(n, m, a.z_formula):.4f} ({a.z_formula})")
        return "; ".join(parts)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def table(records: list[dict[str, Any]]) -> str:
    """One markdown row per round."""
    labels = list(records[0]["rules"]) if records else []
    head = ["round", "MA", "z", "norm_ratio", "shift", "cos"]
    for label in labels:
        head += [f"{label} kept", f"{label} agg_shift", f"{label} clean_shift"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        measures = (r.get(k) for k in ("z", "norm_ratio", "shift", "cos"))
        cells = [r["round"], r["main_accuracy"], *measures]
        for label in labels:
            e = r["rules"][label]
            cells += [
                f"{e['kept']}/{r['attackers']}" if e["kept"] is not None else None,
                e["agg_shift"],
                e.get("clean_shift"),
            ]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="an experiment file with a colluding attack")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="LABEL=NAME[:key=value,...]",
        help="another rule to ask on the same rounds (repeatable)",
    )
    parser.add_argument("--rounds", type=int, default=0, help="stop after this many rounds")
    parser.add_argument("--json", type=Path, help="write every round's numbers here")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.sets)
        diagnosis = Diagnosis(config, [parse_rule(spec) for spec in args.rule])
    except ConfigError as error:
        print(f"diagnose: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(config.engine.client_num_cpus)
    print(diagnosis.header(), flush=True)
    last = min(args.rounds or config.train.rounds, config.train.rounds)
    records = []
    for server_round in range(1, last + 1):
        records.append(diagnosis.round(server_round))
        r = records[-1]
        print(
            f"round {server_round}: MA {r['main_accuracy']:.4f} z {_fmt(r.get('z'))} "
            f"norm_ratio {_fmt(r.get('norm_ratio'))} shift {_fmt(r.get('shift'))}",
            flush=True,
        )
    print(table(records))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"header": diagnosis.header(), "rounds": records}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
