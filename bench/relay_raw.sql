-- Raw-SQL reference for the relay (issue 3): claim a batch of unpublished outbox events,
-- insert one django-q2 queue row per event (a payload as long as a real signed package)
-- and mark the events published, in ONE statement and transaction.
-- pgbench -n -f bench/relay_raw.sql -D batch=500 -D plen=486 -c 1 -t N DB
WITH claimed AS (
    SELECT id FROM outbox_outboxevent
    WHERE published_at IS NULL AND available_at <= now()
    ORDER BY available_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE outbox_outboxevent AS e
    SET published_at = now(), handoffs = e.handoffs + 1
    FROM claimed
    WHERE e.id = claimed.id
    RETURNING e.id, e.topic
)
INSERT INTO django_q_ormq (key, payload, lock)
SELECT 'reviews', rpad(md5(m.id::text) || m.topic || m.id::text, :plen, 'x'), now()
FROM marked AS m;
