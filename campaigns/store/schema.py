"""The campaign store's tables, as DDL for both engines (SQLite, PostgreSQL).

One text, two dialects: ``{ID}`` is the auto-increment key (``INTEGER PRIMARY KEY`` on SQLite,
``BIGSERIAL PRIMARY KEY`` on PostgreSQL), ``{REAL}`` a double, ``{INT}`` a 64-bit integer. Amounts are
integer minor units (cents); times are epoch seconds (UTC) as doubles, so SQL and Python agree exactly.

Columns beyond the shared plan (docs: campaigns_shared.md), for the store's own bookkeeping:
- ``subscribers.profile_at``: the ``at`` of the newest profile change applied (older ones are ignored);
- ``orders.updated_at`` / ``fulfillment_at`` / ``tracking_url``, ``checkouts.updated_at`` / ``url_at``: the same,
  per order and checkout, so an older event never overwrites newer state;
- ``consent_ledger.seq``-like ordering is the ``id`` column (ties of ``at``);
- ``early_fulfillments``: a fulfilment that arrived before its order, applied when the order comes;
- ``cursors``: how far the gateway's inbound messages were read (per tenant);
- ``segment_timers``: when time alone may change a subscriber's membership of a segment (windows);
- ``gateway_sync``: opt-outs to push to the gateway's suppressions (an outbox: survives restarts);
- ``shop_currencies``: the currency a shop without a configured one counts in, claimed once by its first
  accepted orders (``Store.claim_currency``: two first uploads in different currencies cannot both win).

Campaigns (issue 18, ``campaigns/store/campaign_sql.py``): ``campaigns`` (definition JSON, status),
``link_ranges`` (a launch's short-link numbers: codes are a keyed permutation of them, no row per
recipient, and ``holes``: the slots whose recipient got other codes; docs/ARCHITECTURE.md),
``link_shadows`` (row codes that are also some range's code: the row wins), ``campaign_recipients`` (the audience frozen at launch: variant, ``send_at``, zone, the rendered text,
its batch and index in the gateway job, the gateway message id and state), ``campaign_batches`` (one
gateway job per batch: its ``job_id`` once accepted), ``short_links`` (code -> target, campaign,
subscriber), ``clicks`` (every hit, with its verdict and whether it was the code's first human click),
``discount_codes`` (imported pools, one row reserved per recipient).

The segments helper may append tables or indexes in the block marked at the end (SEGMENTS_DDL).
"""

from __future__ import annotations

from collections.abc import Callable

from typing import Literal

Dialect = Literal["sqlite", "postgres"]

# ``ORDER_KEY`` / ``ORDER_OWNER``: what an item condition reads of its order's owner (item rows joined
# to their order by ``(tenant, order_id)``: the subscriber, the time, the payment status), from the
# index alone. SQLite keeps ``orders_segment_owner`` beside the key (a table's key cannot carry
# columns). On PostgreSQL the key carries them (``INCLUDE``): the key's own b-tree answers that join
# index-only, so ``orders_segment_owner``, the same key with the same columns, was a fifth index entry
# an order wrote for nothing (~160 B of WAL an order; ``ORDER_KEY_UPGRADE`` for an older store).
ORDER_OWNER_COLUMNS = "subscriber_id, created_at, payment_status"
# ``RUN_KEY`` / ``RUN_BY_SUBSCRIBER``: a flow run's key and the runs of a subscriber (FLOWS_DDL below).
# On PostgreSQL one unique index (tenant, subscriber_id, run_key) is both (a run key names its
# subscriber: ``flow:subscriber:trigger``), one index entry a run less to write, on every insert and
# every update (the updates move ``due`` and ``state``: never HOT); SQLite keeps the table's
# UNIQUE (tenant, run_key) (a constraint it cannot drop without rebuilding the table) and its index.
_TYPES = {
    "sqlite": {"ID": "INTEGER PRIMARY KEY", "REAL": "REAL", "INT": "INTEGER", "CLUSTERED": " WITHOUT ROWID",
               "RUN_KEY": ",\n    UNIQUE (tenant, run_key)",
               "RUN_BY_SUBSCRIBER": "CREATE INDEX IF NOT EXISTS flow_runs_subscriber ON flow_runs (tenant, subscriber_id, state)",
               "ORDER_KEY": "",
               "ORDER_OWNER": "CREATE INDEX IF NOT EXISTS orders_segment_owner ON orders "
                              "(tenant, order_id, subscriber_id, created_at, payment_status)"},
    "postgres": {"ID": "BIGSERIAL PRIMARY KEY", "REAL": "DOUBLE PRECISION", "INT": "BIGINT", "CLUSTERED": "",
                 "RUN_KEY": "",
                 "RUN_BY_SUBSCRIBER": "CREATE UNIQUE INDEX IF NOT EXISTS flow_runs_subscriber_key ON flow_runs "
                                      "(tenant, subscriber_id, run_key)",
                 "ORDER_KEY": f" INCLUDE ({ORDER_OWNER_COLUMNS})",
                 "ORDER_OWNER": ""},
}
#: The ON CONFLICT target of a flow run's key, by engine (``_TYPES``' ``RUN_KEY``).
FLOW_RUN_KEY = {"sqlite": "(tenant, run_key)", "postgres": "(tenant, subscriber_id, run_key)"}
#: A PostgreSQL store made before the one index: its run key constraint and subscriber index go, once
#: (``flow_runs_subscriber_key`` is made by ``statements`` first). Run only when the constraint is
#: there: ``ALTER TABLE`` locks the table even when it has nothing to drop.
FLOW_RUN_KEY_UPGRADE = ("flow_runs_tenant_run_key_key", ["ALTER TABLE flow_runs DROP CONSTRAINT flow_runs_tenant_run_key_key",
                                                         "DROP INDEX IF EXISTS flow_runs_subscriber"])
