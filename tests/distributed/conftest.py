"""The batched multi-process cases (tests/distributed/batch.py): one torchrun per world size for
every case this session selected."""

from __future__ import annotations

import pytest

from tests.distributed.batch import REGISTRY, Launches, worker_env


@pytest.fixture(scope="session")
def launched(request, tmp_path_factory):
    """launched(case) -> the case's result; launched.folder(case) -> its folder (files it wrote)."""
    selected = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        key = callspec.params.get("case") if callspec is not None else None
        if "launched" in getattr(item, "fixturenames", ()) and key in REGISTRY and key not in selected \
                and not REGISTRY[key].missing:
            selected.append(key)
    return Launches(selected, tmp_path_factory.mktemp("batched"), worker_env())
