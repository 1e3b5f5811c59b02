"""core.network and core.policy_file in-process (eager TensorFlow; no rl.agents here)."""

from __future__ import annotations

import kerasrl_compat  # noqa: F401  (Keras 2 before TensorFlow loads)

# isort: split
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from core.network import (
    INPUT_SHAPE,
    auto_choice,
    auto_precision,
    build_q_network,
    q_function,
    resolve_precision,
    visible_gpu,
)
from core.policy_file import (
    PolicyFileError,
    SnapshotWriter,
    check_policy_file,
    is_dueling_file,
    is_dueling_shapes,
    read_weight_shapes,
    save_policy,
    write_atomically,
)

ATARI_PARAMS = 1_686_180  # keras-rl's Atari example network with 4 actions


def keras_rl_example_model(nb_actions: int):
    """Built the way keras-rl's examples/dqn_atari.py builds it, independently of core.network."""
    from tensorflow.keras.layers import Activation, Convolution2D, Dense, Flatten, Permute
    from tensorflow.keras.models import Sequential

    model = Sequential()
    model.add(Permute((2, 3, 1), input_shape=(4, 84, 84)))
    model.add(Convolution2D(32, (8, 8), strides=(4, 4)))
    model.add(Activation("relu"))
    model.add(Convolution2D(64, (4, 4), strides=(2, 2)))
    model.add(Activation("relu"))
    model.add(Convolution2D(64, (3, 3), strides=(1, 1)))
    model.add(Activation("relu"))
    model.add(Flatten())
    model.add(Dense(512))
    model.add(Activation("relu"))
    model.add(Dense(nb_actions))
    model.add(Activation("linear"))
    return model


def _config(layer) -> dict:
    config = layer.get_config()
    config.pop("name")
    return config


@pytest.fixture(scope="module")
def model():
    tf_keras.utils.set_random_seed(0)  # the same weights whichever tests ran before
    return build_q_network(4)


def test_is_keras2_and_eager(model):
    assert isinstance(model, tf_keras.Model)  # Keras 2 (tf_keras), as keras-rl2 needs
    assert tf.executing_eagerly()


def test_parameter_count_and_output_shape(model):
    assert INPUT_SHAPE == (4, 84, 84)
    assert model.count_params() == ATARI_PARAMS
    assert model.input_shape == (None, 4, 84, 84)
    assert model.output_shape == (None, 4)
    six = build_q_network(6)
    assert six.output_shape == (None, 6)
    assert six.count_params() == ATARI_PARAMS + 2 * 513  # only the last Dense grows


def test_layers_equal_keras_rl_example(model):
    reference = keras_rl_example_model(4)
    assert [type(layer) for layer in model.layers] == [type(layer) for layer in reference.layers]
    assert [layer.output_shape for layer in model.layers] == [layer.output_shape for layer in reference.layers]
    assert [_config(layer) for layer in model.layers] == [_config(layer) for layer in reference.layers]
    assert [w.shape for w in model.get_weights()] == [w.shape for w in reference.get_weights()]
    assert [type(layer).__name__ for layer in model.layers] == [
        "Permute", "Conv2D", "Activation", "Conv2D", "Activation", "Conv2D", "Activation",
        "Flatten", "Dense", "Activation", "Dense", "Activation",
    ]  # fmt: skip


def test_forward_pass(model):
    states = np.random.default_rng(0).random((2, *INPUT_SHAPE), dtype=np.float32)
    q = model(states).numpy()
    assert q.shape == (2, 4) and q.dtype == np.float32
    assert np.isfinite(q).all()
    assert not np.allclose(q[0], q[1])  # the output depends on the input


def test_policy_file_round_trip(model, tmp_path):
    path = save_policy(model, tmp_path / "policy.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.h5"]  # no temporary left behind
    assert read_weight_shapes(path) == [w.shape for w in model.get_weights()]
    check_policy_file(path, model)
    fresh = build_q_network(4)
    fresh.load_weights(str(path))
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), model.get_weights(), strict=True))
    with pytest.raises(PolicyFileError, match="different network"):
        check_policy_file(path, build_q_network(6))


