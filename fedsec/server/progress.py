"""How a round reads: the defense's verdict against the attack's ground truth, and the
line ``fedsec run`` prints."""

from __future__ import annotations

from fedsec_core.protocol import ABSENT, RoundRecord


def detection_counts(record: RoundRecord, malicious: list[int]) -> dict[str, int]:
    """Confusion counts of the defense's verdict against the attack's ground truth.

    A rejected malicious client is a true positive, a rejected honest one a false
    positive. Rounds whose strategy gives no verdict count nothing.
    """
    if record.rejected_clients is None:
        return {}
    rejected, accepted, bad = (
        set(record.rejected_clients),
        set(record.accepted_clients),
        set(malicious),
    )
    return {
        "true_positives": len(rejected & bad),
        "false_positives": len(rejected - bad),
        "false_negatives": len(accepted & bad),
        "true_negatives": len(accepted - bad),
    }


def _progress_line(record: RoundRecord, rounds: int) -> str:
    parts = [
        f"round {record.round:>{len(str(rounds))}}/{rounds}",
        f"main_accuracy {record.main_accuracy:.4f}",
    ]
    if record.backdoor_accuracy is not None:
        parts.append(f"backdoor_accuracy {record.backdoor_accuracy:.4f}")
    if record.train_loss is not None and record.train_loss is not ABSENT:
        parts.append(f"train_loss {record.train_loss:.4f}")
    if record.accepted_clients is not None:
        judged = len(record.accepted_clients) + len(record.rejected_clients)
        parts.append(f"accepted {len(record.accepted_clients)}/{judged}")
    if record.malicious_clients:
        bad = record.malicious_clients
        accepted = record.accepted_clients
        kept = [c for c in bad if c in (bad if accepted is None else accepted)]
        parts.append(f"attackers {bad} ({len(kept)} accepted)")
    if record.invalid_clients:
        parts.append(f"invalid {sorted(record.invalid_clients)}")
    if record.failed_clients:
        parts.append(f"failed {record.failed_clients}")
    if record.kept_previous_model:
        parts.append(f"kept previous model ({record.kept_previous_reason or 'no usable reply'})")
    parts.append(f"{record.time_s:.1f}s")
    return "  ".join(parts)
