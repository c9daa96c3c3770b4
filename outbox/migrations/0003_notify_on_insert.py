from django.db import migrations

# Every new event wakes the relays, whoever inserts it: the trigger sends the NOTIFY in the
# INSERT's own round trip (a separate `SELECT pg_notify` cost each review POST one more).
# The channel is outbox.models.NOTIFY_CHANNEL; Postgres delivers it at commit, never for a
# rollback, and folds a transaction's identical notifications into one.
CREATE = """
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_event_notify AFTER INSERT ON outbox_outboxevent
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""
DROP = """
DROP TRIGGER outbox_event_notify ON outbox_outboxevent;
DROP FUNCTION outbox_notify();
"""


class Migration(migrations.Migration):
    dependencies = [("outbox", "0002_event_key_help")]

    operations = [migrations.RunSQL(CREATE, DROP)]