#: A PostgreSQL store made before the covering key (``ORDER_KEY``): its key rebuilt with the owner's
#: columns, then ``orders_segment_owner`` dropped, once, in the schema's transaction. Run only when the
#: key carries no column (``pg_index.indnkeyatts = indnatts``): ``ALTER TABLE`` locks the table.
ORDER_KEY_UPGRADE = [f"CREATE UNIQUE INDEX orders_key_covering ON orders (tenant, order_id) INCLUDE ({ORDER_OWNER_COLUMNS})",
                     "ALTER TABLE orders DROP CONSTRAINT orders_pkey, "
                     "ADD CONSTRAINT orders_pkey PRIMARY KEY USING INDEX orders_key_covering",
                     "DROP INDEX IF EXISTS orders_segment_owner"]

DDL = """
CREATE TABLE IF NOT EXISTS subscribers (
    tenant TEXT NOT NULL,
    id {ID},
    phone TEXT NOT NULL,
    first_name TEXT, last_name TEXT, email TEXT,
    gender TEXT CHECK (gender IN ('female', 'male', 'other')),
    birthday TEXT, country TEXT, region TEXT, city TEXT, time_zone TEXT, language TEXT,
    signup_source TEXT,
    created_at {REAL} NOT NULL,
    consent TEXT NOT NULL DEFAULT 'none' CHECK (consent IN ('none', 'pending', 'confirmed', 'revoked')),
    consent_at {REAL},
    attributes TEXT NOT NULL DEFAULT '{{}}',
    profile_at {REAL} NOT NULL DEFAULT 0,
    UNIQUE (tenant, phone)
);
CREATE INDEX IF NOT EXISTS subscribers_consent ON subscribers (tenant, consent);
CREATE TABLE IF NOT EXISTS subscriber_tags (
    tenant TEXT NOT NULL, subscriber_id {INT} NOT NULL, tag TEXT NOT NULL,
    PRIMARY KEY (tenant, subscriber_id, tag)
);
CREATE INDEX IF NOT EXISTS subscriber_tags_tag ON subscriber_tags (tenant, tag);
CREATE TABLE IF NOT EXISTS subscriber_stats (
    tenant TEXT NOT NULL,
    subscriber_id {INT} PRIMARY KEY,
    orders_count {INT} NOT NULL DEFAULT 0,
    total_spent {INT} NOT NULL DEFAULT 0,
    first_order_at {REAL}, last_order_at {REAL},
    avg_order_value {INT} NOT NULL DEFAULT 0,
    last_order_payment_status TEXT,
    latest_order_at {REAL}, latest_order_id TEXT,
    last_abandoned_checkout_at {REAL},
    last_click_at {REAL}, last_message_at {REAL}, last_reply_at {REAL},
    rfm_r {INT}, rfm_f {INT}, rfm_m {INT}, engagement {INT}
);
CREATE INDEX IF NOT EXISTS subscriber_stats_tenant ON subscriber_stats (tenant);
CREATE TABLE IF NOT EXISTS orders (
    tenant TEXT NOT NULL, order_id TEXT NOT NULL, subscriber_id {INT} NOT NULL,
    total {INT} NOT NULL, currency TEXT NOT NULL,
    payment_status TEXT NOT NULL CHECK (payment_status IN ('paid', 'pending', 'refunded')),
    fulfillment_status TEXT, discount_code TEXT, created_at {REAL} NOT NULL,
    checkout_id TEXT, tracking_url TEXT,
    updated_at {REAL} NOT NULL, fulfillment_at {REAL} NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, order_id){ORDER_KEY}
);
CREATE TABLE IF NOT EXISTS shop_currencies (
    tenant TEXT PRIMARY KEY, currency TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS order_items (
    tenant TEXT NOT NULL, order_id TEXT NOT NULL, product TEXT NOT NULL, category TEXT,
    price {INT} NOT NULL, quantity {INT} NOT NULL
);
CREATE INDEX IF NOT EXISTS order_items_order ON order_items (tenant, order_id);
CREATE TABLE IF NOT EXISTS checkouts (
    tenant TEXT NOT NULL, checkout_id TEXT NOT NULL, subscriber_id {INT} NOT NULL,
    url TEXT, url_at {REAL}, value {INT} NOT NULL DEFAULT 0,
    started_at {REAL} NOT NULL, completed_at {REAL}, abandoned_at {REAL},
    updated_at {REAL} NOT NULL,
    PRIMARY KEY (tenant, checkout_id)
);
CREATE INDEX IF NOT EXISTS checkouts_subscriber ON checkouts (tenant, subscriber_id);
CREATE INDEX IF NOT EXISTS checkouts_open ON checkouts (tenant, started_at) WHERE completed_at IS NULL AND abandoned_at IS NULL;
CREATE TABLE IF NOT EXISTS activities (
    tenant TEXT NOT NULL, subscriber_id {INT} NOT NULL, kind TEXT NOT NULL, at {REAL} NOT NULL,
    properties TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS activities_subscriber ON activities (tenant, subscriber_id, kind, at);
CREATE TABLE IF NOT EXISTS consent_ledger (
    tenant TEXT NOT NULL,
    id {ID},
    subscriber_id {INT} NOT NULL,
    phone TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('opt_in', 'confirm', 'opt_out', 're_opt_in')),
    source TEXT NOT NULL,
    disclosure_text TEXT, disclosure_version TEXT, disclosure_sha256 TEXT,
    evidence TEXT NOT NULL DEFAULT '{{}}',
    at {REAL} NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_ledger_subscriber ON consent_ledger (tenant, subscriber_id, at);
CREATE TABLE IF NOT EXISTS segments (
    tenant TEXT NOT NULL, id {ID}, name TEXT NOT NULL, definition TEXT NOT NULL,
    created_at {REAL} NOT NULL, updated_at {REAL} NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_tenant ON segments (tenant, id);
CREATE TABLE IF NOT EXISTS segment_members (
    tenant TEXT NOT NULL, segment_id {INT} NOT NULL, subscriber_id {INT} NOT NULL, since {REAL} NOT NULL,
    PRIMARY KEY (tenant, segment_id, subscriber_id)
){CLUSTERED};
CREATE INDEX IF NOT EXISTS segment_members_by_subscriber ON segment_members (tenant, subscriber_id, segment_id);
CREATE TABLE IF NOT EXISTS segment_timers (
    tenant TEXT NOT NULL, segment_id {INT} NOT NULL, subscriber_id {INT} NOT NULL, at {REAL} NOT NULL,
    PRIMARY KEY (tenant, segment_id, subscriber_id)
){CLUSTERED};
CREATE INDEX IF NOT EXISTS segment_timers_due ON segment_timers (at);
CREATE TABLE IF NOT EXISTS processed_events (
    tenant TEXT NOT NULL, event_id TEXT NOT NULL, PRIMARY KEY (tenant, event_id)
){CLUSTERED};
CREATE TABLE IF NOT EXISTS early_fulfillments (
    tenant TEXT NOT NULL, order_id TEXT NOT NULL, status TEXT NOT NULL, tracking_url TEXT, at {REAL} NOT NULL,
    PRIMARY KEY (tenant, order_id)
);
CREATE TABLE IF NOT EXISTS cursors (
    tenant TEXT NOT NULL, name TEXT NOT NULL, value {INT} NOT NULL, PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS campaigns (
    tenant TEXT NOT NULL, id {ID}, name TEXT NOT NULL, definition TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'launching', 'launched', 'paused', 'canceled')),
    created_at {REAL} NOT NULL, updated_at {REAL} NOT NULL, launched_at {REAL}
);
CREATE INDEX IF NOT EXISTS campaigns_tenant ON campaigns (tenant, id);
CREATE TABLE IF NOT EXISTS campaign_recipients (
    tenant TEXT NOT NULL, campaign_id {INT} NOT NULL, subscriber_id {INT} NOT NULL,
    phone TEXT NOT NULL, variant TEXT, send_at {REAL} NOT NULL, tz TEXT NOT NULL, text TEXT NOT NULL,
    batch {INT} NOT NULL, idx {INT} NOT NULL, message_id TEXT,
    state TEXT NOT NULL DEFAULT 'planned', state_at {REAL},
    PRIMARY KEY (tenant, campaign_id, subscriber_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS campaign_recipients_slot ON campaign_recipients (tenant, campaign_id, batch, idx);
CREATE TABLE IF NOT EXISTS campaign_batches (
    tenant TEXT NOT NULL, campaign_id {INT} NOT NULL, batch {INT} NOT NULL, send_at {REAL} NOT NULL,
    size {INT} NOT NULL, job_id TEXT, accepted {INT},
    PRIMARY KEY (tenant, campaign_id, batch)
);
CREATE INDEX IF NOT EXISTS campaign_batches_job ON campaign_batches (tenant, job_id);
-- A launch frozen in chunks (docs/ARCHITECTURE.md, "A chunked freeze"): the recipients planned but
-- not yet written to campaign_recipients, each with its slot (batch * batch_size + idx) and what
-- its text is made of (campaign_plan_texts: each text's pieces around its links, JSON). A chunk's
-- rows move from here to campaign_recipients in one transaction (empty once the freeze is done).
CREATE TABLE IF NOT EXISTS campaign_plan (
    tenant TEXT NOT NULL, campaign_id {INT} NOT NULL, slot {INT} NOT NULL, subscriber_id {INT} NOT NULL,
    phone TEXT NOT NULL, send_at {REAL} NOT NULL, tz TEXT NOT NULL, f {INT} NOT NULL, lang TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (tenant, campaign_id, slot)
){CLUSTERED};
CREATE TABLE IF NOT EXISTS campaign_plan_texts (
    tenant TEXT NOT NULL, campaign_id {INT} NOT NULL, f {INT} NOT NULL, lang TEXT NOT NULL, name TEXT NOT NULL,
    pieces TEXT NOT NULL,
    PRIMARY KEY (tenant, campaign_id, f, lang, name)
);
-- A launch frozen as a stream (docs/ARCHITECTURE.md, "A streamed freeze"): one send time, so send
-- order is subscriber id order. Each chunk freezes the next kept recipients after after_id into the
-- slots from next_slot, one transaction, and moves this cursor on. The audience is the subscribers
-- (id <= max_id) and segment members who joined at or before as_of, send_at is the launch's. The row
-- is gone once the last chunk is written.
CREATE TABLE IF NOT EXISTS campaign_streams (
    tenant TEXT NOT NULL, campaign_id {INT} NOT NULL, after_id {INT} NOT NULL, next_slot {INT} NOT NULL,
    max_id {INT} NOT NULL, bound {INT} NOT NULL, as_of {REAL} NOT NULL, send_at {REAL} NOT NULL, targets TEXT,
    PRIMARY KEY (tenant, campaign_id)
);
CREATE TABLE IF NOT EXISTS short_links (
    code TEXT PRIMARY KEY, tenant TEXT NOT NULL, campaign_id {INT} NOT NULL, subscriber_id {INT} NOT NULL,
    target TEXT NOT NULL, created_at {REAL} NOT NULL, expires_at {REAL}
);
CREATE INDEX IF NOT EXISTS short_links_campaign ON short_links (tenant, campaign_id);
CREATE TABLE IF NOT EXISTS link_ranges (
    tenant TEXT NOT NULL, campaign_id {INT} NOT NULL, length {INT} NOT NULL, start {INT} NOT NULL,
    count {INT} NOT NULL, stride {INT} NOT NULL, batch_size {INT} NOT NULL, targets TEXT NOT NULL,
    created_at {REAL} NOT NULL, expires_at {REAL},
    PRIMARY KEY (tenant, length, start)
);
CREATE UNIQUE INDEX IF NOT EXISTS link_ranges_campaign ON link_ranges (tenant, campaign_id);
CREATE TABLE IF NOT EXISTS link_shadows (code TEXT PRIMARY KEY, tenant TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clicks (
    code TEXT NOT NULL, at {REAL} NOT NULL, user_agent TEXT NOT NULL DEFAULT '',
    verdict TEXT NOT NULL, is_bot {INT} NOT NULL, is_unique {INT} NOT NULL
);
CREATE INDEX IF NOT EXISTS clicks_code ON clicks (code, at);
CREATE TABLE IF NOT EXISTS discount_codes (
    tenant TEXT NOT NULL, pool TEXT NOT NULL, code TEXT NOT NULL,
    campaign_id {INT}, subscriber_id {INT}, reserved_at {REAL},
    PRIMARY KEY (tenant, pool, code)
);
CREATE UNIQUE INDEX IF NOT EXISTS discount_codes_owner ON discount_codes (tenant, pool, campaign_id, subscriber_id);
CREATE TABLE IF NOT EXISTS gateway_sync (
    tenant TEXT NOT NULL, phone TEXT NOT NULL, action TEXT NOT NULL, at {REAL} NOT NULL,
    PRIMARY KEY (tenant, phone)
);
"""

