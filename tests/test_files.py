"""Files hos_keras writes are whole or absent; its caches heal themselves."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest
import tiny

import hos_keras
from hos_keras import files, latency

KILLED_WRITER = """
import os, signal, sys
from hos_keras import files
with files.atomic_path(sys.argv[1]) as temporary:
    with open(temporary, "wb") as stream:
        stream.write(b"x" * 100_000)  # half of what it meant to write
        stream.flush()
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _run(code, *args, timeout=120):
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("existing", [False, True])
def test_a_writer_killed_mid_file_leaves_no_truncated_file(tmp_path, existing):
    """SIGKILL in the middle of a write: the final name holds nothing, or the
    previous complete file, never the half-written one."""
    path = tmp_path / "plan.json"
    if existing:
        path.write_text('{"complete": true}')
    result = _run(KILLED_WRITER, path)
    assert result.returncode == -9, result.stderr
    if existing:
        assert json.loads(path.read_text()) == {"complete": True}
    else:
        assert not path.exists()
    # The half-written bytes sit under a hidden temporary name only.
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert all(p.name.startswith(".plan.tmp-") for p in leftovers)


def test_a_failing_writer_leaves_the_destination_and_no_temporary(tmp_path):
    path = tmp_path / "slim.keras"
    path.write_bytes(b"previous")
    with (
        pytest.raises(RuntimeError, match="disk full"),
        files.atomic_path(path) as temporary,
    ):
        with open(temporary, "wb") as stream:
            stream.write(b"partial")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["slim.keras"]


def test_save_model_and_write_helpers_write_whole_files(tmp_path):
    model = tiny.chain([4], input_shape=(6, 6, 3))
    files.save_model(model, tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert [w.shape for w in loaded.weights] == [w.shape for w in model.weights]
    files.write_text(tmp_path / "a.json", '{"a": 1}')
    files.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": 1}
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "m.keras"]


def _macs_timer(models, runtime, batch_size, threads, runs):
    return [hos_keras.profile(m)["macs"] * 1e-6 + 0.001 for m in models]


def _model():
    return tiny.chain([6, 8], input_shape=(8, 8, 3), name="cached")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other version"])
def test_an_unreadable_latency_cache_is_rebuilt_with_a_warning(
    tmp_path, monkeypatch, damage
):
    monkeypatch.setattr(latency, "_time_models", _macs_timer)
    model = _model()
    table = latency.build_latency_model(model, cache_dir=tmp_path)
    path = tmp_path / f"{table.key}.json"
    text = path.read_text()
    path.write_text(
        {
            "truncated": text[: len(text) // 2],
            "garbage": "\x00\x01 not json",
            "other version": json.dumps({"format": "hos_keras.LatencyModel"}),
        }[damage]
    )
    with pytest.warns(UserWarning, match=f"{path}.*rebuilding it"):
        rebuilt = latency.build_latency_model(model, cache_dir=tmp_path)
    assert rebuilt.layers == table.layers and rebuilt.base_ms == table.base_ms
    assert latency.LatencyModel.from_json(path.read_text()).layers == table.layers


def test_an_unreadable_tile_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(
        latency,
        "_time_models",
        lambda models, *args: [float(-(-m.outputs[0].shape[-1] // 8)) for m in models],
    )
    assert latency.measure_tile(cache_dir=tmp_path) == 8
    (path,) = tmp_path.glob("tile-*.json")
    path.write_text('{"tile": ')
    with pytest.warns(UserWarning, match=f"{path}.*rebuilding it"):
        assert latency.measure_tile(cache_dir=tmp_path) == 8
    assert json.loads(path.read_text())["tile"] == 8


CONCURRENT_BUILD = textwrap.dedent(
    """
    import sys, time
    import hos_keras, tiny
    from hos_keras import latency

    def timer(models, runtime, batch_size, threads, runs):
        time.sleep(0.5)  # both processes are inside the build at once
        return [hos_keras.profile(m)["macs"] * 1e-6 + 0.001 for m in models]

    latency._time_models = timer
    model = tiny.chain([6, 8], input_shape=(8, 8, 3), name="cached")
    table = latency.build_latency_model(model, cache_dir=sys.argv[1])
    print(table.key)
    """
)


def test_two_processes_building_one_cache_both_succeed(tmp_path):
    env_path = str(tmp_path / "cache")
    tests_dir = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {tests_dir!r})\n" + CONCURRENT_BUILD
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, env_path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in runs]
    for status, _, err in results:
        assert status == 0, err[-2000:]
    keys = {out.strip().splitlines()[-1] for _, out, _ in results}
    assert len(keys) == 1
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    (key,) = keys
    assert f"{key}.json" in cached
    assert all(name.endswith(".json") and not name.startswith(".") for name in cached)
    text = (tmp_path / "cache" / f"{key}.json").read_text()
    assert set(latency.LatencyModel.from_json(text).layers) == {"c1", "c2", "out"}