def test_dueling_files_are_told_apart(model, tmp_path):
    plain = save_policy(model, tmp_path / "plain.h5")
    dueling = save_policy(build_q_network(4, dueling=True), tmp_path / "dueling.h5")
    assert not is_dueling_file(plain) and is_dueling_file(dueling)
    assert read_weight_shapes(dueling)[-4:] == [(512, 4), (4,), (4, 5), (5,)]
    for n in (2, 6, 18):  # a plain network ends (512, n), (n,): never the dueling pattern
        assert not is_dueling_shapes([tuple(w.shape) for w in build_q_network(n).get_weights()])
        assert is_dueling_shapes([tuple(w.shape) for w in build_q_network(n, dueling=True).get_weights()])
    with pytest.raises(PolicyFileError) as plain_for_dueling:
        check_policy_file(plain, build_q_network(4, dueling=True))
    assert str(plain_for_dueling.value).endswith(
        "was written for a different network (plain, 10 weight arrays, 4 actions; "
        "this game's network: dueling, 12 weight arrays, 4 actions)"
    )
    with pytest.raises(PolicyFileError, match=r"\(dueling, 12 weight arrays, 4 actions; .* dueling, 12 weight "
                       r"arrays, 6 actions\)"):
        check_policy_file(dueling, build_q_network(6, dueling=True))
    check_policy_file(dueling, build_q_network(4, dueling=True))
    fresh = build_q_network(4, dueling=True)
    fresh.load_weights(str(dueling))  # Keras loads it back into the same layout


def test_snapshot_writer(model, tmp_path):
    writer = SnapshotWriter(tmp_path / "run", start=0.0)
    first = writer.write(model, env_steps=1_000, learner_steps=0, wall_seconds=1.26)
    writer.write(model, env_steps=2_000, learner_steps=250, wall_seconds=9.0)
    assert first == tmp_path / "run" / "snapshots" / "policy-000001000.h5"
    check_policy_file(first, model)
    # a resumed run appends to the same CSV, without a second header
    SnapshotWriter(tmp_path / "run").write(model, env_steps=123_456_789, learner_steps=3, wall_seconds=20.0)
    # a copy taken at a --snapshot-minutes point says so in its name and in point_minutes
    timed = writer.write(model, env_steps=2_000, learner_steps=250, wall_seconds=60.04, point_minutes=1.0)
    assert timed.name == "policy-000002000-at-1min.h5"
    lines = (tmp_path / "run" / "snapshots.csv").read_text().splitlines()
    assert lines == [
        "file,env_steps,learner_steps,wall_seconds,point_minutes",
        "snapshots/policy-000001000.h5,1000,0,1.3,",
        "snapshots/policy-000002000.h5,2000,250,9.0,",
        "snapshots/policy-123456789.h5,123456789,3,20.0,",
        "snapshots/policy-000002000-at-1min.h5,2000,250,60.0,1.0",
    ]
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir()) == [
        "policy-000001000.h5", "policy-000002000-at-1min.h5", "policy-000002000.h5", "policy-123456789.h5",
    ]  # fmt: skip  (no temporaries left)
    # a run resumed from before point_minutes keeps its CSV's four columns
    old = tmp_path / "old"
    old.mkdir()
    (old / "snapshots.csv").write_text("file,env_steps,learner_steps,wall_seconds\nsnapshots/a.h5,1,0,0.5\n")
    SnapshotWriter(old).write(model, env_steps=7, learner_steps=1, wall_seconds=2.0)
    assert (old / "snapshots.csv").read_text().splitlines()[-1] == "snapshots/policy-000000007.h5,7,1,2.0"
    timed = SnapshotWriter(tmp_path / "timed")
    timed.write(model, env_steps=5, learner_steps=0)
    wall = float((tmp_path / "timed" / "snapshots.csv").read_text().splitlines()[1].split(",")[3])
    assert 0 <= wall < 60  # seconds since the writer was made


