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
-- Admin API (accounts): "poll now" requests are recorded here, durably, for the scheduler; the
-- second index serves the keyset pagination of GET /v1/accounts on (created_at, id).
-- ---------------------------------------------------------------------------------------------
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS poll_requested_at timestamptz;
CREATE INDEX IF NOT EXISTS accounts_live_page ON accounts (created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
