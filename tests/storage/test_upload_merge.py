"""A re-upload of bytes the student already has is merged into that file, and says so."""

from __future__ import annotations

from studyassist.core.channels import user_metadata
from studyassist.storage.v1 import storage_pb2

from tests.storage.conftest import StorageClient

NOTES = "# Mạng máy tính\n\nTCP là giao thức hướng kết nối.\n".encode()


async def test_same_bytes_again_are_merged_into_the_live_file(storage: StorageClient) -> None:
    user = await storage.new_user()
    first = await storage.upload(user, "mang.md", NOTES)
    assert not first.merged
    again = await storage.upload(user, "mang (1).md", NOTES)
    # The same file, under its first name: nothing new is listed.
    assert again.merged and again.file_id == first.file_id and again.file_name == "mang.md"
    listed = await storage.stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=user_metadata(user))
    assert [f.file_id for f in listed.files] == [first.file_id]
    assert not any(f.merged for f in listed.files)  # a listing is no upload
    # Other bytes, or the same bytes for another student, or after a delete: a file of its own.
    other = await storage.upload(user, "khac.md", NOTES + b"\nUDP.\n")
    assert not other.merged and other.file_id != first.file_id
    assert not (await storage.upload(await storage.new_user(), "mang.md", NOTES)).merged
    await storage.stub.DeleteFile(storage_pb2.DeleteFileRequest(file_id=first.file_id), metadata=user_metadata(user))
    restored = await storage.upload(user, "mang.md", NOTES)
    assert not restored.merged and restored.file_id != first.file_id
