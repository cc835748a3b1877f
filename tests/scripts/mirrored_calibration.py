"""Calibration statistics under a 2-CPU MirroredStrategy against one device."""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras
import numpy as np
from keras import layers

import hos_keras

keras.utils.set_random_seed(0)
inputs = keras.Input((8, 8, 3))
x = layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
x = layers.ReLU()(layers.BatchNormalization(name="bn1")(x))
x = layers.Conv2D(6, 3, name="c2")(x)
x = layers.GlobalAveragePooling2D()(x)
model = keras.Model(inputs, layers.Dense(3, name="out")(x))
rng = np.random.default_rng(0)
data = tf.data.Dataset.from_tensor_slices(
    (rng.normal(size=(32, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 32))
).batch(8)
report = {"criteria": {}}
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
report["replicas"] = strategy.num_replicas_in_sync
for criterion in ("dfs", "sfs", "taylor", "fisher", "activation_k34"):
    alone = hos_keras.plan_pruning(model, criterion, "fixed", ratio=0.5, data=data)
    with strategy.scope():
        mirrored = hos_keras.plan_pruning(
            model, criterion, "fixed", ratio=0.5, data=data
        )
    report["criteria"][criterion] = {
        name: {
            "alone": alone[name].scores.tolist(),
            "mirrored": mirrored[name].scores.tolist(),
        }
        for name in alone.groups
    }
print(json.dumps(report))