# ---- SEGMENTS_DDL: tables/indexes the segments work adds (owned by helper "segments") ----
# Covering indexes for compiled segments (campaigns/store/segment_sql.py): each event condition is an
# uncorrelated `subscriber_id IN (SELECT ... WHERE tenant = ? AND <time> >= ? ...)`, so these let
# both engines answer it from the index alone (no table lookups): windows on orders and activities,
# the items of a category joined to their order's owner and time (``orders_segment_owner`` on SQLite,
# the key itself on PostgreSQL: ``ORDER_KEY``), open abandoned checkouts.
# `activities_segment` also answers every read by (tenant, kind, at): the older `activities_kind`,
# its prefix, was an index entry an activity that no read needed (dropped from stores made before: AUDIENCE_DDL).
SEGMENTS_DDL = """
CREATE INDEX IF NOT EXISTS orders_segment_spend ON orders (tenant, subscriber_id, created_at, total, payment_status);
CREATE INDEX IF NOT EXISTS orders_segment_window ON orders (tenant, created_at, subscriber_id, total, payment_status);
{ORDER_OWNER};
CREATE INDEX IF NOT EXISTS order_items_segment ON order_items (tenant, category, order_id, price, quantity);
CREATE INDEX IF NOT EXISTS activities_segment ON activities (tenant, kind, at, subscriber_id);
CREATE INDEX IF NOT EXISTS checkouts_segment_abandoned ON checkouts (tenant, abandoned_at, subscriber_id) WHERE completed_at IS NULL;
"""
# ---- end of SEGMENTS_DDL ----

