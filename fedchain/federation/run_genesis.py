"""The block a run begins with: the plan (its target included), the clients admitted with their
keys, each private client's signed statement, and for Krum the scale of each feature."""

from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.federation.admission import Member
from fedchain.federation.events import Action, Detail, Say
from fedchain.federation.plan import RunPlan
from fedchain.learning.aggregation import RULES, feature_scale
from fedchain.learning.dataset import Dataset
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import Block, PrivacyTerms, RunRecord
from fedchain.ledger.chain import make_genesis
from fedchain.trust.keys import public_hex


def mine_genesis(
    plan: RunPlan,
    key: Ed25519PrivateKey,
    clients: list[Member],
    features: tuple[str, ...],
    test_data: Dataset | None,
    *,
    participants: Mapping[str, str] | None = None,
    test_setting: str = "--test",
) -> tuple[Block, list[Action]]:
    """The genesis of PLAN's run with CLIENTS (in the order every round takes them), mined and
    signed with KEY, and what to say of it. PARTICIPANTS: whom it admits (name -> key), if not
    just CLIENTS (a run that begins with its quorum admits every authorized client).
    TEST_SETTING: how the operator names the held-out rows, for the line that misses them."""
    if participants is None:
        participants = {c.name: c.public_key for c in clients}
    scale, said = _krum_scale(plan, features, test_data, test_setting)
    genesis = make_genesis(
        initial_model=LinearModel.zeros(len(features)),
        feature_names=features,
        difficulty=plan.difficulty_bits,
        run=RunRecord(
            plan.rounds,
            plan.seed,
            public_hex(key),
            dict(participants),
            plan.min_clients,
            _privacy_terms(plan, clients),
            plan.target,
        ),
        server_key=key,
        aggregation=plan.aggregation,
        parameters=plan.aggregation_parameters,
        scale=scale,
    )
    return genesis, said


def _privacy_terms(plan: RunPlan, clients: list[Member]) -> PrivacyTerms | None:
    """What the genesis of a run with a schema records: the bounds, the limit, and each
    private client's statement."""
    if plan.schema is None:
        return None
    statements = {c.name: c.privacy for c in clients if c.privacy is not None}
    return PrivacyTerms(plan.schema.canonical(), plan.max_epsilon, statements)


def _krum_scale(
    plan: RunPlan, features: tuple[str, ...], test_data: Dataset | None, test_setting: str
) -> tuple[tuple[float, ...] | None, list[Action]]:
    """For Krum, each feature's root mean square on the held-out rows, which the genesis
    records and Krum multiplies each weight by before it measures a distance (so a distance is
    a change of prediction); None, raw weight units, without held-out rows."""
    if not RULES[plan.aggregation].scaled:
        return None, []
    if test_data is None:
        return None, [
            Say(
                "krum measures distances in raw weight units: there are no held-out rows "
                f"({test_setting}) to scale the features by"
            )
        ]
    rows = test_data.in_order(features)
    said = Detail(
        f"krum measures distances with each weight times its feature's root mean "
        f"square on the {rows.n_samples} held-out rows"
    )
    return feature_scale(rows.X), [said]
