-- Replay nonces are kept 130 s to refuse a worker message seen before.
-- Unlogged: no WAL per message (one per result and heartbeat); a crash of
-- the database server empties the table, which only reopens that 130 s
-- window for messages sent before the crash (they still need a valid
-- signature and a timestamp within 60 s).
ALTER TABLE seen_nonces SET UNLOGGED;
