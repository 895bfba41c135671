"""The thin vertical slice over HTTP, through the real gateway, chat, storage and embedding.

Register and log in, upload a Markdown file, wait until it is chunked and embedded, ask a
question, read the streamed answer that cites the chunk, then find the session and its messages.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
from studyassist.core.testing import ServiceProcess

NOTES = """# Cấu trúc dữ liệu

## Ngăn xếp
Ngăn xếp (stack) là cấu trúc dữ liệu hoạt động theo nguyên tắc LIFO: phần tử vào sau cùng được lấy ra đầu tiên.

## Hàng đợi
A queue is a FIFO structure: the first element enqueued is the first one dequeued. The PTIT mascot is a kingfisher.
"""


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            events.append(json.loads(line[5:].strip()))
    return events


def test_register_upload_ask_and_list(gateway_service: ServiceProcess) -> None:
    base = f"http://{gateway_service.address}"
    email = f"sv{uuid.uuid4().hex[:8]}@stu.ptit.edu.vn"
    with httpx.Client(base_url=base, timeout=60) as client:
        registered = client.post(
            "/v1/auth/register", json={"email": email, "password": "mat-khau-dai-1", "display_name": "Sinh viên"}
        )
        assert registered.status_code == 201, registered.text
        login = client.post("/v1/auth/login", json={"email": email, "password": "mat-khau-dai-1"})
        assert login.status_code == 200, login.text
        client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"

        uploaded = client.post("/v1/files", params={"file_name": "notes.md"}, content=NOTES.encode())
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["file_id"]

        deadline = time.monotonic() + 90
        while True:
            file = client.get(f"/v1/files/{file_id}").json()
            if file["status"] in {"FILE_STATUS_READY", "FILE_STATUS_FAILED"} or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert file["status"] == "FILE_STATUS_READY", file

        question = {"agent_id": "explainer", "message": "What is the PTIT mascot in the queue notes?"}
        with client.stream("POST", "/v1/chat:stream", json=question) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
        kinds = [next(iter(event)) for event in events]
        assert kinds[0] == "started" and kinds[-1] == "done", kinds
        assert "delta" in kinds
        answer = "".join(e["delta"]["text"] for e in events if "delta" in e)
        citations = next(e["citations"]["citations"] for e in events if "citations" in e)
        assert citations, "the answer cites nothing"
        cited = citations[0]
        assert cited["file_id"] == file_id and cited["file_name"] == "notes.md"
        assert "kingfisher" in cited["snippet"]
        assert "[1]" in answer
        session_id = events[0]["started"]["session_id"]

        sessions = client.get("/v1/sessions").json()["sessions"]
        assert [s["session_id"] for s in sessions] == [session_id]
        messages = client.get(f"/v1/sessions/{session_id}/messages").json()["messages"]
        assert [m["role"] for m in messages] == ["ROLE_USER", "ROLE_ASSISTANT"]
        assert messages[0]["content"] == question["message"]
        assert messages[1]["citations"][0]["file_id"] == file_id

        # Another student sees none of it.
        other = httpx.post(
            f"{base}/v1/auth/register",
            json={"email": f"x{email}", "password": "mat-khau-dai-2", "display_name": "B"},
            timeout=30,
        ).json()["access_token"]
        other_headers = {"Authorization": f"Bearer {other}"}
        assert client.get(f"/v1/files/{file_id}", headers=other_headers).status_code == 404
        assert client.get("/v1/sessions", headers=other_headers).json().get("sessions", []) == []
