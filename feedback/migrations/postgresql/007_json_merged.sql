-- json_merged(doc, key, value): the JSON document ``doc`` (NULL: {}) with ``value`` merged in
-- under ``key`` as an RFC 7386 merge patch (nested objects merge, a null removes its key), as
-- DuckDB's 007 defines it on DuckDB's json_merge_patch. PostgreSQL has no merge patch: this one
-- orders the keys as DuckDB's does (the target's keys the patch leaves alone, then the patch's).

CREATE FUNCTION json_merge_patch(target json, patch json) RETURNS json
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF json_typeof(patch) IS DISTINCT FROM 'object' THEN
        RETURN patch;
    END IF;
    RETURN (
        SELECT coalesce(json_object_agg(key, CASE WHEN p.value IS NULL THEN t.value
                                                  ELSE json_merge_patch(t.value, p.value) END
                                        ORDER BY p.n NULLS FIRST, t.n), '{}')
        FROM json_each(CASE WHEN json_typeof(target) = 'object' THEN target ELSE '{}' END)
             WITH ORDINALITY AS t (key, value, n)
        FULL JOIN json_each(patch) WITH ORDINALITY AS p (key, value, n) USING (key)
        WHERE json_typeof(p.value) IS DISTINCT FROM 'null'
    );
END $$;

CREATE FUNCTION json_merged(doc json, key text, value json) RETURNS json
LANGUAGE sql IMMUTABLE AS $$ SELECT json_merge_patch(coalesce(doc, '{}'), json_build_object(key, value)) $$;
