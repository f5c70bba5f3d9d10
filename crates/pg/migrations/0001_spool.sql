-- mailspool's PostgreSQL spool, version 1: what the 0.50 file spool keeps in names,
-- directories and side files, as rows. One message row (its bytes in chunks), one
-- node row per recipient.
--
-- No foreign keys on purpose: their triggers were most of the database's work per
-- delivered message. mailspool writes a message with its chunks and nodes in one
-- transaction and removes them in one statement (crates/pg/src/queue.rs, `remove`);
-- what a race can leave (a message whose last two nodes two hosts removed at once) is
-- removed by the hourly sweep.
CREATE TABLE mailspool_messages (
    pk        bigserial PRIMARY KEY,
    id        text   NOT NULL,          -- the spool id (a ULID; a 0.50 id when migrated)
    sender    text   NOT NULL,          -- '' is the null sender
    size      bigint NOT NULL,
    created   bigint NOT NULL,          -- unix seconds
    dkim      bytea                     -- the DKIM-Signature field it was signed with
);
CREATE INDEX mailspool_messages_id ON mailspool_messages (id);

-- The message's bytes, in order; 256 KiB a chunk, so nothing holds a big one whole.
CREATE TABLE mailspool_chunks (
    message bigint  NOT NULL,   -- mailspool_messages.pk
    seq     integer NOT NULL,
    data    bytea   NOT NULL,
    PRIMARY KEY (message, seq)
);

CREATE TABLE mailspool_nodes (
    pk           bigserial PRIMARY KEY,
    message      bigint   NOT NULL,  -- mailspool_messages.pk
    rcpt         text     NOT NULL,
    tier         smallint NOT NULL,
    entered      bigint   NOT NULL,     -- unix seconds it entered its tier (0.50's name time)
    due          bigint   NOT NULL,     -- entered + the tier's period
    held         boolean  NOT NULL DEFAULT false,
    attempts     integer  NOT NULL DEFAULT 0,
    last_reply   text,
    delay_warned boolean  NOT NULL DEFAULT false,
    origin       text UNIQUE,           -- the source node of a migration (moved once)
    -- The claim: who works on it, until when (renewed while that process lives).
    lease_host   text,
    lease_pid    integer,
    lease_token  text,
    lease_until  timestamptz
-- Room on each page, and no index on the lease columns: taking, renewing and giving
-- back a claim are then HOT updates (no index entry written).
) WITH (fillfactor = 70);
CREATE INDEX mailspool_nodes_due ON mailspool_nodes (due) WHERE NOT held;
CREATE INDEX mailspool_nodes_message ON mailspool_nodes (message);

CREATE TABLE mailspool_attempts (
    node      bigint  NOT NULL,     -- mailspool_nodes.pk
    time      bigint  NOT NULL,
    host      text    NOT NULL,
    reply     text    NOT NULL,
    delivered boolean NOT NULL
);
CREATE INDEX mailspool_attempts_node ON mailspool_attempts (node);

-- 0.50's usage/raw: "<time> <bytes> Spool|Sent" lines; a row stands for `nodes` of them
-- and `bytes` is their sum.
CREATE TABLE mailspool_usage (
    time  bigint  NOT NULL,
    bytes bigint  NOT NULL,
    kind  text    NOT NULL,
    nodes integer NOT NULL
);
CREATE INDEX mailspool_usage_time ON mailspool_usage (time);
