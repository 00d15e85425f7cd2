-- Relay's one schema. `relay migrate` applies it on every start, so every statement here must be
-- idempotent: CREATE ... IF NOT EXISTS, CREATE OR REPLACE, ADD COLUMN IF NOT EXISTS.
-- Postgres is the source of truth; Redis only carries wake-ups and rate-limit state.

CREATE TABLE IF NOT EXISTS relay_schema (
    id integer PRIMARY KEY CHECK (id = 1),
    digest text NOT NULL,
    applied_at timestamptz NOT NULL
);

-- Ids are a prefix, 12 hex digits of milliseconds and 16 random hex digits: unique without
-- coordination and roughly time-ordered, so they read well and sort well.
CREATE OR REPLACE FUNCTION relay_id(prefix text) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT prefix || '_'
        || lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
        || substr(replace(gen_random_uuid()::text, '-', ''), 1, 16)
$$;

-- ---------------------------------------------------------------------------------------------
-- Accounts: one upstream login (a Dext practice token or an InvoiceXT key).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS accounts (
    id text PRIMARY KEY DEFAULT relay_id('acc'),
    provider text NOT NULL CHECK (provider IN ('dext', 'invoicext')),
    name text NOT NULL,
    base_url text NOT NULL,
    api_token_enc text NOT NULL,              -- Fernet token under RELAY_SECRET_KEY, never plain
    backfill boolean NOT NULL DEFAULT false,  -- emit events for the baseline scan too
    status text NOT NULL DEFAULT 'baselining' CHECK (status IN ('baselining', 'active', 'broken')),
    baseline_completed_at timestamptz,
    last_poll_at timestamptz,                 -- last successful poll of anything
    last_error text,
    broken_at timestamptz,                    -- set on invalid_token; retried every 15 minutes
    rate_limit jsonb NOT NULL DEFAULT '{}',   -- last seen {limit, remaining, reset_at}
    deleted_at timestamptz,                   -- soft delete: polling stops, events stay
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS accounts_live ON accounts (created_at DESC) WHERE deleted_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Events: the transactional outbox. Written in the same transaction as the snapshot change that
-- caused it; `body` is the webhook body exactly as documented (and as GET /v1/events shows it).
-- `seq` orders events for pagination and fan-out; `id` is the public id and the webhook-id.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS events (
    seq bigserial UNIQUE,
    id text PRIMARY KEY DEFAULT relay_id('evt'),
    type text NOT NULL,
    account_id text REFERENCES accounts (id),
    client_id text,
    object_type text NOT NULL,
    object_id text NOT NULL,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_account ON events (account_id, seq DESC);
CREATE INDEX IF NOT EXISTS events_type ON events (type, seq DESC);
CREATE INDEX IF NOT EXISTS events_object ON events (object_id, seq DESC);
CREATE INDEX IF NOT EXISTS events_created ON events (created_at DESC);

-- ---------------------------------------------------------------------------------------------
-- Delivery (relay/subscriptions.py, relay/delivery.py): subscriptions, one delivery per
-- (event, subscription, generation) and every attempt. Postgres holds each delivery and its
-- `next_attempt_at`; Redis only wakes workers, so flushing it loses nothing.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS subscriptions (
    id text PRIMARY KEY DEFAULT relay_id('sub'),
    url text NOT NULL,
    kind text NOT NULL DEFAULT 'webhook' CHECK (kind IN ('webhook', 'slack')),
    event_types text[] NOT NULL,
    account_ids text[],                       -- null: any account
    client_ids text[],                        -- null: any client
    filter text,                              -- JMESPath on the event body, compiled at create
    description text,
    enabled boolean NOT NULL DEFAULT true,
    disabled_reason text,
    secret_enc text NOT NULL,                 -- Fernet token of whsec_..., never plain
    previous_secret_enc text,                 -- still signs until previous_secret_expires_at
    previous_secret_expires_at timestamptz,
    deleted_at timestamptz,                   -- soft delete: its deliveries stay readable
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS subscriptions_live ON subscriptions (id DESC) WHERE deleted_at IS NULL;

-- Set only on events stored already fanned out: a `relay.ping` and a backfill's `*.snapshot`,
-- whose deliveries whoever stores them makes, so they are never queued for fan-out (below). Also
-- set on every event fanned out before `event_fanout_queue` existed, when it was the marker.
ALTER TABLE events ADD COLUMN IF NOT EXISTS fanned_out_at timestamptz;
-- The exact webhook body where the provider has its own format (InvoiceXT: seed 004's planned
-- payload, money spelled as read); NULL means the body is the envelope itself.
ALTER TABLE events ADD COLUMN IF NOT EXISTS payload bytea;

-- Fan-out's queue (relay/events.py `claim_unfanned_events`): an event is pending fan-out exactly
-- while it has a row here, and the fan-out that makes its deliveries deletes the row in the same
-- transaction. A queue, not a "last seq seen" cursor, because seq values commit out of order and
-- a cursor would skip the late ones. It replaces marking the event (`fanned_out_at = now()`),
-- Postgres' biggest cost per event at 2,000 events/s (pg_stat_statements on
-- bench/delivery_shape.py): a partial index on fanned_out_at made that update not HOT, so every
-- event row was copied with its body and 8 index entries written again. A prototype claimed from
-- this table in 0.09-0.10 ms an event instead of 0.12-0.15, and storing events cost the same.
-- No foreign key: it would be checked on every row queued, and a row whose event is gone (deleted
-- by hand, or by the retention of a release before this table) is simply dropped by the next
-- fan-out. Keyed by `seq`: fan-out takes the oldest first, retention looks a candidate up by it.
-- Created, and filled with the events pending then, only once (this file runs on every start).
DO $$
BEGIN
    IF to_regclass('event_fanout_queue') IS NULL THEN
        -- No event may be stored between the copy and the trigger's creation (both commit with
        -- this migration): one would be pending and never queued.
        LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE;
        CREATE TABLE event_fanout_queue (seq bigint PRIMARY KEY, event_id text NOT NULL);
        INSERT INTO event_fanout_queue (seq, event_id)
            SELECT seq, id FROM events WHERE fanned_out_at IS NULL;
    END IF;
END $$;
DROP INDEX IF EXISTS events_fan_out_pending;  -- the old marker's: the queue took its place

-- Every statement storing events queues them, COPY included (relay.events.insert_events uses
-- it): one set-based insert per statement, not a trigger call per row.
CREATE OR REPLACE FUNCTION relay_queue_fan_out() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_fanout_queue (seq, event_id)
        SELECT seq, id FROM stored WHERE fanned_out_at IS NULL;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS events_queue_fan_out ON events;
CREATE TRIGGER events_queue_fan_out AFTER INSERT ON events
    REFERENCING NEW TABLE AS stored FOR EACH STATEMENT EXECUTE FUNCTION relay_queue_fan_out();

-- Stored events wake the dispatchers at once through LISTEN/NOTIFY (works with Redis flushed).
-- A transaction opened by `relay.events.outbox()` notifies after its commit instead: commits of
-- transactions that notified are serialized by Postgres (relay/events.py says what it cost).
CREATE OR REPLACE FUNCTION relay_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('relay.announce_events', true) IN ('after_commit', 'due') THEN
        PERFORM set_config('relay.announce_events', 'due', true);  -- outbox() will notify
    ELSE
        PERFORM pg_notify('relay_wake', 'events');
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS events_notify ON events;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION relay_notify_events();

CREATE TABLE IF NOT EXISTS deliveries (
    id text PRIMARY KEY DEFAULT relay_id('dlv'),
    event_id text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    subscription_id text NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    generation integer NOT NULL DEFAULT 0,    -- replays add a generation
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempt_count integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    lease_token uuid,                         -- set while a dispatcher holds the delivery
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, subscription_id, generation)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status, id DESC);
CREATE INDEX IF NOT EXISTS deliveries_subscription ON deliveries (subscription_id, id DESC);