# ---- REPORT_DDL: campaign report, cost and cross-campaign attribution (owned by helper "cbench") ----
# docs/CAMPAIGNS-SENDING.md, "Message sources": a message is either a campaign recipient
# (campaign_recipients) or a flow step's send (flow_messages, written by the flow runtime); both
# carry the gateway's message_id, whose cost (segments x the carrier's price per segment, read back
# from the gateway) is kept in message_costs. flow_links ties a flow message's short links (rows of
# short_links with campaign_id 0) to it. The indexes serve the report's per-subscriber histories.
REPORT_DDL = """
CREATE TABLE IF NOT EXISTS flow_messages (
    tenant TEXT NOT NULL, id TEXT NOT NULL, flow_id TEXT NOT NULL, step TEXT NOT NULL,
    subscriber_id {INT} NOT NULL, sent_at {REAL} NOT NULL, message_id TEXT,
    state TEXT NOT NULL DEFAULT 'submitted', state_at {REAL}, discount_code TEXT,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS flow_messages_subscriber ON flow_messages (tenant, subscriber_id, sent_at);
CREATE INDEX IF NOT EXISTS flow_messages_gateway ON flow_messages (tenant, message_id);
CREATE TABLE IF NOT EXISTS flow_links (
    code TEXT PRIMARY KEY, tenant TEXT NOT NULL, flow_message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flow_links_message ON flow_links (tenant, flow_message);
CREATE TABLE IF NOT EXISTS message_costs (
    tenant TEXT NOT NULL, message_id TEXT NOT NULL, carrier TEXT, segments {INT} NOT NULL, cost {INT},
    PRIMARY KEY (tenant, message_id)
);
CREATE INDEX IF NOT EXISTS campaign_recipients_subscriber ON campaign_recipients (tenant, subscriber_id, send_at);
CREATE INDEX IF NOT EXISTS short_links_subscriber ON short_links (tenant, subscriber_id);
CREATE INDEX IF NOT EXISTS discount_codes_code ON discount_codes (tenant, code);
CREATE INDEX IF NOT EXISTS consent_ledger_action ON consent_ledger (tenant, action, at);
"""
# ---- end of REPORT_DDL ----

