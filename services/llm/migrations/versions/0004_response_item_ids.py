"""llm: index the item ids of stored responses (item_reference inputs of /v1/responses)

A GIN index over the ids of each row's input items and output items, so an
``item_reference`` whose id does not name its response (a client's own id, or an item
whose response is gone) is found without scanning the organization's rows.

Revision ID: llm_0004
Revises: llm_0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "llm_0004"
down_revision: str | None = "llm_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "llm"
# as services.llm.models.RESPONSE_ITEM_IDS (queries must use the same expression)
ITEM_IDS = (
    "(jsonb_path_query_array(input_items, '$[*].\"id\"'::jsonpath) || "
    'jsonb_path_query_array(response, \'$."output"[*]."id"\'::jsonpath))'
)


def upgrade() -> None:
    op.create_index(
        "ix_llm_responses_item_ids",
        "responses",
        [sa.text(ITEM_IDS)],
        schema=S,
        postgresql_using="gin",
    )


def downgrade() -> None:
    op.drop_index("ix_llm_responses_item_ids", table_name="responses", schema=S)
