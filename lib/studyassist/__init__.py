"""PTIT Study Assistant: shared code (``studyassist.core``) and generated protobuf packages."""