-- A claim's lease ends at leased_until: a delivery held by a worker that died is due again then.
-- No index may cover lease_token or leased_until, and pages keep half their room free, so that a
-- claim is a HOT update (no index entries written). With the attempts' foreign key gone too
-- (below), Postgres' CPU for claiming and recording one delivery fell from about 80 to 50 us.
-- (Before this column a claim moved next_attempt_at to the lease's end; rows claimed that way
-- stay correct: leased_until is null, so they are due again when that lease ends.)
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS leased_until timestamptz;
ALTER TABLE deliveries SET (fillfactor = 50);

-- Attempts are written only by the statement that records them, joined to the delivery row it
-- has just updated (and so locked): no attempt can point at a missing delivery. A foreign key
-- would check that again, row by row, on the hottest insert of all; deleting a delivery (its
-- event or subscription deleted) removes its attempts through a statement trigger instead.
CREATE TABLE IF NOT EXISTS delivery_attempts (
    delivery_id text NOT NULL,
    attempt integer NOT NULL,                 -- 1-based
    at timestamptz NOT NULL,
    status_code integer,
    latency_ms integer,
    error text,
    response_excerpt text,
    PRIMARY KEY (delivery_id, attempt)
);
ALTER TABLE delivery_attempts DROP CONSTRAINT IF EXISTS delivery_attempts_delivery_id_fkey;