def test_failed_write_leaves_old_file(tmp_path):
    path = tmp_path / "policy.h5"
    path.write_bytes(b"old")

    def broken(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_atomically(path, broken)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.h5"]


def test_atomic_writes_get_the_usual_file_mode(model, tmp_path):
    """Not mkstemp's 0600: a teammate must be able to read policy.h5, as any file open() makes."""
    mask = os.umask(0o027)
    try:
        path = save_policy(model, tmp_path / "policy.h5")
        plain = tmp_path / "plain"
        plain.write_text("x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o640


def test_unreadable_policy_files(tmp_path):
    with pytest.raises(PolicyFileError, match="does not exist"):
        read_weight_shapes(tmp_path / "missing.h5")
    with pytest.raises(PolicyFileError, match="is a folder; give the weights file in it"):
        read_weight_shapes(tmp_path)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5\n")
    with pytest.raises(PolicyFileError, match="not a readable weights file"):
        read_weight_shapes(text)


@pytest.mark.parametrize("dueling", [False, True])
def test_bfloat16_network_keeps_float32_weights_and_head(model, dueling):
    """bf16 changes the arithmetic of the body only: same weights (so the same policy.h5), a float32
    Q-head, Q-values close to float32's, and no process-wide policy left behind."""
    tf_keras.utils.set_random_seed(1)
    exact = model if not dueling else build_q_network(4, dueling=True)
    fast = build_q_network(4, dueling=dueling, precision="bfloat16")
    fast.set_weights(exact.get_weights())
    assert all(w.dtype == np.float32 for w in fast.get_weights())
    compute = [layer.compute_dtype for layer in fast.layers if layer.weights]
    head = 2 if dueling else 1  # Dense(n) [+ the dueling Dense(n + 1)]
    assert compute == ["bfloat16"] * (len(compute) - head) + ["float32"] * head
    states = np.random.default_rng(1).random((16, *INPUT_SHAPE), dtype=np.float32)
    q32, q16 = exact(states).numpy(), fast(states).numpy()
    assert q16.dtype == np.float32
    assert not np.array_equal(q16, q32)  # really another arithmetic
    np.testing.assert_allclose(q16, q32, atol=0.03 * np.abs(q32).max())
    assert tf_keras.mixed_precision.global_policy().name == "float32"
    assert build_q_network(4).layers[1].compute_dtype == "float32"


@pytest.mark.parametrize("dueling", [False, True])
def test_acting_copy_keeps_bfloat16_weights_and_acts_bit_for_bit_alike(dueling):
    """The explorers' copy stores its bf16 body's weights in bf16 (rounded once, in set_weights)
    and gives exactly the Q-values of the training network with the same float32 weights."""
    trained = build_q_network(4, dueling=dueling, precision="bfloat16")
    acting = build_q_network(4, dueling=dueling, precision="bfloat16", acting=True)
    acting.set_weights(trained.get_weights())  # float32 arrays, as the learner hands them out
    dtypes = [w.dtype.name for w in acting.get_weights()]
    assert "bfloat16" in dtypes and "float32" in dtypes  # bf16 body, float32 head
    assert all(w.dtype == np.float32 for w in trained.get_weights())
    states = np.random.default_rng(2).integers(0, 256, (8, *INPUT_SHAPE), dtype=np.uint8)
    np.testing.assert_array_equal(q_function(acting)(states).numpy(), q_function(trained)(states).numpy())
    exact = build_q_network(4, dueling=dueling, acting=True)  # float32: acting changes nothing
    assert all(w.dtype == np.float32 for w in exact.get_weights())


# /proc/cpuinfo flags lines of real CPUs, shortened to the flags around the ones that matter
SKYLAKE_SP = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni\n"
ZEN4 = "flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_vnni\nbugs\t\t: sysret_ss_attrs\n"
SAPPHIRE_RAPIDS = ("flags\t\t: fpu avx2 avx512f avx_vnni avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8\n"
                   "vmx flags\t: vnmi preemption_timer\n")


def flags_of(cpuinfo: str) -> list[str]:
    return next(line for line in cpuinfo.splitlines() if line.startswith("flags")).split(":", 1)[1].split()


def test_bfloat16_is_native_only_on_cpus_that_multiply_it():
    """The rule on CPUs whose answer is known from their specifications (GPUs: tests/test_gpu.py)."""
    assert auto_precision(None, flags_of(SKYLAKE_SP))[0] == "float32"  # AVX-512 without BF16: emulated, slower
    assert auto_precision(None, flags_of(ZEN4)) == ("bfloat16", "CPU avx512_bf16")
    assert auto_precision(None, flags_of(SAPPHIRE_RAPIDS)) == ("bfloat16", "CPU amx_bf16")
    assert auto_precision(None, [])[0] == "float32"  # no /proc/cpuinfo


def test_auto_precision_follows_the_hardware():
    """auto is what core.network.auto_precision (tested on every kind of GPU in tests/test_gpu.py)
    picks for this process's GPU, or for this CPU's flags when TensorFlow sees no GPU."""
    assert resolve_precision("float32") == "float32" and resolve_precision("bfloat16") == "bfloat16"
    assert resolve_precision("auto") == auto_choice()[0]
    if visible_gpu() is None:
        assert not tf.config.list_physical_devices("GPU")
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
        assert (auto_choice()[0] == "bfloat16") == bool(flags & {"avx512_bf16", "amx_bf16"})
    else:
        assert auto_choice() == ("float32", auto_choice()[1]) and auto_choice()[1].startswith("GPU")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("float16")
