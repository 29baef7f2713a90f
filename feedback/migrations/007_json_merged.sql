-- json_merged(doc, key, value): the JSON document ``doc`` (NULL: {}) with the JSON text ``value``
-- merged in under ``key`` as an RFC 7386 merge patch (nested objects merge, a null removes its
-- key). The cycle record's steps and outcome and a rejected adapter's reason are written with it;
-- PostgreSQL's 007 defines the same function, so those queries read the same on both backends.
CREATE MACRO json_merged(doc, key, value) AS json_merge_patch(coalesce(doc, '{}'), json_object(key::VARCHAR, value::JSON));
