"""The environment FloRec gives Flower and the Ray it starts."""

from florec.sim.flower import RAY_DIRECT_CALL_BYTES, flower_env


def test_ray_passes_a_one_megabyte_message_inline(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_max_direct_call_object_size", raising=False)
    env = flower_env(tmp_path)
    assert int(env["RAY_max_direct_call_object_size"]) == RAY_DIRECT_CALL_BYTES
    assert 1 << 20 < RAY_DIRECT_CALL_BYTES < 10 << 20  # an ML-1M table, below Ray's inline cap


def test_a_users_own_ray_object_size_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_max_direct_call_object_size", "4096")
    assert flower_env(tmp_path)["RAY_max_direct_call_object_size"] == "4096"