# ---- INBOX_DDL: two-way conversations (owned by helper "inbox"; campaigns/store/inbox_sql.py) ----
# ``conversations``: one per phone per tenant (a sender who is not a subscriber gets one too; the
# subscriber is found by phone when read), its queue state and assignee. ``conversation_messages``:
# its history written by this layer (replies received, answers by people, sign-up replies, flow
# sends recorded by the flow runtime), unique per tenant by ``message_id`` (``mo:<gateway id>``:
# a redelivered webhook is stored once). Answers keep the exact request sent to the gateway
# (``request``) and its Idempotency-Key (``gateway_key``), so a resend after a crash is the same
# bytes. Campaign sends are not copied here: the history reads ``campaign_recipients`` (nothing to
# keep in step, nothing lost). ``response_s``: on an answer that ended a wait, how long it was.
INBOX_DDL = """
CREATE TABLE IF NOT EXISTS conversations (
    tenant TEXT NOT NULL, id {ID}, phone TEXT NOT NULL, our_number TEXT,
    needs_reply {INT} NOT NULL DEFAULT 0, waiting_since {REAL}, closed {INT} NOT NULL DEFAULT 0,
    assignee TEXT, opted_out {INT} NOT NULL DEFAULT 0,
    created_at {REAL} NOT NULL, last_at {REAL} NOT NULL,
    UNIQUE (tenant, phone)
);
CREATE INDEX IF NOT EXISTS conversations_queue ON conversations (tenant, needs_reply, waiting_since, id);
CREATE INDEX IF NOT EXISTS conversations_assignee ON conversations (tenant, assignee, id);
CREATE TABLE IF NOT EXISTS conversation_messages (
    tenant TEXT NOT NULL, seq {ID}, conversation_id {INT} NOT NULL, message_id TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')), kind TEXT NOT NULL, text TEXT NOT NULL,
    at {REAL} NOT NULL, by_whom TEXT, route TEXT,
    gateway_key TEXT, request TEXT, gateway_id TEXT, state TEXT, state_at {REAL}, error TEXT,
    response_s {REAL},
    UNIQUE (tenant, message_id)
);
CREATE INDEX IF NOT EXISTS conversation_messages_history ON conversation_messages (tenant, conversation_id, at, seq);
CREATE INDEX IF NOT EXISTS conversation_messages_gateway ON conversation_messages (tenant, gateway_id);
CREATE INDEX IF NOT EXISTS conversation_messages_answered ON conversation_messages (tenant, at) WHERE response_s IS NOT NULL;
CREATE INDEX IF NOT EXISTS conversation_messages_unsettled ON conversation_messages (tenant, seq) WHERE kind = 'answer' AND state IN ('sending', 'queued', 'submitted', 'accepted');
"""
# ---- end of INBOX_DDL ----

