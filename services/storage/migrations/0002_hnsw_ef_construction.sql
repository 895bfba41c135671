-- The chunk vector index, built with ef_construction 128 (pgvector's default is 64). At 200,000
-- clustered chunks the default graph needed hnsw.ef_search 200 for recall@10 0.983-0.993; this one
-- gives 0.997-1.000 at ef_search 100-120, so searches scan less for better answers. The price is
-- paid at insert, once per chunk.
--
-- Rebuilt here only while the table is small: a rebuild takes about 3 minutes per 200,000 chunks
-- on 2 cores, longer than a start-up may take (the Kubernetes start-up probe allows 60 s). A larger
-- table keeps its index and the service searches it with the wider ef_search it needs (see
-- storage.db.hnsw_ef_search); the README says how to rebuild it without downtime.
DO $$
BEGIN
    IF (SELECT reltuples FROM pg_class WHERE oid = 'chunks'::regclass) < 20000 THEN
        DROP INDEX IF EXISTS chunks_embedding_hnsw;
        CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)
            WITH (m = 16, ef_construction = 128);
    END IF;
END
$$;
