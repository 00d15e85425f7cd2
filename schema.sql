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

-- Fan-out marker: a pending flag, not a "last seq seen" cursor, because seq values commit out of
-- order and a cursor would skip the late ones.
ALTER TABLE events ADD COLUMN IF NOT EXISTS fanned_out_at timestamptz;
-- The exact webhook body where the provider has its own format (InvoiceXT: seed 004's planned
-- payload, money spelled as read); NULL means the body is the envelope itself.
ALTER TABLE events ADD COLUMN IF NOT EXISTS payload bytea;
CREATE INDEX IF NOT EXISTS events_fan_out_pending ON events (seq) WHERE fanned_out_at IS NULL;

-- Stored events wake the dispatchers at once through LISTEN/NOTIFY (works with Redis flushed).
CREATE OR REPLACE FUNCTION relay_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('relay_wake', 'events');
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