# ---- AUDIENCE_DDL: the event ingest path (owned by helper "audience") ----
# Every index on a hot table is paid on every insert (a random b-tree page per row and index, written
# again at each commit): orders and order_items keep only what a lookup or a segment reads. These
# three were prefixes of the segments' covering indexes above (orders_segment_spend,
# orders_segment_window, order_items_segment), so they cost inserts and served nothing those do not.
# segment_members_subscriber (tenant, subscriber_id) became segment_members_by_subscriber with the
# segment id in it: not covering, SQLite (without statistics, or with stale ones) preferred the
# covering primary key on `tenant` alone and read every membership of the shop per batch.
# processed_events (every event's id, claimed once) is WITHOUT ROWID on SQLite in a store made since
# 2026-12-07 (issue 17, third pass): its one lookup is the whole key, so the key's b-tree is the table,
# one b-tree insert per event instead of two (a rowid table and its key's index). An older store keeps
# its table (the same answers).
# activities_kind (tenant, kind, at) was a prefix of activities_segment (tenant, kind, at,
# subscriber_id): every read it served, the longer one serves (2026-12-07, branch `pgevents2`).
AUDIENCE_DDL = """
DROP INDEX IF EXISTS activities_kind;
DROP INDEX IF EXISTS orders_subscriber;
DROP INDEX IF EXISTS orders_created;
DROP INDEX IF EXISTS order_items_category;
DROP INDEX IF EXISTS segment_members_subscriber;
"""
# ---- end of AUDIENCE_DDL ----

# ---- ROLLUPS_DDL: per-subscriber rollups of orders and items (owned by helper "counts") ----
# campaigns/store/rollups.py: one row per (tenant, key, bucket, subscriber) with n >= 1, key ``o``
# (orders: count, sum of totals) or ``i:<category>`` / ``i`` (items: count, sum of price x quantity,
# quantity), bucket = floor(created_at / 2^22 s). The primary key is the order a count reads (a key,
# buckets from the window's first whole one, their subscribers); on SQLite the table is that key
# (WITHOUT ROWID: the sums are in the b-tree's leaves). The second index serves upkeep per subscriber
# and live membership (segment_sql with ``only``: "bought shoes", "shoes in 90 days" for the subscribers
# a batch touched): one seek per subscriber and key to its buckets, so it carries the key and bucket
# (SQLite does not seek on the primary key's columns a WITHOUT ROWID table appends to an index).
ROLLUPS_DDL = """
CREATE TABLE IF NOT EXISTS order_rollups (
    tenant TEXT NOT NULL, key TEXT NOT NULL, bucket {INT} NOT NULL, subscriber_id {INT} NOT NULL,
    n {INT} NOT NULL, amount {INT} NOT NULL, quantity {INT} NOT NULL,
    PRIMARY KEY (tenant, key, bucket, subscriber_id)
){CLUSTERED};
DROP INDEX IF EXISTS order_rollups_subscriber;
CREATE INDEX IF NOT EXISTS order_rollups_by_subscriber ON order_rollups (tenant, subscriber_id, key, bucket);
"""
# ---- end of ROLLUPS_DDL ----