CREATE OR REPLACE FUNCTION relay_delete_attempts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM delivery_attempts AS a USING gone WHERE a.delivery_id = gone.id;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS deliveries_delete_attempts ON deliveries;
CREATE TRIGGER deliveries_delete_attempts AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION relay_delete_attempts();

-- ---------------------------------------------------------------------------------------------
-- Admin API (accounts): "poll now" requests are recorded here, durably, for the scheduler; the
-- second index serves the keyset pagination of GET /v1/accounts on (created_at, id).
-- ---------------------------------------------------------------------------------------------
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS poll_requested_at timestamptz;
CREATE INDEX IF NOT EXISTS accounts_live_page ON accounts (created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Poll scheduler (relay/scheduling.py): the schedule of every poll task and one lease per
-- account. Postgres holds it so a restart or a Redis flush resumes where polling was: what ran
-- when, the adaptive interval, sweep/baseline cursors, and which first runs (baselines) are done.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS poll_tasks (
    account_id text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    client_id text NOT NULL,                  -- '' for the account-level /clients task
    kind text NOT NULL,                       -- baseline, head, hot, clients, sweep, ...
    interval_s double precision NOT NULL,     -- current adaptive interval
    due_at timestamptz NOT NULL,
    est_cost double precision NOT NULL,       -- requests per run, smoothed
    last_run_at timestamptz,
    baselined_at timestamptz,                 -- first complete run done: later runs emit
    forced boolean NOT NULL DEFAULT false,    -- POST /v1/accounts/{id}/poll: run before all else
    cursor jsonb NOT NULL DEFAULT '{}',       -- sliced runs: where the sweep/baseline is
    runs integer NOT NULL DEFAULT 0,
    changes integer NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, client_id, kind)
);
CREATE INDEX IF NOT EXISTS poll_tasks_due ON poll_tasks (account_id, due_at);
-- When the task was made: a client's tasks are made when it first appears, so the baseline
-- progress of late clients counts the ones that appeared together (rows made before this
-- column say "when migrated", which only matters while their client is baselining).
ALTER TABLE poll_tasks ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();

CREATE TABLE IF NOT EXISTS poll_state (
    account_id text PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    lease_holder text,                        -- the worker polling this account now
    leased_until timestamptz,                 -- expired: any worker may take the account
    poll_request_seen_at timestamptz,         -- the accounts.poll_requested_at last honoured
    auth_failed_at timestamptz,               -- account.auth_failed reported, not yet recovered
    auth_tried_at timestamptz,                -- last attempt on a broken account
    token_digest text                         -- digest of the token that failed (replaced: retry)
);

