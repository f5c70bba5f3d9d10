-- What happened to each message (mailspool-events), kept after the message is gone,
-- and the recipients mail is no longer sent to.

CREATE TABLE mailspool_events (
    seq        bigserial PRIMARY KEY,  -- the history's order and its cursor
    time       bigint NOT NULL,
    kind       text   NOT NULL,
    message    text   NOT NULL,        -- the spool's message id
    message_id text,                   -- the Message-ID header, bare (no <>)
    recipient  text   NOT NULL,        -- lowercased
    event      text   NOT NULL         -- the event's JSON, as the API gives it
);
CREATE INDEX mailspool_events_message ON mailspool_events (message);
CREATE INDEX mailspool_events_message_id ON mailspool_events (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX mailspool_events_recipient ON mailspool_events (recipient);
CREATE INDEX mailspool_events_time ON mailspool_events (time);

CREATE TABLE mailspool_suppressions (
    address text NOT NULL,             -- lowercased
    domain  text NOT NULL,             -- the sending domain it applies to; '' for all
    expires bigint,
    entry   text NOT NULL,             -- the entry's JSON
    PRIMARY KEY (address, domain)
);

-- Where each reader of the history (a webhook's sender) is: saved once what it read
-- was delivered.
CREATE TABLE mailspool_cursors (
    name   text PRIMARY KEY,
    cursor text NOT NULL
);

-- Work one process in the cluster does at a time (a webhook's sender): a lease its
-- holder renews.
CREATE TABLE mailspool_jobs (
    name   text PRIMARY KEY,
    holder text   NOT NULL,
    until  bigint NOT NULL
);
