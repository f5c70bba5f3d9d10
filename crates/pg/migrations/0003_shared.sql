-- Limits held across the hosts that share this database (mailspool_spool::shared):
-- per destination, the adaptive window, the cooling period and a message-rate bucket;
-- its connection slots, each a lease that runs out with its holder; and small records
-- every host sees the same (MTA-STS policies, HTTP idempotency results).

CREATE TABLE mailspool_destinations (
    destination   text PRIMARY KEY,
    conn_window   double precision NOT NULL,  -- connections the cluster may hold
    cooling_until timestamptz,                -- a throttling reply cools it for all
    tokens        double precision NOT NULL DEFAULT 0,
    tokens_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mailspool_slots (
    destination text    NOT NULL,
    slot        integer NOT NULL,
    holder      text,                          -- host, pid and start token
    expires     timestamptz,
    PRIMARY KEY (destination, slot)
);
CREATE INDEX mailspool_slots_holder ON mailspool_slots (holder) WHERE holder IS NOT NULL;

CREATE TABLE mailspool_records (
    kind    text  NOT NULL,               -- 'mta-sts', 'idempotency'
    key     text  NOT NULL,
    value   bytea,                        -- NULL: claimed, its work under way
    expires timestamptz NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX mailspool_records_expires ON mailspool_records (expires);
