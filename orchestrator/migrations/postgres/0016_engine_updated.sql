-- The check that ends an event's write (orchestrator/src/engine/shared_db/
-- writes.rs): `got` jobs were updated of the `wanted` loaded; fewer means
-- another instance changed one meanwhile (its compare-and-set on the
-- version missed), and the transaction must not commit. Raised as a
-- serialization failure, which the engine runs again; the COMMIT sent
-- with the write (in the same round trip) then rolls back.
CREATE FUNCTION engine_updated(got bigint, wanted bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF got <> wanted THEN
        RAISE EXCEPTION '% of % job(s) changed meanwhile', wanted - got, wanted
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN got;
END $$;