# ---- FLOWS_DDL: the flow runtime's tables (owned by helper "flows"; campaigns/store/flow_sql.py) ----
# - ``flow_heads``: one row per flow (name, latest version, enabled); ``flow_versions``: every
#   published definition, kept for ever (a run keeps its version);
# - ``flow_templates``: the texts the flows' send nodes name (``template`` ids);
# - ``flow_runs``: one row per run (``run_key`` = the engine's run id, ``id`` the short numeric id of
#   the Idempotency-Key), the run as JSON plus the columns queries need; ``due`` is the due-time
#   index of the run's one timer (NULL: no timer);
# - ``flow_inputs``: the engine's input events (an order placed, a consent confirmed or revoked, a
#   checkout abandoned, a segment entered, a flow link clicked), queued in the transaction that
#   recorded the change (so a crash cannot lose one), drained by the runtime in order;
#   ``flow_inputs_queue`` (tenant, id) is that order: a batch walks it and reads about ``limit`` x
#   workers entries whatever the queue's length (without it SQLite read the tenant's whole queue
#   through ``flow_inputs_subscriber`` and sorted it, for every batch: O(queue) a batch);
# - ``flow_events``: input event ids applied (a redelivered event changes nothing);
# - ``flow_outbox``: the record of actions done, one row per send or webhook call, keyed by
#   ``flow-{run id}-{visit}`` and written in the transaction that advanced the run (an outbox: the
#   sender posts ``pending`` rows to the gateway with that key and marks them ``sent``);
# - ``flow_run_links``: short link code -> the run and send that carried it (clicks feed ``clicked``).
# A send the gateway took is also written, in the transaction that marks it sent, to the reports'
# ``flow_messages`` / ``flow_links`` (REPORT_DDL above): the message sources attribution reads.
FLOWS_DDL = """
CREATE TABLE IF NOT EXISTS flow_heads (
    tenant TEXT NOT NULL, flow_id TEXT NOT NULL, name TEXT NOT NULL, latest {INT} NOT NULL,
    enabled {INT} NOT NULL DEFAULT 0, created_at {REAL} NOT NULL, updated_at {REAL} NOT NULL,
    PRIMARY KEY (tenant, flow_id)
);
CREATE TABLE IF NOT EXISTS flow_versions (
    tenant TEXT NOT NULL, flow_id TEXT NOT NULL, version {INT} NOT NULL, definition TEXT NOT NULL,
    created_at {REAL} NOT NULL, PRIMARY KEY (tenant, flow_id, version)
);
CREATE TABLE IF NOT EXISTS flow_templates (
    tenant TEXT NOT NULL, template_id TEXT NOT NULL, text TEXT NOT NULL, updated_at {REAL} NOT NULL,
    PRIMARY KEY (tenant, template_id)
);
CREATE TABLE IF NOT EXISTS flow_runs (
    id {ID}, tenant TEXT NOT NULL, run_key TEXT NOT NULL, flow_id TEXT NOT NULL, version {INT} NOT NULL,
    subscriber_id {INT} NOT NULL, object_id TEXT, node TEXT, visit {INT} NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'ended')), ended TEXT,
    started_at {REAL} NOT NULL, updated_at {REAL} NOT NULL, due {REAL}, run TEXT NOT NULL{RUN_KEY}
);
CREATE INDEX IF NOT EXISTS flow_runs_tenant_due ON flow_runs (tenant, due) WHERE due IS NOT NULL;
{RUN_BY_SUBSCRIBER};
CREATE INDEX IF NOT EXISTS flow_runs_flow ON flow_runs (tenant, flow_id, subscriber_id);
CREATE TABLE IF NOT EXISTS flow_events (
    tenant TEXT NOT NULL, event_id TEXT NOT NULL, PRIMARY KEY (tenant, event_id)
);
CREATE TABLE IF NOT EXISTS flow_outbox (
    tenant TEXT NOT NULL, key TEXT NOT NULL, run_id {INT} NOT NULL, flow_id TEXT NOT NULL,
    version {INT} NOT NULL, step TEXT NOT NULL, visit {INT} NOT NULL, subscriber_id {INT} NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('sms', 'mms', 'webhook')), category TEXT NOT NULL,
    recipient TEXT NOT NULL, sender TEXT NOT NULL, body TEXT NOT NULL, media_url TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed', 'skipped')), detail TEXT,
    message_id TEXT, created_at {REAL} NOT NULL, sent_at {REAL},
    PRIMARY KEY (tenant, key)
);
CREATE INDEX IF NOT EXISTS flow_outbox_pending ON flow_outbox (created_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS flow_outbox_webhooks ON flow_outbox (created_at) WHERE state = 'pending' AND kind = 'webhook';
CREATE INDEX IF NOT EXISTS flow_outbox_flow ON flow_outbox (tenant, flow_id, step);
CREATE INDEX IF NOT EXISTS flow_outbox_subscriber ON flow_outbox (tenant, subscriber_id, created_at);
CREATE TABLE IF NOT EXISTS flow_inputs (
    id {ID}, tenant TEXT NOT NULL, subscriber_id {INT} NOT NULL, event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flow_inputs_subscriber ON flow_inputs (tenant, subscriber_id, id);
CREATE INDEX IF NOT EXISTS flow_inputs_queue ON flow_inputs (tenant, id);
CREATE TABLE IF NOT EXISTS flow_run_links (
    code TEXT PRIMARY KEY, tenant TEXT NOT NULL, run_id {INT} NOT NULL, send_key TEXT NOT NULL,
    message_key TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS flow_run_links_message ON flow_run_links (tenant, message_key);
"""
# ---- end of FLOWS_DDL ----


#: Columns added after a table was first shipped: (table, column, type). A store made before them is
#: altered at open (``upgrades``). ``cost``: the message's price, set when the gateway's state event
#: prices it (``record_cost``), so the report sums it from the row (no join to message_costs).
#: ``subscriber_stats.latest_order_at`` / ``latest_order_id``: the key (``created_at``, ``order_id``) of
#: the order whose status is ``last_order_payment_status`` (the latest of all), so a batch's aggregate
#: upsert compares its own latest order with it instead of seeking the subscriber's orders
#: (campaigns/store/event_batch.py); filled from the orders when the columns are added.
#: ``checkouts.url_at``: the instant of the event whose url is stored (the newest event that gave one
#: wins, whatever the arrival order); filled with ``updated_at`` where a url is stored when added.
#: ``campaign_recipients.clicked``: 1 once a human click of one of the recipient's links is stored
#: (set in the click's own transaction by every click write: ``campaign_sql.mark_clicked``, the
#: PostgreSQL flush's ``m`` part), so the report counts unique clicks in its one pass over the
#: recipients instead of a probe per stored click (docs/ARCHITECTURE.md, "Unique clicks on the
#: recipient's row"); filled from the stored clicks when added (``clicked_fill``).
ADDED_COLUMNS = [("campaign_recipients", "cost", "{INT}"), ("flow_messages", "cost", "{INT}"),
                 ("subscriber_stats", "latest_order_at", "{REAL}"), ("subscriber_stats", "latest_order_id", "TEXT"),
                 ("checkouts", "url_at", "{REAL}"), ("link_ranges", "holes", "TEXT"),
                 ("campaign_recipients", "clicked", "{INT} NOT NULL DEFAULT 0"),
                 # A flow webhook whose receiver failed is not tried again before next_at (flow_runtime.py).
                 ("flow_outbox", "next_at", "{REAL}")]
