"""``fedsec run`` without a config: the showcase sweep (fedsec/showcase.toml), FedAvg and
Multi-metrics side by side under the same attack, and one PNG of both."""

from __future__ import annotations

import json

from fedsec.cli import SHOWCASE, main
from fedsec.config import ExperimentConfig, read_toml
from fedsec.results import read_metrics

# The showcase itself, shortened: the data, model, attack and defenses stay as shipped.
SHORT = ["train.rounds=2", "train.pretrain_epochs=0"]


def test_run_without_config_runs_the_showcase_side_by_side(tmp_path, capsys):
    out = tmp_path / "showcase"
    argv = ["run", "--out", str(out)]
    for item in SHORT:
        argv += ["--set", item]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| fedavg |" in printed and "| multi-metrics |" in printed

    shipped = read_toml(SHOWCASE)["base"]
    verdict = printed.strip().splitlines()[-1]  # one plain sentence of what happened
    assert verdict.startswith("fedsec: the edge-case-pgd-replacement attack ")
    for defense in ("fedavg", "multi-metrics"):
        run_dir = out / f"defense={defense}"
        rounds = read_metrics(run_dir / "metrics.jsonl")
        assert [r["round"] for r in rounds] == [1, 2]
        # Every round has the attacker, and its backdoor accuracy is measured.
        assert all(
            len(r["malicious_clients"]) == 1 and r["backdoor_accuracy"] is not None for r in rounds
        )
        summary = json.loads((run_dir / "summary.json").read_text())
        # judged on the attack window (every round has the attacker): mean and max of BA
        ba = [r["backdoor_accuracy"] for r in rounds]
        assert (
            f"{defense} (backdoor accuracy over the attack rounds 1-2: mean "
            f"{sum(ba) / len(ba):.1%}, max {max(ba):.1%}"
        ) in verdict
        assert (
            f"final {summary['final_backdoor_accuracy']:.1%}; "
            f"main accuracy {summary['final_main_accuracy']:.1%})"
        ) in verdict
        cfg = ExperimentConfig.from_dict(summary["config"])
        assert cfg.defense.name == defense and cfg.seed == shipped["seed"]
        assert (cfg.attack.name, cfg.attack.params["edge_case"]) == (
            shipped["attack"]["name"],
            "tail",
        )
        assert (cfg.data.name, cfg.model.name) == (
            shipped["data"]["name"],
            shipped["model"]["name"],
        )
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| fedavg |" in report and "| multi-metrics |" in report


def test_the_showcase_validates_and_its_axis_cannot_be_overridden(tmp_path, capsys):
    assert main(["run", "--check"]) == 0
    assert "showcase experiment is valid" in capsys.readouterr().out
    assert main(["run", "--set", "defense.name=krum", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "defense.name is set by the sweep's axis 'defense'" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