-- ---------------------------------------------------------------------------------------------
-- Snapshots (relay/snapshots.py): the last version seen of every upstream object, per account,
-- object type and client, with a hash of its canonical form (volatile fields left out) so a
-- diff compares 16 bytes, not documents. `summary_hash` (documents) hashes the fields a
-- /documents summary shows, so "which summaries changed" is one COPY and a join.
-- `last_seen_at` is when a poll last wrote the row (new, changed, back after deletion): an
-- unchanged re-poll deliberately writes nothing. Complete scans record the ids of each page in
-- snapshot_scan_pages, so deletion detection rewrites no snapshot either.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS snapshots (
    account_id text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    object_type text NOT NULL,                -- client, connection, document, supplier, ...
    client_id text NOT NULL,                  -- for a client object, its own id
    object_id text NOT NULL,                  -- the upstream id; a connection's is its client's
    data jsonb NOT NULL,
    hash bytea NOT NULL,
    summary_hash bytea,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,                   -- reported gone after a complete scan
    PRIMARY KEY (account_id, object_type, client_id, object_id)
);

CREATE TABLE IF NOT EXISTS snapshot_scans (
    id bigserial PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    object_type text NOT NULL,
    client_id text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    partial_reason text                       -- set: the scan had a gap, it deletes nothing
);
CREATE INDEX IF NOT EXISTS snapshot_scans_client
    ON snapshot_scans (account_id, object_type, client_id, started_at DESC);

CREATE TABLE IF NOT EXISTS snapshot_scan_pages (
    scan_id bigint NOT NULL REFERENCES snapshot_scans (id) ON DELETE CASCADE,
    page text NOT NULL,                       -- the caller's page key, e.g. "costs:3"
    object_ids text[] NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scan_id, page)
);

-- quick_hash: XXH3-128 of the object's JSON in upstream key order (volatile fields out), what a
-- diff compares first; `hash`, of the key-sorted canonical form, is computed only when it
-- differs. Rows stored before it have none: their first diff refreshes them (no events).
ALTER TABLE snapshots ADD COLUMN IF NOT EXISTS quick_hash bytea;

-- A diff's anti-join and the summary check read only the key and hashes of live rows: with
-- this index they are index-only scans instead of reads of every stored document.
DROP INDEX IF EXISTS snapshots_live_hashes;  -- before quick_hash: INCLUDE (hash, summary_hash)
CREATE INDEX IF NOT EXISTS snapshots_live_keys
    ON snapshots (account_id, object_type, client_id, object_id)
    INCLUDE (quick_hash, summary_hash)
    WHERE deleted_at IS NULL;

-- The planner re-checks a client's "hot" documents (processing, review, ready) by status.
CREATE INDEX IF NOT EXISTS snapshots_document_status
    ON snapshots (account_id, client_id, (data->>'status'))
    WHERE object_type = 'document' AND deleted_at IS NULL;

CREATE INDEX IF NOT EXISTS events_client ON events (client_id, seq DESC);
-- Event bodies carry a whole document (about 2 KB): lz4 stores them about 30% faster than the
-- default pglz. Altered only when needed (the ALTER locks the table), skipped where Postgres
-- was built without lz4.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events'::regclass
               AND attname = 'body' AND attcompression IS DISTINCT FROM 'l') THEN
        ALTER TABLE events ALTER COLUMN body SET COMPRESSION lz4;
    END IF;
EXCEPTION WHEN feature_not_supported THEN NULL;
END $$;
-- end of the snapshots section

-- ---------------------------------------------------------------------------------------------
-- Tuning. A baseline grows `snapshots` from nothing to hundreds of thousands of rows; with the
-- default autoanalyze threshold (10% of the table) its statistics lag so far behind that the
-- planner scans the whole table for every page's diff instead of probing the key.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE snapshots SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 500);

-- ---------------------------------------------------------------------------------------------
-- Admin API (subscriptions): secrets replaced before their predecessor's overlap ended, as
-- [{"secret_enc", "expires_at"}]. Each keeps signing until its own `expires_at`, so two
-- rotations at once (or within 24 h) never cut short a secret a rotation promised 24 h more.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS older_secrets jsonb NOT NULL DEFAULT '[]';