#: After the added columns: the report's covering index. SQLite's GROUP BY reads it alone, cost and
#: the clicked mark included. PostgreSQL's reads the table (a sequential scan: a campaign is most of
#: it), so there the index leaves ``clicked`` out: a first click's update of the row then touches no
#: index when the page has room (a HOT update; docs/BENCHMARKS.md, "The report's unique clicks from
#: the recipient's row").
_AFTER_COLUMNS = {"sqlite": """
DROP INDEX IF EXISTS campaign_recipients_report;
DROP INDEX IF EXISTS campaign_recipients_report_cost;
CREATE INDEX IF NOT EXISTS campaign_recipients_report_clicked ON campaign_recipients (tenant, campaign_id, variant, send_at, state, batch, cost, clicked)
""", "postgres": """
DROP INDEX IF EXISTS campaign_recipients_report;
CREATE INDEX IF NOT EXISTS campaign_recipients_report_cost ON campaign_recipients (tenant, campaign_id, variant, send_at, state, batch, cost)
"""}

#: Every recipient with a stored human click on one of its links, marked (a store made before the
#: ``clicked`` column; or after a bulk load of clicks, ``bench.campaign.seed_outcomes``).
CLICKED_FILL = ("UPDATE campaign_recipients SET clicked = 1 WHERE clicked = 0 AND (tenant, campaign_id, subscriber_id) "
                "IN (SELECT l.tenant, l.campaign_id, l.subscriber_id FROM clicks c JOIN short_links l ON l.code = c.code "
                "WHERE c.verdict = 'click' AND l.campaign_id <> 0)")


#: PostgreSQL: the room kept free on each page of the tables every order event updates in place (its
#: subscriber's aggregates row, its rollup rows when the bucket has one). An update whose new version
#: fits on the row's own page and changes no indexed column is a HOT update: no entry in any of the
#: table's indexes. Packed full (the default, 100), most pages had no room, so about a third of the
#: aggregates updates wrote a new entry in both of that table's indexes and moved the row to another
#: page (docs/BENCHMARKS.md, "PostgreSQL's order events: room for HOT updates"). Set at open where the
#: table lacks it: it shapes the pages written from then on (a bulk load's, an update's new page), an
#: older store's full pages fill the rest as their rows move. SQLite updates its b-tree in place.
PG_FILLFACTOR = {"subscriber_stats": 80, "order_rollups": 80}


def upgrades(dialect: Dialect, columns: Callable[[str], set[str]]) -> list[str]:
    """What a store opened after ``statements`` runs: the ``ADDED_COLUMNS`` its tables lack
    (``columns(table)``: the names they have), then what needs them. Idempotent."""
    had = columns("subscriber_stats")
    out = [f"ALTER TABLE {t} ADD COLUMN {c} {d.format(**_TYPES[dialect])}" for t, c, d in ADDED_COLUMNS
           if c not in columns(t)]  # fmt: skip
    if "latest_order_id" not in had:
        out.append(latest_order_fill(dialect))
    if "url_at" not in columns("checkouts"):
        out.append("UPDATE checkouts SET url_at = updated_at WHERE url IS NOT NULL")
    if "clicked" not in columns("campaign_recipients"):
        out.append(CLICKED_FILL)
    return out + [x.strip() for x in _AFTER_COLUMNS[dialect].split(";") if x.strip()]


def latest_order_fill(dialect: Dialect) -> str:
    """An ``UPDATE`` setting every aggregates row's latest order key from the stored orders (after
    a bulk load, or when the columns are added): greatest ``(created_at, order_id)``, the ids by
    code point as Python compares them."""
    collate = ' COLLATE "C"' if dialect == "postgres" else ""
    latest = ("FROM orders o WHERE o.tenant = subscriber_stats.tenant AND o.subscriber_id = subscriber_stats.subscriber_id "
              f"ORDER BY o.created_at DESC, o.order_id{collate} DESC LIMIT 1")  # fmt: skip
    return (f"UPDATE subscriber_stats SET latest_order_at = (SELECT o.created_at {latest}), "
            f"latest_order_id = (SELECT o.order_id {latest}) WHERE last_order_payment_status IS NOT NULL")


def statements(dialect: Dialect) -> list[str]:
    """The DDL for ``dialect``, one statement each (idempotent: IF NOT EXISTS)."""
    text = (DDL + SEGMENTS_DDL + REPORT_DDL + INBOX_DDL + FLOWS_DDL + AUDIENCE_DDL + ROLLUPS_DDL).format(**_TYPES[dialect])
    return [s.strip() for s in text.split(";") if s.strip()]
