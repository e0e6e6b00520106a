"""Helpers of tests/test_ray_ingest.py's node-loss tests: a text job whose actors hold mid-call, and the
module's two-node cluster put back after a node is removed."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aios_memory import MemoryStore


def held_job(store: MemoryStore, folder: Path, hold: Path, **options: Any) -> tuple[Any, Any, list[Any]]:
    """A text job in a thread, whose two actors (one per node) each embed two files, then hold their next
    call while ``hold`` exists: (thread, sink, [the exception the job raised]). A write task that returned
    leaves a file in ``hold.parent / "returned"`` (one interrupted before removes what it wrote)."""
    import ray

    from aios_memory.distributed import Embed, MemoryDatasink
    from aios_memory.distributed.sources import list_files, plan_files

    class HeldEmbed(Embed):  # defined here: Ray ships it by value to the workers
        calls = 0

        def __call__(self, batch: Any) -> Any:
            self.calls += 1
            while self.calls > 2 and hold.exists():
                time.sleep(0.05)
            return super().__call__(batch)

    returned = hold.parent / "returned"
    returned.mkdir(exist_ok=True)

    class MarkedSink(MemoryDatasink):  # likewise shipped by value
        def write(self, blocks: Any, ctx: Any) -> Any:
            out = super().write(blocks, ctx)
            if out.fragments:  # a write of only failed inputs wrote nothing
                (returned / uuid.uuid4().hex).touch()
            return out

    hold.touch()
    sink = MarkedSink(store.path, modality="text", bytes_per_write=options.pop("bytes_per_write", None))
    write_args = {"num_cpus": 0, **options.pop("write_args", {})}
    kwargs = {"modality": "text", "store": str(store.path), "model_home": os.environ["AIOS_MEMORY_HOME"]}
    ds = ray.data.from_items(plan_files(list_files([folder])).items["text"]).map_batches(
        HeldEmbed,
        fn_constructor_kwargs=kwargs,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=1,
        **options,
    )
    failure: list[BaseException] = []

    def job() -> None:
        try:
            ds.write_datasink(sink, ray_remote_args=write_args)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            failure.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    return thread, sink, failure


def worker_node_back(cluster: Any) -> None:  # the module's cluster as it was, for the tests that follow
    if not cluster.worker_nodes:
        cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1)


def wait_for(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def settled(folder: Path, quiet: float = 1.0, timeout: float = 60) -> None:
    """Wait until no file under ``folder`` appeared, went or changed size for ``quiet`` seconds: a failed
    Ray job returns without waiting for the tasks it cancelled, which may still be writing or removing."""

    def listing() -> set[tuple[str, int]]:
        return {(str(f), f.stat().st_size) for f in folder.rglob("*") if f.is_file()}

    deadline, last, since = time.monotonic() + timeout, listing(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"files under {folder} kept changing for {timeout} s"
        time.sleep(0.1)
        try:
            now = listing()
        except FileNotFoundError:  # removed while listed
            now = set()
        if now != last:
            last, since = now, time.monotonic()


def texts_folder(tmp_path: Path, n: int = 24) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:02d}.txt").write_text(f"memory number {i} about a slow job")
    return folder
