-- Names for modules (host/src/store/module_names.rs): `resize:stable`
-- points at one hash; a submission naming it runs that hash from then on.
-- The foreign key keeps a module from being deleted while a name points
-- at it.
CREATE TABLE module_names (
    name         text PRIMARY KEY,
    module_hash  text NOT NULL REFERENCES modules (hash),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX module_names_hash_idx ON module_names (module_hash);

-- Every move of a name, so a rollback is one call and an audit can tell
-- who moved it when.
CREATE TABLE module_name_moves (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    from_hash  text,            -- NULL when the name was new
    to_hash    text NOT NULL,
    moved_by   text NOT NULL,   -- the caller (module_names.rs says how)
    moved_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX module_name_moves_name_idx ON module_name_moves (name, id);
