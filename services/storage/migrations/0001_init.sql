-- Initial schema. {{EMBEDDING_DIM}} is replaced by the EMBEDDING_DIM setting when applied.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    display_name  text NOT NULL DEFAULT '',
    password_hash text NOT NULL,
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Emails are unique regardless of case.
CREATE UNIQUE INDEX users_email_lower ON users (lower(email));

CREATE TABLE chat_sessions (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title           text NOT NULL DEFAULT '',
    agent_id        text NOT NULL DEFAULT '',
    message_count   integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_message_at timestamptz
);
-- History list: a user's sessions, newest first, keyset-paged on (updated_at, id).
CREATE INDEX chat_sessions_user_recent ON chat_sessions (user_id, updated_at DESC, id DESC);

CREATE TABLE messages (
    id             uuid PRIMARY KEY,
    seq            bigserial NOT NULL,
    session_id     uuid NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    user_id        uuid NOT NULL,
    role           smallint NOT NULL,
    content        text NOT NULL,
    -- Lowercased, accents removed (done in Python: pgserver has no unaccent); 'simple' config.
    content_folded text NOT NULL,
    tsv            tsvector GENERATED ALWAYS AS (to_tsvector('simple', content_folded)) STORED,
    citations      jsonb NOT NULL DEFAULT '[]',
    agent_id       text NOT NULL DEFAULT '',
    backend        text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_session_seq ON messages (session_id, seq);
CREATE INDEX messages_user ON messages (user_id);
CREATE INDEX messages_tsv ON messages USING gin (tsv);

-- One parsed blob per (user, content hash): re-uploads share its chunks and embeddings.
CREATE TABLE documents (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sha256       text NOT NULL,
    kind         smallint NOT NULL,
    size_bytes   bigint NOT NULL,
    blob_name    text NOT NULL,
    status       smallint NOT NULL,  -- FileStatus enum values
    error        text NOT NULL DEFAULT '',
    chunks_done  integer NOT NULL DEFAULT 0,
    chunks_total integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, sha256)
);

CREATE TABLE uploaded_files (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    file_name   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX uploaded_files_user_live ON uploaded_files (user_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
-- At most one live file per document: a re-upload of the same bytes returns the live one.
CREATE UNIQUE INDEX uploaded_files_live_document ON uploaded_files (document_id) WHERE deleted_at IS NULL;

CREATE TABLE chunks (
    id          uuid PRIMARY KEY,
    document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL,
    chunk_index integer NOT NULL,
    model       text NOT NULL,
    text        text NOT NULL,
    text_folded text NOT NULL,
    tsv         tsvector GENERATED ALWAYS AS (to_tsvector('simple', text_folded)) STORED,
    page        integer NOT NULL DEFAULT 0,
    heading     text NOT NULL DEFAULT '',
    char_start  integer NOT NULL,
    char_end    integer NOT NULL,
    embedding   vector({{EMBEDDING_DIM}}) NOT NULL,
    -- Idempotent ingestion: a re-run of a job never duplicates a chunk.
    UNIQUE (document_id, chunk_index, model)
);
CREATE INDEX chunks_user ON chunks (user_id);
CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);
CREATE INDEX chunks_tsv ON chunks USING gin (tsv);

CREATE TABLE ingestion_jobs (
    id          uuid PRIMARY KEY,
    document_id uuid NOT NULL UNIQUE REFERENCES documents (id) ON DELETE CASCADE,
    status      text NOT NULL DEFAULT 'queued',  -- queued | processing | done | failed
    attempts    integer NOT NULL DEFAULT 0,
    run_after   timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz,
    last_error  text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Claim path: queued jobs due now, and processing jobs whose lease ran out.
CREATE INDEX ingestion_jobs_claim ON ingestion_jobs (run_after) WHERE status IN ('queued', 'processing');
