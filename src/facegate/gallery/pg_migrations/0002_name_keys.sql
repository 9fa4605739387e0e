-- Version 2: people.name_key is how a name looks (facegate.gallery.names: NFKC case-folded, TR39
-- skeleton), no longer its case-folded form. The keys are made again by FaceGate, in Python, right
-- after this migration (PgGallery._rekey_names); name_keys says which kind the table holds.
ALTER TABLE gallery_state ADD COLUMN name_keys integer NOT NULL DEFAULT 1;
