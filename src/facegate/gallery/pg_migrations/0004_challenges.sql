-- Version 4: liveness challenges (issue 22), shared by every server on this database: a challenge
-- asked of one server may be answered on another, once (facegate.gallery.challenges).
CREATE TABLE challenges (
    id text PRIMARY KEY,
    owner text NOT NULL,
    bucket text NOT NULL,
    actions text NOT NULL,
    expires_at double precision NOT NULL,
    state text NOT NULL,
    forget_at double precision NOT NULL,
    vector bytea,
    passed_until double precision
);
CREATE INDEX challenges_open ON challenges (state, expires_at);
CREATE INDEX challenges_bucket ON challenges (bucket, state, expires_at);
CREATE INDEX challenges_forget ON challenges (forget_at);

CREATE TABLE challenge_frames (
    sha256 text PRIMARY KEY,
    seen_at double precision NOT NULL
);
CREATE INDEX challenge_frames_seen ON challenge_frames (seen_at);
