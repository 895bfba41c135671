-- A failed document's reason as a stable name (PDF_ENCRYPTED, PARSE_TIMEOUT, ...) and the values
-- its sentence needs (a JSON object of strings), beside the English `error` text: clients say it
-- in the student's language (File.error_reason, File.error_args). Older failures keep '' and {}.
ALTER TABLE documents
    ADD COLUMN error_reason text NOT NULL DEFAULT '',
    ADD COLUMN error_args jsonb NOT NULL DEFAULT '{}';
