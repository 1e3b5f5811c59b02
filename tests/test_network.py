"""learner.network and learner.export in-process (eager TensorFlow; no rl.agents here)."""

from __future__ import annotations

import kerasrl_compat  # noqa: F401  (Keras 2 before TensorFlow loads)

# isort: split
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from learner.export import PolicyFileError, check_policy_file, read_weight_shapes, save_policy, write_atomically
from learner.network import INPUT_SHAPE, build_q_network

ATARI_PARAMS = 1_686_180  # keras-rl's Atari example network with 4 actions


def keras_rl_example_model(nb_actions: int):
    """Built the way keras-rl's examples/dqn_atari.py builds it, independently of learner.network."""
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


def test_unreadable_policy_files(tmp_path):
    with pytest.raises(PolicyFileError, match="does not exist"):
        read_weight_shapes(tmp_path / "missing.h5")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5\n")
    with pytest.raises(PolicyFileError, match="not a readable weights file"):
        read_weight_shapes(text)
