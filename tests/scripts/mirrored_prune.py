"""HOSPruneCallback under a 2-CPU MirroredStrategy: prints per-replica mask checks."""

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

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(name="bn1")(x))
    x = layers.Conv2D(6, 3, name="c2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(3, name="out")(x))
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
callback = hos_keras.HOSPruneCallback(
    prune_epochs=[1], criterion="l1", allocation="fixed", ratio=0.5, verbose=0
)
rng = np.random.default_rng(0)
data = tf.data.Dataset.from_tensor_slices(
    (rng.normal(size=(32, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 32))
).batch(8)
model.fit(data, epochs=2, verbose=0, callbacks=[callback])
masks = hos_keras.weight_masks(model, callback.plan)
report = {"replicas": strategy.num_replicas_in_sync, "layers": {}}
for name, layer_masks in masks.items():
    for variable, mask in zip(model.get_layer(name).weights, layer_masks, strict=True):
        copies = strategy.experimental_local_results(variable.value)
        values = [np.asarray(v) for v in copies]
        report["layers"][variable.path] = {
            "copies": len(values),
            "equal": all(np.array_equal(values[0], v) for v in values[1:]),
            "masked_zero": all(bool(np.all(v[~mask] == 0)) for v in values),
            "masked": int((~mask).sum()),
        }
print(json.dumps(report))