-- ---------------------------------------------------------------------------------------------
-- Retention (relay/retention.py): gone snapshots are found by when they went, without a scan
-- of every live one (the index holds only the few rows reported deleted). Retention batches
-- pick the oldest events through events_created.
-- ---------------------------------------------------------------------------------------------
CREATE INDEX IF NOT EXISTS snapshots_gone ON snapshots (deleted_at) WHERE deleted_at IS NOT NULL;

-- Per-object order (relay/events.py, relay/delivery/ordering.py). `sequence` grows by one with
-- each event of an object (account, object_type, object_id) in detection order: the counter
-- row is taken (and so locked) in the transaction that stores the event, so two transactions
-- storing events of one object commit in the order of their numbers. Events stored before
-- this column have none (null).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS object_sequences (
    account_id text NOT NULL,                 -- '' for events without an account
    object_type text NOT NULL,
    object_id text NOT NULL,
    sequence bigint NOT NULL,                 -- the last number handed out
    PRIMARY KEY (account_id, object_type, object_id)
);
ALTER TABLE events ADD COLUMN IF NOT EXISTS sequence bigint;

-- `ordering: "object"`: the deliveries of such a subscription carry `order_key` (the event's
-- object). Of one (subscription, order_key) only the head (the earliest pending delivery) has a
-- `next_attempt_at`; the others wait with none, so the claim, unchanged, cannot see them. The
-- head settling promotes the next. Both indexes hold only ordered deliveries, so unordered
-- fan-out, claims and records write no entry in them.
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS ordering text NOT NULL DEFAULT 'none';
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS order_key text;
CREATE INDEX IF NOT EXISTS deliveries_ordered_pending ON deliveries (subscription_id, order_key)
    WHERE status = 'pending' AND order_key IS NOT NULL;

-- Replay windows and backfills (relay/delivery/recovery.py): a job streams its deliveries in
-- batches, resuming from `cursor` (committed with each batch, so a crash repeats nothing), and
-- only while fewer than a window of them are pending, so live traffic is never stuck behind it.
CREATE TABLE IF NOT EXISTS delivery_jobs (
    id text PRIMARY KEY DEFAULT relay_id('job'),
    subscription_id text NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('replay', 'backfill')),
    params jsonb NOT NULL,
    status text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'cancelled')),
    total integer NOT NULL,                   -- matching events or snapshots when it was made
    queued integer NOT NULL DEFAULT 0,        -- deliveries created so far
    cursor jsonb NOT NULL DEFAULT '{}',
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS delivery_jobs_running ON delivery_jobs (created_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS delivery_jobs_subscription ON delivery_jobs (subscription_id, id DESC);
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS job_id text;
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_id, status) WHERE job_id IS NOT NULL;

-- Dead endpoints (relay/delivery/endpoints.py): the failure streak of each subscription since
-- its last successful attempt, kept up to date by the dispatcher's record transaction. A streak
-- of at least 10 attempts older than RELAY_ENDPOINT_DISABLE_AFTER disables the subscription.
-- Only written when something changes (a failure, or the first success after failures).
-- ---------------------------------------------------------------------------------------------
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS failing_since timestamptz;
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS failed_attempts integer NOT NULL DEFAULT 0;

-- Live event stream (GET /v1/events/stream, relay/api/stream.py): `seq` values commit out of
-- order, so a reader that only remembers "the last seq sent" would skip a late commit. Each
-- event also records the transaction that wrote it; every transaction older than the snapshot's
-- xmin has finished, so reading in (xid, seq) order below that horizon never skips a row.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE events ADD COLUMN IF NOT EXISTS xid xid8 DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS events_stream ON events (xid, seq);

