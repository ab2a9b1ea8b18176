"""The `quorum_review` asset: the partners' verdict on a few held-out probe answers.

An optional, extra signal next to `evaluation`: for each of a few held-out tasks of the
evaluated data version, the healthy partners are asked (through the gateway, see
`serving.partners.quorum`) whether the expected answer is correct, and the majority
verdict with every vote is recorded. A wrong reference answer in the held-out sample would
make the gate judge models against a bad key; this is where a quorum of outside judges can
say so.

It sits beside the promotion path, never on it: nothing depends on it, the evaluation gate
does not read it, and it is not part of `train_and_deploy`. With no gateway, no partners
or too few healthy ones it materializes "no verdict" with the reason, and the gate decides
on local metrics alone, as always. Safe to re-run: it only asks and records.
"""

import json
from pathlib import Path

import dagster as dg

from evaluation.heldout import HeldoutDataError, load_heldout
from orchestration.defs.registry.assets import latest_metadata
from orchestration.defs.serving.resources import ServingStack
from orchestration.resources import MlopsHome
from serving.gateway.client import AdminError
from serving.partners.quorum import Verdict, ask, healthy_partners
from serving.stack import StackError

from .resources import PartnerQuorum

EVALUATION = dg.AssetKey("evaluation")
CHOICES = ("yes", "no")
NO_VERDICT = "no verdict"


class QuorumReviewConfig(dg.Config):
    probes: int = 3
    """Held-out tasks whose reference answers the partners judge."""


def question(prompt: str, answer: str) -> str:
    return (
        "A model is asked to complete the text below.\n\n"
        f"{prompt}\n\nProposed completion: {answer}\n\nIs the proposed completion correct?"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def verdicts_markdown(rows: list[tuple[str, str, Verdict]]) -> str:
    lines = ["| task | reference | verdict | votes | reason |", "| --- | --- | --- | --- | --- |"]
    for prompt, answer, v in rows:
        votes = ", ".join(f"{k}: {c or 'abstained'}" for k, c in sorted(v.votes.items())) or "-"
        cells = [prompt, answer, v.answer or NO_VERDICT, votes, v.reason]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


@dg.asset(group_name="registry", deps=[EVALUATION], owners=["team:ml-platform"], kinds={"python"})
def quorum_review(
    context: dg.AssetExecutionContext,
    config: QuorumReviewConfig,
    mlops: MlopsHome,
    serving_stack: ServingStack,
    partners: PartnerQuorum,
) -> dg.MaterializeResult:
    """The partners' majority verdict on a few held-out reference answers ("no verdict"
    without a quorum of healthy partners); an optional signal the gate does not use."""
    home = mlops.root()
    quorum = partners.config()
    try:
        admin = serving_stack.gateway(home)
        view = admin.partners() if admin is not None else {}
    except (AdminError, StackError) as exc:
        context.log.warning(f"gateway unavailable, no partner can vote: {exc}")
        admin, view = None, {}
    healthy = healthy_partners(view)
    evaluated, _ = latest_metadata(context, EVALUATION)
    report = json.loads(Path(evaluated["report_path"]).read_text())
    try:
        sample = load_heldout(report["data_path"], report["data_version"], config.probes)
    except HeldoutDataError as exc:
        raise dg.Failure(str(exc)) from exc
    tasks = sample.tasks[: config.probes]
    rows = []
    for task in tasks:
        if admin is None:
            verdict = Verdict(None, {}, f"{NO_VERDICT}: the serving stack is not running")
        else:
            verdict = ask(admin.url, view, question(task.prompt, task.answer), CHOICES, quorum)
        rows.append((task.prompt, task.answer, verdict))
    decided = [v for _, _, v in rows if v.answer is not None]
    summary = (
        f"{sum(v.answer == 'yes' for v in decided)} of {len(rows)} reference answers confirmed, "
        f"{sum(v.answer == 'no' for v in decided)} disputed, {len(rows) - len(decided)} without "
        "a verdict"
        if decided
        else (rows[0][2].reason if rows else f"{NO_VERDICT}: no held-out task to review")
    )
    context.log.info(f"quorum_review: {summary}")
    return dg.MaterializeResult(
        metadata={
            "verdict": summary,
            "verdicts_reached": len(decided),
            "probes": len(rows),
            "healthy_partners": ", ".join(healthy) or "none",
            "quorum": quorum.quorum,
            "data_version": report["data_version"],
            "review": dg.MetadataValue.md(verdicts_markdown(rows)),
        }
    )
