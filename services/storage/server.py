"""Wiring: pool and migrations, blob store, embedding client, ingestion workers, the servicer."""

from __future__ import annotations

import logging

from studyassist.core.config import CommonSettings
from studyassist.core.server import Server, ServiceSpec, create_server
from studyassist.core.telemetry import Telemetry
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc, study_pb2, study_pb2_grpc

from storage.accounts import bootstrap_admins
from storage.blobs import BlobStore, TempSweeper
from storage.config import Settings
from storage.db import ITERATIVE_SCAN_SINCE, connect, instrument_sql, migrate
from storage.embeddings import EmbeddingClient
from storage.ingest import Ingestor, IngestSettings
from storage.ranking import Ranking
from storage.readiness import DatabaseReadiness
from storage.servicer import StorageServicer
from storage.study import StudyServicer
from storage.termindex import Reindexer
from storage.uploads import Quota

log = logging.getLogger(__name__)

SERVICE_NAME = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name
STUDY_SERVICE_NAME = study_pb2.DESCRIPTOR.services_by_name["StudyService"].full_name
# Account methods only the gateway may call (the sign-in reads the password hash); any other service
# holding the mesh key is refused them (PERMISSION_DENIED). A new account method belongs here.
GATEWAY_ONLY = frozenset(
    {"CreateUser", "GetUserByEmail", "GetAccount", "CreateSignIn", "RotateRefreshToken", "EndSignIn"}
)


async def build(settings: Settings, common: CommonSettings, telemetry: Telemetry) -> tuple[Server, int]:
    if telemetry.endpoint is not None:
        # SQL spans under each call's span. Process-wide and once: a second build() (tests) is a no-op.
        instrument_sql(telemetry.tracer_provider)
    db = await connect(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        acquire_timeout_s=settings.db_acquire_timeout_s,
        meter=telemetry.meter,
    )
    try:
        await migrate(db, embedding_dim=settings.embedding_dim)
        for email in await bootstrap_admins(db, settings.admin_emails):
            log.info("granted admin from ADMIN_EMAILS", extra={"fields": {"email": email}})
        await db.tune_vector_search()
        db.register_gauges(telemetry.meter)
        iterative_scan = db.pgvector >= ITERATIVE_SCAN_SINCE
        blobs = BlobStore(settings.blob_dir or common.data_dir / "blobs")
        blobs.prepare(settings.blob_temp_stale_s)
        embeddings = EmbeddingClient(settings.embedding_addr)
        ingestor = Ingestor(
            db,
            blobs,
            embeddings,
            IngestSettings(
                workers=settings.ingest_workers,
                max_attempts=settings.ingest_max_attempts,
                lease_s=settings.ingest_lease_s,
                chunk_tokens=settings.chunk_tokens,
                overlap_tokens=settings.chunk_overlap_tokens,
                tokenizer_dir=settings.tokenizer_dir,
                embedding_dim=settings.embedding_dim,
                parse_memory_limit_mb=settings.parse_memory_limit_mb,
                parse_timeout_s=settings.parse_timeout_s,
            ),
        )
        ingestor.register_gauges(telemetry.meter)
        servicer = StorageServicer(
            db,
            blobs,
            ingestor,
            upload_max_bytes=settings.upload_max_bytes,
            quota=Quota(settings.user_quota_bytes, settings.user_quota_files),
            embedding_dim=settings.embedding_dim,
            embeddings=embeddings,
            hnsw_iterative_scan=iterative_scan,
            ranking=Ranking(vector_weight=settings.search_vector_weight),
        )
        server, port = create_server(
            f"{common.bind_host}:{settings.port}",
            [
                ServiceSpec(
                    SERVICE_NAME,
                    servicer,
                    storage_pb2_grpc.add_StorageServiceServicer_to_server,
                    gateway_only=GATEWAY_ONLY,
                ),
                ServiceSpec(STUDY_SERVICE_NAME, StudyServicer(db), study_pb2_grpc.add_StudyServiceServicer_to_server),
            ],
            meter=telemetry.meter,
            tracer=telemetry.tracer,
        )
    except BaseException:
        await db.close()
        raise
    ingestor.start()
    reindexer = Reindexer(db, storage_pb2.FILE_STATUS_READY)
    reindexer.start()
    readiness = DatabaseReadiness(
        db.url,
        server.health,
        [SERVICE_NAME, STUDY_SERVICE_NAME, ""],
        interval_s=settings.db_probe_interval_s,
        timeout_s=2.0,
    )
    readiness.start()
    sweeper = TempSweeper(blobs, interval_s=settings.blob_temp_sweep_s, stale_s=settings.blob_temp_stale_s)
    sweeper.start()

    async def close() -> None:
        await sweeper.stop()
        await readiness.stop()
        await reindexer.stop()
        await ingestor.stop()
        await embeddings.close()
        await db.close()

    server.on_stop.append(close)
    return server, port
