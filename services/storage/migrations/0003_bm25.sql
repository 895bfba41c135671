-- BM25 in PostgreSQL (storage.bm25): a per-document index of terms (accent-folded syllables and
-- adjacent-syllable bigrams) for chunk search, and a per-session one for message search. The
-- statistics BM25 needs (document frequency, item count, average length) are summed at query time
-- over exactly the documents or sessions searched, so they are always the caller's own.
--
-- Rows are written by storage in Python (the tokenisation is there): at ingestion, in the
-- transaction that makes a document ready; at AppendMessages; and, for what existed before this
-- migration or was indexed by an older tokenisation (terms_version), by storage's re-indexer
-- right after start (storage.reindex). Until a document is indexed it is found by its vectors only.

CREATE TABLE chunk_terms (
    user_id     uuid NOT NULL,
    term        text NOT NULL,
    document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    chunks      bytea NOT NULL,  -- int32 little-endian chunk_index values, ascending
    tfs         bytea NOT NULL,  -- uint8 frequency of the term in each of those chunks
    PRIMARY KEY (user_id, term, document_id)
);
CREATE INDEX chunk_terms_document ON chunk_terms (document_id);
-- The arrays are read whole and are already dense: compressing them only costs the reads CPU.
ALTER TABLE chunk_terms ALTER COLUMN chunks SET STORAGE EXTERNAL, ALTER COLUMN tfs SET STORAGE EXTERNAL;

ALTER TABLE documents
    ADD COLUMN terms_version integer NOT NULL DEFAULT 0,
    ADD COLUMN chunk_lengths bytea NOT NULL DEFAULT '',  -- uint16 per chunk_index: syllables
    ADD COLUMN term_total    bigint NOT NULL DEFAULT 0;  -- their sum
ALTER TABLE documents ALTER COLUMN chunk_lengths SET STORAGE EXTERNAL;

CREATE TABLE message_terms (
    user_id    uuid NOT NULL,
    term       text NOT NULL,
    session_id uuid NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    positions  bytea NOT NULL,  -- int32 little-endian messages.position values, ascending
    tfs        bytea NOT NULL,
    PRIMARY KEY (user_id, term, session_id)
);
CREATE INDEX message_terms_session ON message_terms (session_id);
ALTER TABLE message_terms ALTER COLUMN positions SET STORAGE EXTERNAL, ALTER COLUMN tfs SET STORAGE EXTERNAL;

ALTER TABLE chat_sessions
    ADD COLUMN terms_version   integer NOT NULL DEFAULT 0,
    ADD COLUMN message_lengths bytea NOT NULL DEFAULT '',  -- uint16 per message position
    ADD COLUMN term_total      bigint NOT NULL DEFAULT 0;
ALTER TABLE chat_sessions ALTER COLUMN message_lengths SET STORAGE EXTERNAL;

-- A message's place in its session (0, 1, ...), the item number its postings use.
ALTER TABLE messages ADD COLUMN position integer;
UPDATE messages m SET position = n.position
FROM (SELECT id, (row_number() OVER (PARTITION BY session_id ORDER BY seq) - 1)::integer AS position
      FROM messages) n
WHERE m.id = n.id;
ALTER TABLE messages ALTER COLUMN position SET NOT NULL;
CREATE UNIQUE INDEX messages_session_position ON messages (session_id, position);
-- Sessions whose message_count had drifted from their rows are re-indexed from the rows.
UPDATE chat_sessions s SET message_count = (SELECT count(*) FROM messages m WHERE m.session_id = s.id);

-- ts_rank_cd had no inverse document frequency: the generated tsvectors and their GIN indexes only
-- cost every insert now.
DROP INDEX chunks_tsv;
ALTER TABLE chunks DROP COLUMN tsv;
DROP INDEX messages_tsv;
ALTER TABLE messages DROP COLUMN tsv;