-- Operator console sessions (relay/ui/): only a hash of the cookie is stored, so a database
-- read gives no usable session; `csrf` is the per-session token every console form carries.
CREATE TABLE IF NOT EXISTS console_sessions (
    token_hash text PRIMARY KEY,
    csrf text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_expiry ON console_sessions (expires_at);

-- Account warnings (relay/account_warnings.py): upstream objects set aside because they could
-- not be used at all (not an object, no id, a watched or ordering field of an impossible type),
-- one row per account and kind, shown as the account's `warnings`. Counts only grow; a kind
-- whose `last_seen` is old has stopped happening.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS account_warnings (
    account_id text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind text NOT NULL,                       -- not_an_object, missing_id, unusable_field
    count bigint NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    example text NOT NULL,                    -- the latest reason: where, and what was wrong
    PRIMARY KEY (account_id, kind)
);

-- What decides matching (relay/delivery/subscriptions.py `MatcherCache`): `version` changes with
-- every commit that inserts, deletes or truncates subscriptions or changes a column matching
-- reads (id, enabled, deleted_at, event_types, account_ids, client_ids, filter, ordering), and
-- with no other, so the dispatcher's fan-out reads this one row each pass (a primary-key lookup,
-- 0.07 ms) instead of folding a stamp from every live subscription (11-27 ms a pass with 10,000
-- of them; EXPLAIN ANALYZE on this machine). It commits with the change that bumped it, so a
-- statement that sees a version sees exactly the subscriptions of that version.
-- Values come from a sequence (owned by no column, so no RESTART IDENTITY resets it): they
-- never repeat, even if the row is lost (a TRUNCATE of every table) and made again by the next
-- bump, so a cache can never take a later version for the one it holds.
-- ---------------------------------------------------------------------------------------------
CREATE SEQUENCE IF NOT EXISTS subscription_matching_versions;
CREATE TABLE IF NOT EXISTS subscription_matching (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    version bigint NOT NULL DEFAULT nextval('subscription_matching_versions')
);
INSERT INTO subscription_matching DEFAULT VALUES ON CONFLICT (id) DO NOTHING;

-- One bump per transaction, at its commit. Deferred, the row is locked after every other lock
-- the transaction takes (the recorder locks subscription rows, then deliveries, and may disable
-- one): a transaction waiting for it holds nothing the holder still needs, so no deadlock. The
-- transaction-local flag keeps a 10,000-row change to one update of the row (each row's event
-- still calls this function, which then returns at once). Nothing in Relay runs `SET
-- CONSTRAINTS`, which would fire it mid-transaction and lose that order. The pending events
-- also make Postgres refuse a TRUNCATE of subscriptions later in a transaction that changed
-- them ("pending trigger events"); nothing in Relay does that either.
CREATE OR REPLACE FUNCTION relay_bump_subscription_matching() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('relay.subscription_matching_bumped', true) IS DISTINCT FROM 'on' THEN
        PERFORM set_config('relay.subscription_matching_bumped', 'on', true);
        INSERT INTO subscription_matching DEFAULT VALUES
            ON CONFLICT (id) DO UPDATE SET version = excluded.version;
    END IF;
    RETURN NULL;
END
$$;
-- Constraint triggers cannot be replaced in place; a trigger's WHEN runs as the row changes, so
-- the recorder's streak updates (failing_since, failed_attempts) and secret rotations queue no
-- event at all. A TRUNCATE takes the whole table's lock anyway: its bump need not wait.
DROP TRIGGER IF EXISTS subscriptions_matching_rows ON subscriptions;
CREATE CONSTRAINT TRIGGER subscriptions_matching_rows AFTER INSERT OR DELETE ON subscriptions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION relay_bump_subscription_matching();
DROP TRIGGER IF EXISTS subscriptions_matching_changed ON subscriptions;
CREATE CONSTRAINT TRIGGER subscriptions_matching_changed AFTER UPDATE ON subscriptions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (
        OLD.id IS DISTINCT FROM NEW.id OR OLD.enabled IS DISTINCT FROM NEW.enabled
        OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at
        OR OLD.event_types IS DISTINCT FROM NEW.event_types
        OR OLD.account_ids IS DISTINCT FROM NEW.account_ids
        OR OLD.client_ids IS DISTINCT FROM NEW.client_ids
        OR OLD.filter IS DISTINCT FROM NEW.filter OR OLD.ordering IS DISTINCT FROM NEW.ordering
    )
    EXECUTE FUNCTION relay_bump_subscription_matching();
DROP TRIGGER IF EXISTS subscriptions_matching_truncated ON subscriptions;
CREATE TRIGGER subscriptions_matching_truncated AFTER TRUNCATE ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION relay_bump_subscription_matching();
